//! The kernel's socket diagnostics (NETLINK_SOCK_DIAG), for the two things
//! a lockdown needs: listing a network namespace's TCP and UDP sockets
//! with the cgroup each belongs to, and destroying one (SOCK_DESTROY, the
//! kernel's `tcp_abort`/`udp_abort`: the owner sees ECONNABORTED).

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// `struct nlmsghdr`, `struct inet_diag_req_v2`, `struct inet_diag_msg`.
const HEADER: usize = 16;
const REQUEST: usize = 56;
const MESSAGE: usize = 72;
/// The `inet_diag_sockid` inside both, as the kernel wrote it.
const SOCKID: usize = 48;
const INET_DIAG_CGROUP_ID: u16 = 21;

pub const TCP_LISTEN: u8 = 10;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;

/// One socket as the kernel listed it.
#[derive(Clone, Debug)]
pub struct Socket {
    pub family: u8,
    pub protocol: u8,
    /// The socket's own `inet_diag_sockid`, which names it to SOCK_DESTROY.
    id: [u8; SOCKID],
    pub peer: IpAddr,
    pub peer_port: u16,
    /// 0 where the kernel keeps no cgroup for it.
    pub cgroup: u64,
}

impl Socket {
    /// A socket named by what the kernel's exact lookup needs (SOCK_DESTROY
    /// without a dump): its local and peer address, the interface it is
    /// bound to (0: none) and its cookie, which tells it apart from another
    /// socket on the same addresses (an `SO_REUSEPORT` group).
    pub fn named(
        family: u8,
        protocol: u8,
        local: SocketAddr,
        peer: SocketAddr,
        interface: u32,
        cookie: u64,
    ) -> Self {
        let mut id = [0u8; SOCKID];
        id[0..2].copy_from_slice(&local.port().to_be_bytes());
        id[2..4].copy_from_slice(&peer.port().to_be_bytes());
        id[4..20].copy_from_slice(&wire(family, local.ip()));
        id[20..36].copy_from_slice(&wire(family, peer.ip()));
        id[36..40].copy_from_slice(&interface.to_ne_bytes());
        // Two native u32s, low half first, as sock_diag_check_cookie reads.
        id[40..44].copy_from_slice(&(cookie as u32).to_ne_bytes());
        id[44..48].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        Self {
            family,
            protocol,
            id,
            peer: peer.ip(),
            peer_port: peer.port(),
            cgroup: 0,
        }
    }

    /// The kernel's cookie for this socket, unique while it lives.
    pub fn cookie(&self) -> u64 {
        let low = u32::from_ne_bytes(self.id[40..44].try_into().expect("4 bytes"));
        let high = u32::from_ne_bytes(self.id[44..48].try_into().expect("4 bytes"));
        u64::from(high) << 32 | u64::from(low)
    }
}

/// An address as `inet_diag_sockid` holds it: an AF_INET socket's in the
/// first four bytes, an AF_INET6 socket's (v4-mapped where it is IPv4) in
/// all sixteen.
fn wire(family: u8, addr: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(v4) if i32::from(family) == libc::AF_INET => {
            out[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V4(v4) => out = v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// A NETLINK_SOCK_DIAG socket in the calling thread's network namespace.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    pub fn open() -> io::Result<Self> {
        // SAFETY: a plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned only here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0 })
    }

    /// A NETLINK_SOCK_DIAG socket in the network namespace `ns`. A socket
    /// stays in the namespace it was made in, so the calling thread enters
    /// `ns` to make it and goes back at once (cheaper than a thread of its
    /// own, and a lockdown is waiting).
    pub fn open_in(ns: &File) -> io::Result<Self> {
        use nix::sched::{CloneFlags, setns};
        let home = File::open("/proc/thread-self/ns/net")?;
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let diag = Self::open();
        if let Err(e) = setns(&home, CloneFlags::CLONE_NEWNET) {
            // Staying in a job's namespace would make every later socket
            // of this process there; nothing here can go on safely.
            panic!("return to this command's own network namespace: {e}");
        }
        diag
    }

    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        (family, protocol): (u8, u8),
        states: u32,
        id: &[u8; SOCKID],
    ) -> io::Result<u32> {
        self.seq += 1;
        let mut msg = [0u8; HEADER + REQUEST];
        msg[0..4].copy_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&kind.to_ne_bytes());
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        let req = &mut msg[HEADER..];
        req[0] = family;
        req[1] = protocol;
        req[4..8].copy_from_slice(&states.to_ne_bytes());
        req[8..8 + SOCKID].copy_from_slice(id);
        // SAFETY: sends the initialised buffer above on our own socket; the
        // kernel is the default destination of a netlink socket.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Reads replies to request `seq` until it is done, handing each
    /// message's type and payload to `each`. An error reply ends it.
    fn replies(&mut self, seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receives into our own buffer, at most its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= HEADER {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                let their_seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < HEADER || len > rest.len() {
                    return Err(io::Error::other("a truncated sock_diag reply"));
                }
                let payload = &rest[HEADER..len];
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
                if their_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(0..4)
                            .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ => each(kind, payload),
                }
            }
        }
    }

    /// Every socket of `family` (AF_INET, AF_INET6) and `protocol` (TCP,
    /// UDP) in this network namespace whose state is in `states` (a bit
    /// per TCP state number). The kernel leaves the others out, so a host
    /// holding thousands of TIME_WAIT sockets costs a scan nothing.
    pub fn list(&mut self, family: u8, protocol: u8, states: u32) -> io::Result<Vec<Socket>> {
        let seq = self.request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            (family, protocol),
            states,
            &[0; SOCKID],
        )?;
        let mut found = Vec::new();
        self.replies(seq, |kind, payload| {
            if kind == SOCK_DIAG_BY_FAMILY
                && let Some(s) = parse(payload, protocol)
            {
                found.push(s);
            }
        })?;
        Ok(found)
    }

    /// Destroys `socket`. False where the kernel found no socket by that
    /// name: gone meanwhile, or (named from outside a dump) the lookup
    /// found another socket on the same addresses.
    pub fn destroy(&mut self, socket: &Socket) -> io::Result<bool> {
        let seq = self.request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            (socket.family, socket.protocol),
            u32::MAX,
            &socket.id,
        )?;
        match self.replies(seq, |_, _| {}) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One `inet_diag_msg` and its attributes.
fn parse(payload: &[u8], protocol: u8) -> Option<Socket> {
    let msg = payload.get(..MESSAGE)?;
    let family = msg[0];
    let id: [u8; SOCKID] = msg[4..4 + SOCKID].try_into().ok()?;
    // sport, dport (big-endian), src[16], dst[16], if, cookie.
    let peer_port = u16::from_be_bytes([id[2], id[3]]);
    let dst: [u8; 16] = id[20..36].try_into().ok()?;
    let peer = if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(dst))
    };
    let mut cgroup = 0;
    let mut attrs = &payload[MESSAGE..];
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        if kind == INET_DIAG_CGROUP_ID && len >= 12 {
            cgroup = u64::from_ne_bytes(attrs[4..12].try_into().ok()?);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    Some(Socket {
        family,
        protocol,
        id,
        peer,
        peer_port,
        cgroup,
    })
}
