//! The per-runner DNS proxy.
//!
//! The kernel programs send every DNS query a runner's jobs emit, to any
//! address on port 53 over UDP or TCP, to that runner's listener here, so
//! the listener a query arrives on names the runner that asked. A name the
//! policy allows is forwarded upstream; the A and AAAA answers are written
//! into the runner's learned-address map **before** the reply is released,
//! so the job's connect that follows never races the map. A name the policy
//! does not allow is answered REFUSED (or NXDOMAIN), reported as a
//! `dns_refused` event, and never leaves the host.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use egret_common::{
    maps::{ExactKey, Learned},
    rules::PortRule,
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::RData,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinSet,
};

use crate::{
    baseline,
    control::Hub,
    events::{self, Attribution},
    policy::{DnsRefusal, HostRule, Mode},
};

/// How long one upstream gets to answer before the next one is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries in flight per runner; more are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 2048;
/// TCP clients per runner at once; more are disconnected, so a job cannot
/// exhaust the agent's file descriptors.
const MAX_TCP_CLIENTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("DNS proxy of runner '{runner}': cannot listen on {addr}: {source}")]
    Bind {
        runner: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("DNS proxy: cannot open the learned-address map: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// What one runner's proxy answers, replaced whole on reload.
#[derive(Clone, Debug)]
pub struct RunnerDns {
    pub id: u32,
    pub name: String,
    pub mode: Mode,
    /// Exact names and `*.suffix` patterns, with their ports.
    pub rules: Vec<HostRule>,
    pub upstream: Vec<SocketAddr>,
    pub refuse_with: DnsRefusal,
    pub listen: Option<IpAddr>,
    /// The runner's cgroup directory, to name the process behind a refusal.
    pub cgroup_dir: PathBuf,
}

impl RunnerDns {
    /// The allow entries a queried name falls under. A known
    /// DNS-over-HTTPS service counts only when an entry names it exactly.
    fn rules_for(&self, name: &str) -> Vec<&HostRule> {
        let doh = baseline::is_doh_name(name);
        self.rules
            .iter()
            .filter(|r| r.matches(name) && (!doh || !r.name.starts_with("*.")))
            .collect()
    }
}

/// Counts the status command reports.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub answered: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub stripped: AtomicU64,
}

/// Per runner: the start of the current second and the scans made in it.
#[derive(Default)]
struct ScanBudget(Mutex<HashMap<u32, (std::time::Instant, u32)>>);

impl ScanBudget {
    /// Whether this runner may have one more process scan now.
    fn allow(&self, runner: u32, now: std::time::Instant) -> bool {
        let mut scans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (since, count) = scans.entry(runner).or_insert((now, 0));
        if now.duration_since(*since) >= Duration::from_secs(1) {
            (*since, *count) = (now, 0);
        }
        *count += 1;
        *count <= SCANS_PER_SECOND
    }
}

impl ProxyStats {
    pub fn counts(&self) -> crate::status::DnsCounts {
        crate::status::DnsCounts {
            answered: self.answered.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            stripped: self.stripped.load(Ordering::Relaxed),
        }
    }
}

/// Process scans per runner per second that name the process behind a
/// refused query.
const SCANS_PER_SECOND: u32 = 50;

/// What every listener shares.
pub struct Shared {
    pub attribution: Arc<Mutex<Attribution>>,
    /// The agent's own handle on the pinned learned-address map. Writes
    /// happen with the attribution lock held, so they never interleave with
    /// the agent's syncs of the same map.
    learned: Mutex<BpfHashMap<MapData, ExactKey, Learned>>,
    hub: Arc<Hub>,
    upstreams: Upstreams,
    scans: ScanBudget,
    /// The agent's TTL settings (fixed for its lifetime).
    ttl: crate::resolver::TtlSettings,
    pub stats: ProxyStats,
}

impl Shared {
    pub fn new(
        attribution: Arc<Mutex<Attribution>>,
        learned_pin: &std::path::Path,
        hub: Arc<Hub>,
    ) -> Result<Self, ProxyError> {
        let data = MapData::from_pin(learned_pin)?;
        let map = aya::maps::Map::from_map_data(data)?;
        let learned = BpfHashMap::try_from(map)?;
        let ttl = attribution
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .learning
            .settings;
        Ok(Self {
            upstreams: Upstreams::default(),
            scans: ScanBudget::default(),
            ttl,
            attribution,
            learned: Mutex::new(learned),
            hub,
            stats: ProxyStats::default(),
        })
    }
}

/// One runner's listeners.
struct Listener {
    port: u16,
    listen: Option<IpAddr>,
    config: Arc<RwLock<Arc<RunnerDns>>>,
    tasks: JoinSet<()>,
}

/// Every runner's proxy.
pub struct Proxies {
    shared: Arc<Shared>,
    by_runner: HashMap<u32, Listener>,
    /// The proxies run on a thread of their own, on a single-threaded
    /// runtime: a query then crosses no thread between its hops, as in a
    /// classic forwarder's event loop.
    runtime: tokio::runtime::Handle,
}

impl Proxies {
    pub fn new(shared: Arc<Shared>) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("egret-dns".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(Self {
            shared,
            by_runner: HashMap::new(),
            runtime: handle,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts or updates a runner's proxy and returns its port. A running
    /// proxy keeps its port and sockets; a new one tries `preferred` (the
    /// port the pinned programs already redirect to) before any other.
    pub fn ensure(&mut self, config: RunnerDns, preferred: u16) -> Result<u16, ProxyError> {
        if let Some(l) = self.by_runner.get_mut(&config.id)
            && l.listen == config.listen
        {
            *l.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
            return Ok(l.port);
        }
        let keep = self.by_runner.get(&config.id).map_or(preferred, |l| l.port);
        self.by_runner.remove(&config.id);
        // Sockets register with the runtime they are created under.
        let _in_proxy_runtime = self.runtime.enter();
        let (port, udp, tcp) = bind_runner(&config, keep)?;
        let id = config.id;
        let listen = config.listen;
        let config = Arc::new(RwLock::new(Arc::new(config)));
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        for sock in udp {
            tasks.spawn_on(
                serve_udp(
                    Arc::new(sock),
                    self.shared.clone(),
                    config.clone(),
                    limit.clone(),
                ),
                &self.runtime,
            );
        }
        for listener in tcp {
            tasks.spawn_on(
                serve_tcp(listener, self.shared.clone(), config.clone(), limit.clone()),
                &self.runtime,
            );
        }
        self.by_runner.insert(
            id,
            Listener {
                port,
                listen,
                config,
                tasks,
            },
        );
        Ok(port)
    }

    /// Stops the proxies of runners not in `keep`.
    pub fn retain(&mut self, keep: &std::collections::HashSet<u32>) {
        self.by_runner.retain(|id, _| keep.contains(id));
    }

    pub fn port_of(&self, runner: u32) -> Option<u16> {
        self.by_runner.get(&runner).map(|l| l.port)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Binds UDP and TCP on 127.0.0.1, ::1 and the runner's `dns.listen`
/// address, all on one port.
fn bind_runner(
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

fn try_bind(
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

fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
    )
}

/// A non-blocking socket bound to `addr`. Freebind lets the agent listen on
/// a container bridge address before the bridge exists.
fn bind_socket(addr: SocketAddr, stream: bool) -> io::Result<OwnedSock> {
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
struct OwnedSock(OwnedFd);

impl OwnedSock {
    fn local_addr(&self) -> io::Result<nix::sys::socket::SockaddrStorage> {
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

async fn serve_udp(
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
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
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

async fn serve_tcp(
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
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (shared, config, limit) = (shared.clone(), config.clone(), limit.clone());
        tokio::spawn(async move {
            let _ = serve_tcp_client(stream, peer, &shared, &config, &limit).await;
            drop(seat);
        });
    }
}

async fn serve_tcp_client(
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
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&(reply.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

fn error_reply(id: u16, op: OpCode, code: ResponseCode, request: Option<&Message>) -> Vec<u8> {
    let mut m = Message::error_msg(id, op, code);
    if let Some(req) = request {
        m.queries = req.queries.clone();
        m.metadata.recursion_desired = req.metadata.recursion_desired;
    }
    m.metadata.recursion_available = true;
    m.to_vec().unwrap_or_default()
}

/// Answers one query; `None` drops it (not a query at all).
async fn answer(
    query: &[u8],
    transport: Transport,
    peer: SocketAddr,
    runner: &RunnerDns,
    shared: &Arc<Shared>,
) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let Ok(request) = Message::from_vec(query) else {
        return Some(error_reply(id, OpCode::Query, ResponseCode::FormErr, None));
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    if request.metadata.op_code != OpCode::Query {
        return Some(error_reply(
            id,
            request.metadata.op_code,
            ResponseCode::NotImp,
            None,
        ));
    }
    let [question] = &request.queries[..] else {
        return Some(error_reply(id, OpCode::Query, ResponseCode::FormErr, None));
    };
    let asked = question.name().to_ascii();
    // Events keep the case the job used: tunnelled data is often base64.
    let asked = asked.trim_end_matches('.');
    let name = asked.to_ascii_lowercase();
    let rules = runner.rules_for(&name);
    if rules.is_empty() {
        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
        // Before the reply: the job's socket, which names the process, is
        // open only while it waits for it.
        report_refusal(runner, shared, asked, transport, peer).await;
        if runner.mode == Mode::Enforce {
            let code = match runner.refuse_with {
                DnsRefusal::Refused => ResponseCode::Refused,
                DnsRefusal::Nxdomain => ResponseCode::NXDomain,
            };
            return Some(error_reply(id, OpCode::Query, code, Some(&request)));
        }
    }
    let servfail = || {
        shared.stats.failed.fetch_add(1, Ordering::Relaxed);
        Some(error_reply(
            id,
            OpCode::Query,
            ResponseCode::ServFail,
            Some(&request),
        ))
    };
    let Some(raw) = forward(query, transport, &runner.upstream, &shared.upstreams).await else {
        return servfail();
    };
    let Ok(mut response) = Message::from_vec(&raw) else {
        return servfail();
    };
    if response.queries.len() != 1
        || response.queries[0].name() != question.name()
        || response.queries[0].query_type() != question.query_type()
    {
        return servfail();
    }
    let private_ok = rules.iter().any(|r| r.private_answers);
    let screened = screen(&mut response, shared.ttl.cap, private_ok);
    shared
        .stats
        .stripped
        .fetch_add(screened.stripped as u64, Ordering::Relaxed);
    if !rules.is_empty() && !screened.ips.is_empty() {
        let ports: Vec<PortRule> = rules.iter().flat_map(|r| r.ports.iter().copied()).collect();
        if learn(
            shared,
            runner.id,
            &name,
            &ports,
            &screened.ips,
            screened.ttl,
        )
        .is_err()
        {
            // Not in the map: the job's connect would be refused anyway;
            // tell it now rather than hand it an address it cannot reach.
            return servfail();
        }
    }
    shared.stats.answered.fetch_add(1, Ordering::Relaxed);
    if screened.changed {
        response.metadata.id = id;
        return response.to_vec().ok().or_else(servfail);
    }
    Some(raw)
}

struct Screened {
    /// The addresses the reply carries for the question's name.
    ips: Vec<IpAddr>,
    /// The lowest TTL along the CNAME chain.
    ttl: Duration,
    /// Whether `response` was modified and must be re-encoded.
    changed: bool,
    /// Answers dropped by the rebinding guard.
    stripped: usize,
}

/// Follows the CNAME chain from the question's name, collects its
/// addresses, drops answers in private, loopback or metadata ranges
/// (metadata always, the rest unless `private_ok`), and caps every TTL so a
/// job never caches an address longer than the map allows it.
fn screen(response: &mut Message, cap: Duration, private_ok: bool) -> Screened {
    let cap_secs = u32::try_from(cap.as_secs()).unwrap_or(u32::MAX).max(1);
    let mut chain = vec![response.queries[0].name().clone()];
    let mut ips = Vec::new();
    let mut ttl = u32::MAX;
    let mut changed = false;
    let before = response.answers.len();
    response.answers.retain(|record| {
        let in_chain = chain.iter().any(|n| n == &record.name);
        let ip = match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            RData::CNAME(target) if in_chain => {
                chain.push(target.0.clone());
                ttl = ttl.min(record.ttl);
                None
            }
            _ => None,
        };
        let Some(ip) = ip else {
            return true;
        };
        if !baseline::answer_usable(ip, private_ok) {
            return false;
        }
        if in_chain {
            ips.push(ip);
            ttl = ttl.min(record.ttl);
        }
        true
    });
    let stripped = before - response.answers.len();
    changed |= stripped > 0;
    for record in response.answers.iter_mut() {
        if record.ttl > cap_secs {
            record.ttl = cap_secs;
            changed = true;
        }
    }
    Screened {
        ips,
        ttl: Duration::from_secs(u64::from(if ttl == u32::MAX { 0 } else { ttl })),
        changed,
        stripped,
    }
}

/// Writes the addresses into the runner's learned map, under the lock that
/// orders every write to it.
fn learn(
    shared: &Shared,
    runner: u32,
    name: &str,
    ports: &[PortRule],
    ips: &[IpAddr],
    ttl: Duration,
) -> Result<(), aya::maps::MapError> {
    let mut attr = shared.attribution.lock().unwrap_or_else(|e| e.into_inner());
    let changes = attr.learning.learn_answer(runner, name, ports, ips, ttl);
    let mut map = shared.learned.lock().unwrap_or_else(|e| e.into_inner());
    for (key, value) in changes {
        map.insert(key, value, 0)?;
    }
    Ok(())
}

/// Sends the query to each upstream in turn until one answers; the reply
/// carries the query's own ID again.
async fn forward(
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
const SOCKETS_PER_UPSTREAM: usize = 8;

impl Upstreams {
    fn pick(&self, server: SocketAddr) -> io::Result<Arc<UpstreamSocket>> {
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
    fn open(server: SocketAddr) -> io::Result<Arc<Self>> {
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
    async fn exchange(&self, query: &mut [u8]) -> io::Result<Vec<u8>> {
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

async fn forward_tcp(query: &[u8], server: SocketAddr) -> io::Result<Vec<u8>> {
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

/// Publishes a `dns_refused` event, naming the process behind the query
/// when it can be found among the runner's processes.
async fn report_refusal(
    runner: &RunnerDns,
    shared: &Arc<Shared>,
    name: &str,
    transport: Transport,
    peer: SocketAddr,
) {
    let (runner, shared, name) = (runner.clone(), shared.clone(), name.to_owned());
    let scan = shared.scans.allow(runner.id, std::time::Instant::now());
    let _ = tokio::task::spawn_blocking(move || {
        // Beyond the budget (a job flooding refused names) the events still
        // come, without the process: scanning /proc per query would let a
        // job make the agent spin.
        let owner = scan
            .then(|| {
                crate::runners::socket_owner(
                    &runner.cgroup_dir,
                    transport == Transport::Tcp,
                    peer.port(),
                )
            })
            .flatten();
        let cgroup_root = shared
            .attribution
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cgroup_root
            .clone();
        let record = events::EventRecord {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            runner: runner.name.clone(),
            cgroup: owner
                .as_ref()
                .and_then(|o| crate::runners::relative(&cgroup_root, &o.cgroup_dir)),
            cgroup_id: owner.as_ref().map_or(0, |o| o.cgroup_id),
            pid: owner.as_ref().map_or(0, |o| o.pid),
            comm: owner.as_ref().map_or_else(String::new, |o| o.comm.clone()),
            family: if peer.is_ipv4() { "ipv4" } else { "ipv6" },
            proto: match transport {
                Transport::Udp => "udp".into(),
                Transport::Tcp => "tcp".into(),
            },
            dst: None,
            port: egret_common::port::DNS,
            socket_type: None,
            host: Some(name),
            reason: egret_common::event::reason::name(egret_common::event::reason::DNS_REFUSED),
            action: match runner.mode {
                Mode::Enforce => "deny",
                Mode::Audit => "audit",
            },
            hook: egret_common::event::hook::name(egret_common::event::hook::DNS_PROXY),
        };
        events::publish(&record, &shared.hub);
    })
    .await;
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

/// The network namespace cookie of the agent, which the programs compare
/// with a job's to tell whether it reaches the proxy on loopback.
pub fn own_netns_cookie() -> io::Result<u64> {
    let sock = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and an out-buffer of the length passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests;
