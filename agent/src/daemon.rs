//! `egret agent`: load, pin, attach, keep the maps in step with the policy
//! and DNS, and stream events. Exiting never removes enforcement.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use tokio::{signal::unix::SignalKind, task::JoinSet};

mod apply;
mod outside_hooks;
mod reload;
mod signals;
mod systemd;
mod watch;

use outside_hooks::outside_every_hook;
pub use signals::hold_sighup;
use signals::release_sighup;
use systemd::Systemd;

use watch::{POLICY_POLL, PolicyWatch};

use crate::{
    IoError, baseline,
    compile::{self, CompileError, Host, Plan},
    control::{self, AgentRequest},
    datapath::{Attached, Datapath, DatapathError, Pins},
    dnsproxy::{self, Proxies, ProxyError, RunnerDns},
    events::{self, Enricher, Hub},
    learned::{Learning, SharedLearning, TtlSettings},
    lockdown,
    policy::{self, Mode, Policy, PolicyError},
    resolver::{self, Answer, Resolvers},
    runners::{self, CgroupError},
    state_dir::{AppliedRecord, AppliedRunner},
    status::{self, AgentInfo, ReloadResult},
};

pub struct AgentOptions {
    pub policy: PathBuf,
    pub pins: Pins,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Members of this group may use the control socket besides root.
    pub socket_group: Option<u32>,
    pub create_cgroups: bool,
    /// Reload when the policy files change.
    pub watch: bool,
    /// Resolvers for runners whose policy names none.
    pub dns_upstream: Vec<IpAddr>,
    pub ttl: TtlSettings,
    /// The Docker Engine API socket to learn job containers from; `None`
    /// turns that off.
    pub docker_socket: Option<PathBuf>,
    /// Where every event is also appended, and the size at which that
    /// file rotates.
    pub events_file: Option<(PathBuf, u64)>,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("egret agent must run as root: it loads BPF programs and attaches them to cgroups")]
    NotRoot,
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

impl AgentError {
    /// 1 for bad input, 2 for everything about the environment.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Policy(PolicyError::Invalid(_) | PolicyError::EmptyDirectory { .. }) => 1,
            _ => 2,
        }
    }
}

struct Agent {
    opts: AgentOptions,
    cgroup_root: PathBuf,
    datapath: Datapath,
    resolvers: Resolvers,
    /// The addresses DNS made reachable, shared with the DNS proxy.
    learning: SharedLearning,
    enricher: Arc<Enricher>,
    /// Runner name → id, for the runners of the applied policy.
    ids: HashMap<String, u32>,
    /// Runner name → cgroup as the policy names it.
    cgroups: HashMap<String, String>,
    proxies: Proxies,
    /// The agent's network namespace: jobs there reach their proxy on
    /// loopback.
    host_netns: u64,
    started: Instant,
    digest: String,
    /// Reloads applied, and rejected.
    reloads: (u64, u64),
    last_reload: Option<ReloadResult>,
    hub: Arc<Hub>,
    /// Per runner: the events-dropped counter when last reported.
    suppressed_seen: HashMap<u32, u64>,
    /// Ordinary denials beyond the per-second budget, held back.
    flood_limit: Arc<crate::budget::PerRunnerBudget>,
    /// Job processes found holding capabilities egret cannot hold.
    privileged: Arc<crate::privileged::PrivilegedWatch>,
    /// Job containers, from the Docker API.
    containers: crate::docker::SharedRegistry,
    /// The policy files as last parsed and checked, and each runner's
    /// CIDR entries as last compiled: a reload redoes only what changed.
    policy_cache: policy::PolicyCache,
    cidr_cache: crate::compile::CidrCache,
}

pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    // First of all: a SIGHUP (a reload, a `systemctl reload` racing the
    // start) or SIGTERM that came before the handlers would kill the agent
    // mid-start. Installed now, they wait in the queue until the loop.
    let signal = |kind| {
        tokio::signal::unix::signal(kind)
            .map_err(|e| AgentError::from(IoError::at("install signal handler", PathBuf::new())(e)))
    };
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    release_sighup();
    let systemd = Systemd::from_env();
    if !nix::unistd::geteuid().is_root() {
        return Err(AgentError::NotRoot);
    }
    let cgroup_root = runners::cgroup2_root()?;
    let mut policy_cache = policy::PolicyCache::default();
    let loaded = policy::load_with(&opts.policy, &mut policy_cache)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    for warning in outside_every_hook(std::path::Path::new("/")) {
        tracing::warn!("{warning}");
    }
    std::fs::create_dir_all(&opts.state_dir)
        .map_err(IoError::at("create state directory", &opts.state_dir))?;
    let (datapath, ring) = Datapath::open(opts.pins.clone())?;
    let mut learning = Learning::new(opts.ttl);
    // What the proxy learned before a restart stays until it expires, if
    // the policy is the one it was learned under: the pins do not say which
    // name an address came from, so under another policy nothing tells
    // whether that name is still allowed.
    let previous = AppliedRecord::read(&opts.state_dir).map(|r| r.digest);
    if previous.as_deref() == Some(loaded.digest.as_str()) {
        learning.restore(datapath.learned().map(|(k, v)| (*k, *v)));
    } else if datapath.learned().next().is_some() {
        tracing::info!(
            "the policy changed since the last agent: addresses its jobs resolved are not carried over; they resolve again"
        );
    }
    let learning = SharedLearning::new(learning.into());
    let jobs = Arc::new(crate::jobs::Jobs::default());
    let enricher = Arc::new(Enricher::new(
        cgroup_root.clone(),
        learning.clone(),
        jobs.clone(),
    ));
    let hub = Arc::new(match &opts.events_file {
        Some((path, max_bytes)) => Hub::with_file(
            crate::events::file::EventFile::open(path, *max_bytes)
                .map_err(IoError::at("open the events file", path))?,
        ),
        None => Hub::default(),
    });
    let containers = crate::docker::SharedRegistry::default();
    let shared = dnsproxy::Shared::new(
        learning.clone(),
        &opts.pins,
        hub.clone(),
        cgroup_root.clone(),
        jobs.clone(),
        containers.clone(),
    )?;
    let host_netns = dnsproxy::own_netns_cookie()
        .map_err(|e| IoError::at("read the network namespace cookie of", "/proc/self/ns/net")(e))?;
    let mut agent = Agent {
        opts,
        cgroup_root,
        datapath,
        resolvers: Resolvers::default(),
        learning,
        enricher: enricher.clone(),
        ids: HashMap::new(),
        cgroups: HashMap::new(),
        proxies: Proxies::new(Arc::new(shared))
            .map_err(|e| IoError::at("start the DNS proxy thread", "")(e))?,
        host_netns,
        started: Instant::now(),
        digest: loaded.digest.clone(),
        last_reload: None,
        reloads: (0, 0),
        hub: hub.clone(),
        suppressed_seen: HashMap::new(),
        flood_limit: Arc::new(events::flood_limit()),
        privileged: Arc::default(),
        containers: containers.clone(),
        policy_cache,
        cidr_cache: crate::compile::CidrCache::default(),
    };
    agent.apply(&loaded.policy).await?;
    agent.record_applied(&loaded.files);
    // Only now that this agent's programs hold every runner.
    for dir in crate::datapath::retire_other_abis(&agent.opts.pins)? {
        tracing::warn!(
            pins = %dir.display(),
            "detached and removed the pins another egret version left; its programs enforced a policy no reload reached"
        );
    }

    let listener = control::bind(&agent.opts.socket, agent.opts.socket_group)?;
    let (control_tx, mut control_rx) = tokio::sync::mpsc::channel(16);
    if let Some(addr) = agent.opts.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(IoError::at("listen for metrics on", addr.to_string()))?;
        tracing::info!(%addr, "serving metrics at /metrics");
        tokio::spawn(crate::metrics::serve::serve(
            listener,
            crate::metrics::serve::from_agent(control_tx.clone()),
        ));
    }
    tokio::spawn(control::serve(
        listener,
        hub.clone(),
        control_tx,
        agent.opts.socket_group,
    ));
    // Two pumps: the urgent ring is never queued behind a flood in the
    // bulk one.
    let mut urgent = tokio::spawn(events::pump(
        ring.urgent,
        enricher.clone(),
        hub.clone(),
        None,
    ));
    if let Some(socket) = agent.opts.docker_socket.clone() {
        let ctx = crate::docker::WatchContext {
            socket,
            pins: agent.opts.pins.clone(),
            cgroup_root: agent.cgroup_root.clone(),
            registry: agent.containers.clone(),
            jobs: enricher.jobs().clone(),
            runners: Box::new({
                let enricher = enricher.clone();
                move || enricher.runner_dirs()
            }),
        };
        tokio::spawn(async move {
            if let Err(e) = crate::docker::watch(ctx).await {
                tracing::error!(error = %e, "job containers cannot be followed: their services stay refused");
            }
        });
    }
    let runner_dirs = {
        let enricher = enricher.clone();
        move || enricher.runner_dirs()
    };
    tokio::spawn(crate::privileged::watch(
        agent.privileged.clone(),
        agent.cgroup_root.clone(),
        runner_dirs,
        enricher.jobs().clone(),
        hub.clone(),
    ));
    let mut pump = tokio::spawn(events::pump(
        ring.bulk,
        enricher,
        hub,
        Some(agent.flood_limit.clone()),
    ));
    let mut housekeeping = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut watch = tokio::time::interval(POLICY_POLL);
    let mut watcher = PolicyWatch::new(&agent.opts.policy);
    tracing::info!(
        runners = agent.ids.len(),
        bpffs = %agent.opts.pins.root.display(),
        "egret agent ready"
    );
    systemd.ready(&agent.summary());
    let mut watchdog = systemd.watchdog_interval().map(tokio::time::interval);
    loop {
        let deadline = agent.next_deadline();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                if let Err(e) = agent.refresh().await {
                    tracing::error!(error = %e, "refreshing learned addresses failed");
                }
            }
            _ = hup.recv() => {
                let _ = agent.reload_notified(&systemd).await;
            }
            Some(request) = control_rx.recv() => match request {
                AgentRequest::Status(reply) => {
                    let _ = reply.send(agent.status());
                }
                AgentRequest::Reload(reply) => {
                    let _ = reply.send(agent.reload_notified(&systemd).await);
                }
            },
            _ = async {
                match watchdog.as_mut() {
                    Some(interval) => {
                        interval.tick().await;
                    }
                    None => std::future::pending().await,
                }
            } => systemd.watchdog(),
            _ = housekeeping.tick() => {
                agent.expire_lockdowns();
                agent.report_suppressed();
            }
            _ = watch.tick() => {
                if agent.opts.watch && watcher.changed_and_settled() {
                    tracing::info!("policy files changed");
                    let _ = agent.reload_notified(&systemd).await;
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            res = &mut urgent => return Err(pump_ended("urgent", res, &agent.opts.pins.root)),
            res = &mut pump => return Err(pump_ended("bulk", res, &agent.opts.pins.root)),
        }
    }
    tracing::info!("stopping; programs and maps stay pinned, so enforcement continues");
    systemd.stopping();
    let _ = std::fs::remove_file(&agent.opts.socket);
    Ok(())
}

impl Agent {
    fn learning<R>(&self, f: impl FnOnce(&mut Learning) -> R) -> R {
        f(&mut self.learning.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn next_deadline(&self) -> Instant {
        let cap = Instant::now() + std::time::Duration::from_secs(60);
        self.learning(|l| l.next_deadline())
            .map_or(cap, |d| d.min(cap))
    }

    fn status(&self) -> serde_json::Value {
        let mut s = status::from_pins(
            &self.datapath.maps,
            &self.opts.pins,
            &self.cgroups,
            &self.opts.state_dir,
        );
        s.agent = Some(AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            policy: self.opts.policy.display().to_string(),
            policy_digest: self.digest.clone(),
            last_reload: self.last_reload.clone(),
            reloads_ok: self.reloads.0,
            reloads_failed: self.reloads.1,
            dns: self.proxies.counts(),
            containers: self
                .containers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .summary()
                .into_iter()
                .map(|(runner, name, job, addrs)| status::ContainerStatus {
                    runner,
                    name,
                    job,
                    addrs,
                })
                .collect(),
        });
        for r in &mut s.runners {
            r.dns = self.proxies.counts_of(r.id);
            r.recent_jobs = self.enricher.jobs().recent.of(&r.name);
            r.privileged_processes = self.privileged.of(&r.name);
        }
        serde_json::to_value(s).unwrap_or_default()
    }

    /// Publishes, per runner, how many denials the kernel could not report
    /// since the last look (a full ring buffer): a flood is summarised,
    /// never silently lost.
    fn report_suppressed(&mut self) {
        use egret_common::maps::{counter, counter_index};
        for (name, id) in &self.ids {
            let dropped = self
                .datapath
                .maps
                .counter(counter_index(*id, counter::EVENTS_DROPPED));
            let seen = self.suppressed_seen.entry(*id).or_insert(dropped);
            let held = self.flood_limit.take_refused(*id) + dropped.saturating_sub(*seen);
            *seen = dropped;
            if held > 0 {
                let notice = events::Suppressed::new(name, held);
                events::publish_line(name, &notice, &self.hub);
            }
        }
    }

    fn expire_lockdowns(&mut self) {
        match lockdown::expire(&mut self.datapath.maps, &self.opts.state_dir) {
            Ok(report) => {
                if !report.runners.is_empty() {
                    tracing::warn!(expired = ?report.runners, "lockdown expired");
                }
                for failure in &report.failures {
                    tracing::error!(%failure, "ending an expired lockdown");
                }
            }
            Err(e) => tracing::error!(error = %e, "checking lockdown deadlines failed"),
        }
    }
}

/// An event pump stopped, which it never does while the agent runs: the
/// agent stops too, and its service manager restarts it.
fn pump_ended(
    ring: &str,
    res: Result<std::io::Result<()>, tokio::task::JoinError>,
    bpffs: &std::path::Path,
) -> AgentError {
    match res {
        Ok(Err(e)) => tracing::error!(ring, error = %e, "event stream stopped"),
        Ok(Ok(())) => {}
        Err(e) => tracing::error!(ring, error = %e, "event task failed"),
    }
    IoError::at("read events from", bpffs)(std::io::Error::other("event stream ended")).into()
}
