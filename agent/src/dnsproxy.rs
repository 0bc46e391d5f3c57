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

mod listen;
mod refusal;
mod respond;
mod screen;
mod upstream;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use egret_common::rules::PortRule;
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{RData, Record, RecordType},
};
use tokio::{sync::Semaphore, task::JoinSet};

use listen::*;
use refusal::*;
use respond::*;
use screen::*;
use upstream::*;

pub use listen::tcp_frame;
pub use upstream::{Upstreams, upstream_servers};

use crate::{
    events::Hub,
    learned::{SharedLearning, TtlSettings},
    policy::{self, DnsRefusal, HostRule, Mode},
};

/// Queries in flight per runner; more are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 2048;

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
    /// The policy's NAT64 prefixes, for the rebinding guard.
    pub nat64: Vec<ipnet::Ipv6Net>,
    /// What this runner's proxy did; [`Proxies::ensure`] carries it over
    /// from the configuration it replaces, so reloads keep counting.
    pub stats: Arc<ProxyStats>,
}

impl RunnerDns {
    fn rules_for(&self, name: &str) -> Vec<&HostRule> {
        policy::rules_for(&self.rules, name)
    }
}

/// Counts the status command reports.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Answers not released because the runner holds its whole share of
    /// the learned-address map.
    pub quota: AtomicU64,
    pub answered: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub stripped: AtomicU64,
}

impl ProxyStats {
    pub fn counts(&self) -> crate::status::DnsCounts {
        crate::status::DnsCounts {
            answered: self.answered.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            stripped: self.stripped.load(Ordering::Relaxed),
            quota: self.quota.load(Ordering::Relaxed),
        }
    }
}

/// What every listener shares.
pub struct Shared {
    learning: SharedLearning,
    /// The agent's own handle on the pinned learned-address map. Writes
    /// happen with the learning lock held, so they never interleave with
    /// the agent's syncs of the same map.
    learned: Mutex<crate::datapath::LearnedWriter>,
    hub: Arc<Hub>,
    /// To name a refused query's cgroup as events do.
    cgroup_root: PathBuf,
    upstreams: Upstreams,
    /// Process scans naming the process behind a refused query.
    scans: crate::budget::PerRunnerBudget,
    /// The agent's TTL settings (fixed for its lifetime).
    ttl: TtlSettings,
    /// To name the CI job behind a refused query.
    jobs: Arc<crate::jobs::Jobs>,
    /// Job containers, whose service names the proxy answers for the
    /// same job's containers.
    containers: crate::docker::SharedRegistry,
}

impl Shared {
    pub fn new(
        learning: SharedLearning,
        pins: &crate::datapath::Pins,
        hub: Arc<Hub>,
        cgroup_root: PathBuf,
        jobs: Arc<crate::jobs::Jobs>,
        containers: crate::docker::SharedRegistry,
    ) -> Result<Self, ProxyError> {
        let learned = crate::datapath::LearnedWriter::open(pins)?;
        let ttl = learning.lock().unwrap_or_else(|e| e.into_inner()).settings;
        Ok(Self {
            upstreams: Upstreams::default(),
            scans: crate::budget::PerRunnerBudget::new(SCANS_PER_SECOND),
            ttl,
            learning,
            learned: Mutex::new(learned),
            hub,
            cgroup_root,
            jobs,
            containers,
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
    pub fn ensure(&mut self, mut config: RunnerDns, preferred: u16) -> Result<u16, ProxyError> {
        if let Some(l) = self.by_runner.get(&config.id) {
            config.stats = l
                .config
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .stats
                .clone();
        }
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

    /// What one runner's proxy did since the agent started.
    pub fn counts_of(&self, runner: u32) -> crate::status::DnsCounts {
        self.by_runner
            .get(&runner)
            .map_or_else(Default::default, |l| {
                l.config
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .stats
                    .counts()
            })
    }

    /// What every runner's proxy did, summed.
    pub fn counts(&self) -> crate::status::DnsCounts {
        let mut total = crate::status::DnsCounts::default();
        for id in self.by_runner.keys() {
            let c = self.counts_of(*id);
            total.answered += c.answered;
            total.refused += c.refused;
            total.failed += c.failed;
            total.stripped += c.stripped;
            total.quota += c.quota;
        }
        total
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.tasks.abort_all();
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

/// What a datagram or TCP message from a job is, before any policy.
pub enum Examined {
    /// Not a query at all: no reply.
    Drop,
    /// Malformed or not a standard query: this reply, at once.
    Reply(Vec<u8>),
    /// One question, named as the job asked it (case kept, no trailing dot).
    Query { request: Message, asked: String },
}

/// Parses a job's message. Fed by untrusted bytes: it never panics, and
/// what it allocates is bounded by the message (the fuzz target
/// `dns_query` holds it to that).
pub fn examine(query: &[u8]) -> Examined {
    if query.len() < 12 {
        return Examined::Drop;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let Ok(request) = Message::from_vec(query) else {
        return Examined::Reply(error_reply(id, OpCode::Query, ResponseCode::FormErr, None));
    };
    if request.metadata.message_type != MessageType::Query {
        return Examined::Drop;
    }
    if request.metadata.op_code != OpCode::Query {
        return Examined::Reply(error_reply(
            id,
            request.metadata.op_code,
            ResponseCode::NotImp,
            None,
        ));
    }
    let [question] = &request.queries[..] else {
        return Examined::Reply(error_reply(id, OpCode::Query, ResponseCode::FormErr, None));
    };
    // Events keep the case the job used: tunnelled data is often base64.
    let asked = question.name().to_ascii().trim_end_matches('.').to_owned();
    Examined::Query { request, asked }
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
