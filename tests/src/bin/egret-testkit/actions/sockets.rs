//! Sockets and paths a bypass would try: raw and other kinds, listeners,
//! Fast Open, io_uring, scoped link-local, a socket made before the move,
//! leaving the cgroup.

use super::super::*;

/// The actions this module performs.
pub const KINDS: &[&str] = &[
    "mcast-join",
    "vsock",
    "ip-options",
    "ipv6-rthdr",
    "tcp-fastopen",
    "raw-icmp",
    "raw-udp",
    "ping",
    "sctp",
    "mptcp",
    "packet",
    "listen",
    "listen-reuse",
    "self-loopback",
    "tfo",
    "uring-connect",
    "link-local",
    "premove",
    "escape",
];

/// The outcome of `action` when it is one of [`KINDS`].
pub fn run(action: &str, kind: &str, rest: &str) -> Option<Outcome> {
    KINDS.contains(&kind).then(|| act(action, kind, rest))
}

fn act(action: &str, kind: &str, rest: &str) -> Outcome {
    match kind {
        // Join a multicast group (v4 or v6) on a UDP socket; `count` is how
        // many times the group then shows in this namespace's
        // /proc/net/igmp{,6}: the kernel reports what is listed there.
        "mcast-join" => mcast_join(action, rest),
        // socket(AF_VSOCK, SOCK_STREAM): whether the job gets one.
        "vsock" => {
            // SAFETY: a plain socket call; the fd is closed at once.
            let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
            if fd < 0 {
                os_error(action)
            } else {
                // SAFETY: the descriptor just opened, closed once.
                unsafe { libc::close(fd) };
                success(action)
            }
        }
        // setsockopt options that steer or carry data past the hooks:
        // ip-options (a loose source route), ipv6-rthdr, tcp-fastopen
        // (on a listener).
        "ip-options" | "ipv6-rthdr" | "tcp-fastopen" => set_option(action, kind),
        // Socket kinds no connect hook sees: create one and, when that works,
        // send something to ADDR with it. raw-icmp:IP, raw-udp:IP, ping:IP,
        // sctp:IP:PORT, mptcp:IP:PORT, packet.
        "raw-icmp" | "raw-udp" | "ping" | "sctp" | "mptcp" | "packet" => {
            socket_kind(action, kind, rest)
        }
        // Listen on ADDR for a while, answering with a banner: listen:ADDR:MS.
        // listen:ADDR:MS, or listen-reuse:ADDR:MS with SO_REUSEPORT (so
        // another job of the same user can bind the same address).
        "listen" | "listen-reuse" => {
            let (addr, ms) = rest.rsplit_once(':').expect("listen:ADDR:MS");
            let listener = match bind_listener(parse(addr), kind == "listen-reuse") {
                Ok(l) => l,
                Err(e) => return failure(action, &e),
            };
            listener.set_nonblocking(true).expect("nonblocking");
            let until = Instant::now() + Duration::from_millis(ms.parse().expect("ms"));
            let mut served = 0;
            while Instant::now() < until {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"job listener\n");
                        served += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            let mut o = success(action);
            o.count = Some(served);
            o
        }
        // Listen on loopback and connect to it from the same process:
        // self-loopback:ADDR (port 0 for any).
        "self-loopback" => {
            let listener = match TcpListener::bind(parse(rest)) {
                Ok(l) => l,
                Err(e) => return failure(action, &e),
            };
            let local = listener.local_addr().expect("local addr");
            match TcpStream::connect_timeout(&local, TIMEOUT) {
                Ok(_) => success(action),
                Err(e) => failure(action, &e),
            }
        }
        // TCP Fast Open: sendto(MSG_FASTOPEN) connects and sends in one call.
        "tfo" => raw_connect(action, parse(rest), Connect::FastOpen),
        // io_uring IORING_OP_CONNECT.
        "uring-connect" => raw_connect(action, parse(rest), Connect::Uring),
        // IPv6 link-local with a scope: link-local:IFNAME:PORT to fe80::1%IFNAME.
        "link-local" => {
            let (ifname, port) = rest.split_once(':').expect("link-local:IFNAME:PORT");
            let name = std::ffi::CString::new(ifname).expect("ifname");
            // SAFETY: a valid NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(index, 0, "no interface {ifname}");
            let dst = SocketAddr::V6(std::net::SocketAddrV6::new(
                "fe80::1".parse().expect("v6"),
                port.parse().expect("port"),
                0,
                index,
            ));
            match TcpStream::connect_timeout(&dst, TIMEOUT) {
                Ok(_) => success(action),
                Err(e) => failure(action, &e),
            }
        }
        // A socket created before this process moved into a cgroup:
        // premove:ADDR:/path/to/cgroup.procs. Reports the connect of that old
        // socket; `count` is 1 when a socket made after the move was refused.
        "premove" => {
            let (addr, procs) = rest.split_once(",").expect("premove:ADDR,PROCS");
            let dst = parse(addr);
            let old = socket2::Socket::new(
                socket2::Domain::for_address(dst),
                socket2::Type::STREAM,
                None,
            )
            .expect("socket");
            std::fs::write(procs, "0").expect("move into the cgroup");
            let fresh = TcpStream::connect_timeout(&dst, TIMEOUT);
            let mut o = match old.connect_timeout(&dst.into(), TIMEOUT) {
                Ok(()) => success(action),
                Err(e) => failure(action, &e),
            };
            o.count = Some(u64::from(
                fresh.is_err_and(|e| e.raw_os_error() == Some(libc::EPERM)),
            ));
            o
        }
        // Move this process to another cgroup: escape:/path/to/cgroup.procs
        "escape" => match std::fs::write(rest, "0") {
            Ok(()) => success(action),
            Err(e) => failure(action, &e),
        },
        other => panic!("unknown action {other}"),
    }
}

/// SO_LINGER 0: close with RST, so thousands of connects do not exhaust the
/// ephemeral ports with TIME_WAIT sockets.
pub(crate) fn close_without_time_wait(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

pub(crate) enum Connect {
    FastOpen,
    Uring,
}

/// Connects a TCP socket by a path other than connect(2).
pub(crate) fn raw_connect(action: &str, dst: SocketAddr, how: Connect) -> Outcome {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    let addr = socket2::SockAddr::from(dst);
    use std::os::fd::AsRawFd as _;
    let fd = socket.as_raw_fd();
    let result = match how {
        Connect::FastOpen => {
            // SAFETY: a valid socket, buffer and address.
            let n = unsafe {
                libc::sendto(
                    fd,
                    b"egret".as_ptr().cast(),
                    5,
                    libc::MSG_FASTOPEN,
                    addr.as_ptr().cast(),
                    addr.len(),
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        Connect::Uring => {
            let mut ring = io_uring::IoUring::new(4).expect("io_uring");
            let sqe = io_uring::opcode::Connect::new(
                io_uring::types::Fd(fd),
                addr.as_ptr().cast(),
                addr.len(),
            )
            .build();
            // SAFETY: the address outlives the submission, which we wait for.
            unsafe { ring.submission().push(&sqe).expect("queue") };
            ring.submit_and_wait(1).expect("submit");
            let res = ring.completion().next().expect("completion").result();
            if res < 0 {
                Err(std::io::Error::from_raw_os_error(-res))
            } else {
                Ok(())
            }
        }
    };
    match result {
        Ok(()) => success(action),
        Err(e) => failure(action, &e),
    }
}

pub(crate) fn os_error(action: &str) -> Outcome {
    failure(action, &std::io::Error::last_os_error())
}

pub(crate) fn socket_kind(action: &str, kind: &str, rest: &str) -> Outcome {
    // SAFETY: plain socket syscalls on values built here; every fd is closed.
    unsafe {
        let (domain, ty, proto) = match kind {
            "raw-icmp" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
            "raw-udp" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP),
            "ping" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
            "sctp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
            "mptcp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP),
            _ => (
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            ),
        };
        let fd = libc::socket(domain, ty, proto);
        if fd < 0 {
            return os_error(action);
        }
        let close = || libc::close(fd);
        if kind == "packet" {
            close();
            return success(action);
        }
        let (ip, port) = match rest.rsplit_once(':') {
            Some((ip, port)) if kind == "sctp" || kind == "mptcp" => {
                (ip, port.parse::<u16>().expect("port"))
            }
            _ => (rest, 0),
        };
        let ip: std::net::Ipv4Addr = ip.parse().expect("IPv4 address");
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let addr = (&raw const sin).cast::<libc::sockaddr>();
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = match kind {
            "sctp" | "mptcp" => libc::connect(fd, addr, len),
            _ => {
                // An ICMP echo request (type 8), or for raw UDP a bare UDP header
                // to port 53: what an exfiltration tool would craft.
                let packet: [u8; 8] = if kind == "raw-udp" {
                    [0x30, 0x39, 0, 53, 0, 8, 0, 0]
                } else {
                    [8, 0, 0xf7, 0xff, 0, 0, 0, 0]
                };
                let n = libc::sendto(fd, packet.as_ptr().cast(), packet.len(), 0, addr, len);
                if n < 0 { -1 } else { 0 }
            }
        };
        let outcome = if rc == 0 {
            success(action)
        } else {
            os_error(action)
        };
        close();
        outcome
    }
}

pub(crate) fn mcast_join(action: &str, group: &str) -> Outcome {
    let group: std::net::IpAddr = group.parse().expect("group address");
    let joined = match group {
        std::net::IpAddr::V4(g) => UdpSocket::bind("0.0.0.0:0").and_then(|s| {
            s.join_multicast_v4(&g, &std::net::Ipv4Addr::UNSPECIFIED)
                .map(|()| s)
        }),
        std::net::IpAddr::V6(g) => {
            UdpSocket::bind("[::]:0").and_then(|s| s.join_multicast_v6(&g, 0).map(|()| s))
        }
    };
    let listed = |table: &str, needle: &str| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .matches(needle)
            .count() as u64
    };
    let (table, needle) = match group {
        std::net::IpAddr::V4(g) => (
            "/proc/self/net/igmp",
            format!("{:08X}", u32::from_ne_bytes(g.octets())),
        ),
        std::net::IpAddr::V6(g) => (
            "/proc/self/net/igmp6",
            g.octets().iter().map(|b| format!("{b:02x}")).collect(),
        ),
    };
    let mut o = match &joined {
        Ok(_) => success(action),
        Err(e) => failure(action, e),
    };
    o.count = Some(listed(table, &needle));
    drop(joined);
    o
}

pub(crate) fn set_option(action: &str, kind: &str) -> Outcome {
    // SAFETY: plain socket syscalls on values built here; the fd is closed.
    unsafe {
        let (domain, ty, level, name, value): (i32, i32, i32, i32, Vec<u8>) = match kind {
            // NOP, then a loose source route through 198.51.100.66.
            "ip-options" => (
                libc::AF_INET,
                libc::SOCK_DGRAM,
                libc::IPPROTO_IP,
                libc::IP_OPTIONS,
                vec![1, 131, 7, 4, 198, 51, 100, 66],
            ),
            // A segment routing header (type 4, which Linux takes without
            // privilege): one segment, 2001:db8::66.
            "ipv6-rthdr" => (
                libc::AF_INET6,
                libc::SOCK_DGRAM,
                libc::IPPROTO_IPV6,
                libc::IPV6_RTHDR,
                [
                    &[0, 2, 4, 0, 0, 0, 0, 0][..],
                    &"2001:db8::66"
                        .parse::<std::net::Ipv6Addr>()
                        .unwrap()
                        .octets(),
                ]
                .concat(),
            ),
            _ => (
                libc::AF_INET,
                libc::SOCK_STREAM,
                libc::IPPROTO_TCP,
                libc::TCP_FASTOPEN,
                5i32.to_ne_bytes().to_vec(),
            ),
        };
        let fd = libc::socket(domain, ty, 0);
        if fd < 0 {
            return os_error(action);
        }
        let rc = libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as u32);
        let outcome = if rc == 0 {
            success(action)
        } else {
            os_error(action)
        };
        libc::close(fd);
        outcome
    }
}

fn bind_listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    // As the standard library's listeners do, so a server bound here later
    // is not refused for this one's connections in TIME_WAIT.
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    Ok(sock.into())
}
