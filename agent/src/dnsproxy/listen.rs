//! The sockets a runner's proxy listens on, and the loops that take
//! queries off them.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, RwLock, atomic::Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};

use super::*;

/// A TCP client that sends nothing for this long is disconnected.
pub(super) const TCP_IDLE: Duration = Duration::from_secs(10);

/// TCP clients per runner at once; more are disconnected, so a job cannot
/// exhaust the agent's file descriptors.
pub(super) const MAX_TCP_CLIENTS: usize = 256;

/// Binds UDP and TCP on 127.0.0.1, ::1 and the runner's `dns.listen`
/// address, all on one port.
pub(super) fn bind_runner(
    config: &RunnerDns,
    preferred: u16,
) -> Result<(u16, Vec<UdpSocket>, Vec<TcpListener>), ProxyError> {
    let mut last_err = None;
    // The preferred port first; if it is taken, a few fresh ones (a port
    // free on 127.0.0.1 may still be taken on another address).
    for port in [preferred, 0, 0, 0] {
        match try_bind(config, port) {
            Ok(bound) => return Ok(bound),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| ProxyError::Bind {
        runner: config.name.clone(),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, preferred)),
        source: io::Error::other("no port"),
    }))
}

pub(super) fn try_bind(
    config: &RunnerDns,
    port: u16,
) -> Result<(u16, Vec<UdpSocket>, Vec<TcpListener>), ProxyError> {
    let err = |addr: SocketAddr| {
        let runner = config.name.clone();
        move |source| ProxyError::Bind {
            runner,
            addr,
            source,
        }
    };
    let first = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let udp4 = bind_socket(first, false).map_err(err(first))?;
    let port = udp4
        .local_addr()
        .map_err(err(first))?
        .as_sockaddr_in()
        .map_or(port, |a| a.port());
    let mut udp = vec![udp4];
    let mut tcp =
        vec![bind_socket(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), true).map_err(err(first))?];
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    match (bind_socket(v6, false), bind_socket(v6, true)) {
        (Ok(u), Ok(t)) => {
            udp.push(u);
            tcp.push(t);
        }
        // A host without IPv6: v6 queries then fail, closed.
        (Err(e), _) | (_, Err(e)) if ipv6_unavailable(&e) => {
            tracing::debug!(runner = %config.name, "no IPv6 loopback; the proxy listens on IPv4 only");
        }
        (Err(e), _) | (_, Err(e)) => return Err(err(v6)(e)),
    }
    if let Some(ip) = config.listen {
        let addr = SocketAddr::from((ip, port));
        udp.push(bind_socket(addr, false).map_err(err(addr))?);
        tcp.push(bind_socket(addr, true).map_err(err(addr))?);
    }
    let udp = udp
        .into_iter()
        .map(|fd| UdpSocket::from_std(std::net::UdpSocket::from(fd)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(err(first))?;
    let tcp = tcp
        .into_iter()
        .map(|fd| TcpListener::from_std(std::net::TcpListener::from(fd)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(err(first))?;
    Ok((port, udp, tcp))
}

pub(super) fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
    )
}

/// A non-blocking socket bound to `addr`. Freebind lets the agent listen on
/// a container bridge address before the bridge exists.
pub(super) fn bind_socket(addr: SocketAddr, stream: bool) -> io::Result<OwnedSock> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let ty = if stream {
        SockType::Stream
    } else {
        SockType::Datagram
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if stream {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    if !addr.ip().is_loopback() {
        setsockopt(&fd, sockopt::IpFreebind, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    if stream {
        listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    }
    Ok(OwnedSock(fd))
}

/// A bound socket, before tokio takes it over.
pub(super) struct OwnedSock(OwnedFd);

impl OwnedSock {
    pub(super) fn local_addr(&self) -> io::Result<nix::sys::socket::SockaddrStorage> {
        nix::sys::socket::getsockname(self.0.as_raw_fd()).map_err(io::Error::from)
    }
}

impl From<OwnedSock> for std::net::UdpSocket {
    fn from(s: OwnedSock) -> Self {
        s.0.into()
    }
}

impl From<OwnedSock> for std::net::TcpListener {
    fn from(s: OwnedSock) -> Self {
        s.0.into()
    }
}

pub(super) async fn serve_udp(
    sock: Arc<UdpSocket>,
    shared: Arc<Shared>,
    config: Arc<RwLock<Arc<RunnerDns>>>,
    limit: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let runner = config.read().unwrap_or_else(|e| e.into_inner()).clone();
            runner.stats.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let query = buf[..n].to_vec();
        let (sock, shared) = (sock.clone(), shared.clone());
        let runner = config.read().unwrap_or_else(|e| e.into_inner()).clone();
        tokio::spawn(async move {
            if let Some(reply) = answer(&query, Transport::Udp, peer, &runner, &shared).await {
                let _ = sock.send_to(&reply, peer).await;
            }
            drop(permit);
        });
    }
}

pub(super) async fn serve_tcp(
    listener: TcpListener,
    shared: Arc<Shared>,
    config: Arc<RwLock<Arc<RunnerDns>>>,
    limit: Arc<Semaphore>,
) {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "DNS proxy cannot accept a TCP client");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(seat) = clients.clone().try_acquire_owned() else {
            let runner = config.read().unwrap_or_else(|e| e.into_inner()).clone();
            runner.stats.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (shared, config, limit) = (shared.clone(), config.clone(), limit.clone());
        tokio::spawn(async move {
            let _ = serve_tcp_client(stream, peer, &shared, &config, &limit).await;
            drop(seat);
        });
    }
}

pub(super) async fn serve_tcp_client(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    config: &RwLock<Arc<RunnerDns>>,
    limit: &Semaphore,
) -> io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let _permit = limit.acquire().await;
        let runner = config.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(reply) = answer(&query, Transport::Tcp, peer, &runner, shared).await else {
            return Ok(());
        };
        // A reply too long to frame ends the connection rather than
        // desynchronising the stream.
        let Some(framed) = tcp_frame(reply) else {
            return Ok(());
        };
        stream.write_all(&framed).await?;
    }
}

/// A reply with its two-byte length prefix. One longer than a prefix can
/// say is cut down to its header and question with the TC bit set, which
/// tells the client the answer did not fit; `None` when even that fails.
pub fn tcp_frame(reply: Vec<u8>) -> Option<Vec<u8>> {
    let reply = if reply.len() > usize::from(u16::MAX) {
        let mut m = Message::from_vec(&reply).ok()?;
        m.answers.clear();
        m.authorities.clear();
        m.additionals.clear();
        m.metadata.truncation = true;
        m.to_vec().ok()?
    } else {
        reply
    };
    let len = u16::try_from(reply.len()).ok()?;
    let mut framed = Vec::with_capacity(reply.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&reply);
    Some(framed)
}
