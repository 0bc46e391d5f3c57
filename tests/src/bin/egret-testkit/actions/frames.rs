//! Frames written below every socket hook: what a job holding CAP_NET_RAW
//! (root in a default Docker container) can send from an AF_PACKET socket.

use super::super::*;

/// The actions this module performs.
pub const KINDS: &[&str] = &["packet-udp"];

/// The outcome of `action` when it is one of [`KINDS`].
pub fn run(action: &str, kind: &str, rest: &str) -> Option<Outcome> {
    KINDS.contains(&kind).then(|| packet_udp(action, rest))
}

const PAYLOAD: &[u8] = b"egret-raw-frame";
const ETH_P_IP: u16 = 0x0800;

/// packet-udp:IP:PORT. A UDP datagram to IP:PORT built by hand (IPv4 and
/// UDP headers) and handed to the default gateway's MAC address through an
/// AF_PACKET socket on the default route's interface. The reply (the
/// fixture echoes) is read on an ordinary socket bound to the source port:
/// `banner` is what came back, the ground truth that the frame arrived.
fn packet_udp(action: &str, rest: &str) -> Outcome {
    let dst: SocketAddr = match parse(rest) {
        SocketAddr::V4(v4) => SocketAddr::V4(v4),
        SocketAddr::V6(_) => panic!("packet-udp takes an IPv4 address"),
    };
    let Some((iface, gateway)) = default_route() else {
        return failure(action, &std::io::Error::other("no default route"));
    };
    // A datagram to the gateway's DNS port makes the kernel learn the
    // gateway's MAC (egret redirects it to the runner's DNS proxy, at the
    // same address), and tells the address this host sends from.
    let probe = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let _ = probe.connect((gateway, 53));
    let _ = probe.send(b"\0\0");
    let Ok(SocketAddr::V4(local)) = probe.local_addr() else {
        return failure(action, &std::io::Error::other("no local address"));
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mac = loop {
        if let Some(mac) = arp_entry(gateway) {
            break mac;
        }
        if Instant::now() > deadline {
            return failure(
                action,
                &std::io::Error::other("the gateway's MAC is unknown"),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: a plain socket call; the descriptor is closed below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM,
            i32::from(ETH_P_IP.to_be()),
        )
    };
    if fd < 0 {
        return os_error(action);
    }
    let reply = UdpSocket::bind("0.0.0.0:0").expect("bind the reply socket");
    let _ = reply.set_read_timeout(Some(TIMEOUT));
    let sport = reply.local_addr().expect("local").port();
    let SocketAddr::V4(dst4) = dst else {
        unreachable!()
    };
    let packet = ipv4_udp(*local.ip(), sport, *dst4.ip(), dst4.port(), PAYLOAD);
    let name = std::ffi::CString::new(iface).expect("ifname");
    // SAFETY: a zeroed sockaddr_ll is valid; the fields are set below.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ETH_P_IP.to_be();
    // SAFETY: a valid NUL-terminated name.
    ll.sll_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&mac);
    // SAFETY: the buffer and address live across the call; the lengths are
    // theirs.
    let sent = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let outcome = if sent < 0 {
        os_error(action)
    } else {
        let mut o = success(action);
        let mut buf = [0u8; 256];
        if let Ok((n, _)) = reply.recv_from(&mut buf) {
            o.banner = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        o
    };
    // SAFETY: the descriptor opened above, closed once.
    unsafe { libc::close(fd) };
    outcome
}

/// The default route's interface and gateway, from /proc/net/route.
fn default_route() -> Option<(String, std::net::Ipv4Addr)> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&"00000000")).then(|| {
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            Some((f[0].to_owned(), std::net::Ipv4Addr::from(gw.to_le_bytes())))
        })?
    })
}

/// The MAC address the neighbour table holds for `ip`.
fn arp_entry(ip: std::net::Ipv4Addr) -> Option<[u8; 6]> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    let want = ip.to_string();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&want.as_str()) || f.get(3) == Some(&"00:00:00:00:00:00") {
            return None;
        }
        let bytes: Vec<u8> = f
            .get(3)?
            .split(':')
            .filter_map(|b| u8::from_str_radix(b, 16).ok())
            .collect();
        bytes.try_into().ok()
    })
}

/// An IPv4 packet carrying one UDP datagram (checksum 0: none, which IPv4
/// allows).
fn ipv4_udp(
    src: std::net::Ipv4Addr,
    sport: u16,
    dst: std::net::Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
