//! Where allowed queries go: the runner's upstream resolvers, over pooled
//! UDP sockets or a TCP connection per query.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

use super::*;

/// How long one upstream gets to answer before the next one is tried.
pub(super) const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends the query to each upstream in turn until one answers; the reply
/// carries the query's own ID again.
pub(super) async fn forward(
    query: &[u8],
    transport: Transport,
    upstream: &[SocketAddr],
    pools: &Upstreams,
) -> Option<Vec<u8>> {
    let mut query = query.to_vec();
    let id = [query[0], query[1]];
    for server in upstream {
        let reply = match transport {
            Transport::Udp => {
                let socket = match pools.pick(*server) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%server, error = %e, "cannot open an upstream socket");
                        continue;
                    }
                };
                tokio::time::timeout(UPSTREAM_TIMEOUT, socket.exchange(&mut query)).await
            }
            Transport::Tcp => {
                // A fresh ID towards upstream: the job's own could be
                // predictable.
                let fresh = getrandom::u32().map_or(0x5a5a, |r| r as u16);
                query[..2].copy_from_slice(&fresh.to_be_bytes());
                tokio::time::timeout(UPSTREAM_TIMEOUT, forward_tcp(&query, *server))
                    .await
                    .map(|r| {
                        r.and_then(|bytes| {
                            if bytes.len() >= 12 && bytes[..2] == fresh.to_be_bytes() {
                                Ok(bytes)
                            } else {
                                Err(io::Error::other("reply to another query"))
                            }
                        })
                    })
            }
        };
        match reply {
            Ok(Ok(mut bytes)) => {
                bytes[..2].copy_from_slice(&id);
                return Some(bytes);
            }
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "upstream failed"),
            Err(_) => tracing::debug!(%server, "upstream did not answer in time"),
        }
    }
    None
}

/// Long-lived UDP sockets towards each upstream, several per server, each
/// query on a random one with a random ID that no other query in flight on
/// that socket holds. Replies are matched by ID; connected sockets take
/// replies from the server only.
#[derive(Default)]
pub struct Upstreams {
    by_server: Mutex<HashMap<SocketAddr, Vec<Arc<UpstreamSocket>>>>,
}

/// Sockets per upstream server: source-port entropy on top of the ID.
pub(super) const SOCKETS_PER_UPSTREAM: usize = 8;

impl Upstreams {
    pub(super) fn pick(&self, server: SocketAddr) -> io::Result<Arc<UpstreamSocket>> {
        let mut all = self.by_server.lock().unwrap_or_else(|e| e.into_inner());
        let pool = all.entry(server).or_default();
        if pool.len() < SOCKETS_PER_UPSTREAM {
            pool.push(UpstreamSocket::open(server)?);
            return Ok(pool[pool.len() - 1].clone());
        }
        let n = getrandom::u32().unwrap_or(0) as usize % pool.len();
        Ok(pool[n].clone())
    }
}

pub struct UpstreamSocket {
    sock: Arc<UdpSocket>,
    pending: Mutex<HashMap<u16, tokio::sync::oneshot::Sender<Vec<u8>>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for UpstreamSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl UpstreamSocket {
    pub(super) fn open(server: SocketAddr) -> io::Result<Arc<Self>> {
        let local: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let std_sock = std::net::UdpSocket::bind(local)?;
        std_sock.connect(server)?;
        std_sock.set_nonblocking(true)?;
        let sock = Arc::new(UdpSocket::from_std(std_sock)?);
        Ok(Arc::new_cyclic(|me: &std::sync::Weak<Self>| {
            let me = me.clone();
            let reader_sock = sock.clone();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 65_535];
                loop {
                    // An ICMP error on the connected socket surfaces here;
                    // the query it concerned times out.
                    let Ok(n) = reader_sock.recv(&mut buf).await else {
                        continue;
                    };
                    let Some(me) = me.upgrade() else { return };
                    if n < 12 {
                        continue;
                    }
                    let id = u16::from_be_bytes([buf[0], buf[1]]);
                    let waiter = me
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(buf[..n].to_vec());
                    }
                }
            });
            Self {
                sock,
                pending: Mutex::new(HashMap::new()),
                reader,
            }
        }))
    }

    /// Sends `query` under a fresh ID (written into it) and waits for the
    /// reply. Dropped when the caller times out, which frees the ID.
    pub(super) async fn exchange(&self, query: &mut [u8]) -> io::Result<Vec<u8>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.len() > usize::from(u16::MAX) / 2 {
                return Err(io::Error::other("too many queries in flight"));
            }
            let id = loop {
                let id = getrandom::u32().map_or(0, |r| r as u16);
                if !pending.contains_key(&id) {
                    break id;
                }
            };
            pending.insert(id, tx);
            id
        };
        struct Forget<'a>(&'a UpstreamSocket, u16);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&self.1);
            }
        }
        let _forget = Forget(self, id);
        query[..2].copy_from_slice(&id.to_be_bytes());
        self.sock.send(query).await?;
        rx.await
            .map_err(|_| io::Error::other("upstream socket closed"))
    }
}

pub(super) async fn forward_tcp(query: &[u8], server: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Upstream servers for a runner: its own, the agent's, or the host's
/// resolver configuration.
pub fn upstream_servers(runner: &[IpAddr], agent: &[IpAddr]) -> Vec<SocketAddr> {
    let chosen: Vec<IpAddr> = if !runner.is_empty() {
        runner.to_vec()
    } else if !agent.is_empty() {
        agent.to_vec()
    } else {
        hickory_resolver::system_conf::read_system_conf()
            .map(|(config, _)| config.name_servers().iter().map(|ns| ns.ip).collect())
            .unwrap_or_default()
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for ip in chosen {
        let addr = SocketAddr::new(ip, egret_common::port::DNS);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}
