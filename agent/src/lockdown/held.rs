//! The sockets the jobs hold, found through their processes' file
//! descriptors. A sock_diag dump visits every bucket of the kernel's TCP
//! hash, however few sockets it returns: 262,144 buckets and about 2 ms
//! per walk on a 16 GiB host, more on larger ones. A job holds a few dozen
//! sockets, and the kernel can destroy each one by name (its addresses,
//! interface and cookie) with one exact lookup and no walk.
//!
//! Each socket is borrowed from its process with pidfd_getfd(2) just long
//! enough to read that name. Where the kernel or a security module refuses
//! the borrowing, [`scan`] says so and the caller walks the tables instead.

use std::{
    collections::HashSet,
    fs::File,
    io,
    mem::{MaybeUninit, size_of},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
};

use super::sock_diag::{Socket, TCP_CLOSE, TCP_LISTEN, TCP_TIME_WAIT};

/// One socket a job's process holds.
pub struct Held {
    pub socket: Socket,
    pub runner: u32,
    /// The network namespace the socket lives in, where it must be
    /// destroyed: an open handle, and its inode.
    pub netns: (File, u64),
    /// The job's descriptor, borrowed: it tells whether the socket is still
    /// alive after a destroy misses.
    pub fd: OwnedFd,
}

/// Why the descriptors cannot be borrowed on this host: pidfd_getfd(2)
/// missing (before Linux 5.6) or refused (Yama's ptrace_scope 3, an LSM).
#[derive(Debug)]
pub struct Unavailable(pub io::Error);

/// Every TCP and UDP socket of `processes` (runner, pid), each once, with
/// listeners, unbound sockets and closed ones left out: none of them
/// carries a job's traffic.
pub fn scan(processes: &[(u32, u32)]) -> Result<Vec<Held>, Unavailable> {
    let mut seen = HashSet::new();
    let mut held = Vec::new();
    for &(runner, pid) in processes {
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            // Exited since cgroup.procs listed it: its sockets are closed.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) => return Err(Unavailable(e)),
        };
        let entries = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Unavailable(e)),
        };
        for entry in entries.flatten() {
            let inode = match std::fs::read_link(entry.path()) {
                Ok(target) => socket_inode(&target.to_string_lossy()),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(Unavailable(e));
                }
                // Closed since the listing.
                Err(_) => None,
            };
            let Some(inode) = inode else {
                continue;
            };
            let Some(number) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // Listing another user's descriptors needs only the right to
            // read the directory, but reading one needs what borrowing it
            // needs (CAP_SYS_PTRACE), hence the refusal above.
            if !seen.insert(inode) {
                continue;
            }
            let fd = match pidfd_getfd(&pidfd, number) {
                Ok(fd) => fd,
                // Closed since the listing, or the process exited.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF | libc::ESRCH)) => continue,
                Err(e) => return Err(Unavailable(e)),
            };
            if let Some(socket) = name(&fd) {
                // A socket that cannot say where it lives cannot be named to
                // its namespace's sock_diag: the tables are walked instead.
                let netns = netns_of(&fd).map_err(Unavailable)?;
                held.push(Held {
                    socket,
                    runner,
                    netns,
                    fd,
                });
            }
        }
    }
    Ok(held)
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The name sock_diag destroys `fd`'s socket by, or None for a socket a
/// lockdown leaves alone.
fn name(fd: &OwnedFd) -> Option<Socket> {
    let family = option::<i32>(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return None;
    }
    let protocol = option::<i32>(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    // SO_PEERNAME refuses a buffer longer than the address it writes.
    let size = if family == libc::AF_INET {
        size_of::<libc::sockaddr_in>()
    } else {
        size_of::<libc::sockaddr_in6>()
    };
    let local = address(fd, size, |fd, addr, len| {
        // SAFETY: getsockname writes at most `len` bytes into `addr`, which
        // points at a sockaddr_storage at least that large.
        unsafe { libc::getsockname(fd, addr, len) }
    })?;
    if protocol == libc::IPPROTO_TCP {
        let state = tcp_state(fd)?;
        if matches!(state, TCP_LISTEN | TCP_TIME_WAIT) {
            return None;
        }
        // A connect that passed its hook before the lockdown holds the
        // socket's lock until the socket is in the hash as SYN_SENT. The
        // first read waited for that lock (tcp_get_info takes it), so a
        // second one sees where the connect got to.
        if state == TCP_CLOSE && tcp_state(fd)? == TCP_CLOSE {
            return None;
        }
    } else if protocol != libc::IPPROTO_UDP || local.port() == 0 {
        // An unbound UDP socket has sent nothing and is in no table; its
        // first datagram meets the lockdown in the kernel.
        return None;
    }
    // SO_PEERNAME answers for a handshake in flight too, where
    // getpeername(2) says ENOTCONN. An unconnected UDP socket has none.
    let peer = address(fd, size, |fd, addr, len| {
        // SAFETY: as for getsockname above; SO_PEERNAME writes a sockaddr.
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERNAME, addr.cast(), len) }
    })
    .unwrap_or_else(|| SocketAddr::new(unspecified(local.ip()), 0));
    let interface = option::<i32>(fd, libc::SOL_SOCKET, libc::SO_BINDTOIFINDEX).unwrap_or(0);
    let cookie = option::<u64>(fd, libc::SOL_SOCKET, libc::SO_COOKIE).ok()?;
    Some(Socket::named(
        family as u8,
        protocol as u8,
        local,
        peer,
        interface as u32,
        cookie,
    ))
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// The TCP state number of `fd`'s socket (`tcpi_state`, the first byte of
/// `struct tcp_info`; the kernel copies as much as is asked for).
pub fn tcp_state(fd: &OwnedFd) -> Option<u8> {
    option(fd, libc::IPPROTO_TCP, libc::TCP_INFO).ok()
}

/// A socket option the kernel writes as exactly one `T`.
fn option<T: Copy + Default>(fd: &OwnedFd, level: i32, option: i32) -> io::Result<T> {
    let mut value = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`, a plain
    // integer of that size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<T>() {
        return Err(io::Error::other("a socket option of another size"));
    }
    Ok(value)
}

/// An address the kernel writes as a sockaddr of `size` bytes through
/// `call`.
fn address(
    fd: &OwnedFd,
    size: usize,
    call: impl FnOnce(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> Option<SocketAddr> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size.min(size_of::<libc::sockaddr_storage>()) as libc::socklen_t;
    if call(fd.as_raw_fd(), storage.as_mut_ptr().cast(), &mut len) != 0 {
        return None;
    }
    // SAFETY: zeroed, then written by the kernel: valid as any sockaddr.
    let storage = unsafe { storage.assume_init() };
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin = unsafe { &*(&raw const storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe { &*(&raw const storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

/// The network namespace `fd`'s socket lives in: an open handle and its
/// inode.
fn netns_of(fd: &OwnedFd) -> io::Result<(File, u64)> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor.
    let ns = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGSKNS) };
    if ns < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned only here.
    let ns = unsafe { File::from_raw_fd(ns) };
    let inode = ns.metadata()?.ino();
    Ok((ns, inode))
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned only here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn pidfd_getfd(pidfd: &OwnedFd, target: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(2) with no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor (close-on-exec), owned only here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_link_names_its_inode() {
        assert_eq!(socket_inode("socket:[4026532]"), Some(4026532));
        assert_eq!(socket_inode("pipe:[4026532]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    /// The process's own sockets, named as the kernel names them: a
    /// connected UDP socket, a listener (left out) and an unbound UDP
    /// socket (left out). No packet is sent.
    #[test]
    fn a_connected_socket_is_named_by_its_addresses_and_a_listener_is_left_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect(listener.local_addr().unwrap()).unwrap();
        let unbound = socket2_unbound_udp();
        let own = |raw: libc::c_int| {
            // SAFETY: dup of a descriptor this test owns.
            unsafe { OwnedFd::from_raw_fd(libc::dup(raw)) }
        };
        let named = name(&own(udp.as_raw_fd())).expect("a connected UDP socket is named");
        assert_eq!(named.peer, listener.local_addr().unwrap().ip());
        assert_eq!(named.peer_port, listener.local_addr().unwrap().port());
        assert_eq!(i32::from(named.protocol), libc::IPPROTO_UDP);
        assert!(name(&own(listener.as_raw_fd())).is_none());
        assert!(name(&unbound).is_none());
        assert!(netns_of(&own(udp.as_raw_fd())).is_ok());
    }

    fn socket2_unbound_udp() -> OwnedFd {
        // SAFETY: a plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert!(fd >= 0);
        // SAFETY: a new descriptor, owned only here.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }
}
