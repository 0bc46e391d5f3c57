//! Drains the kernel's event ring buffer, attributes each record (runner,
//! job cgroup, hostname) and writes it as one JSON object per line, to
//! stdout and to every subscriber of the [`Hub`].

pub mod file;
mod hub;

use std::{
    borrow::Cow,
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use egret_common::{
    addr,
    event::{Event, action, hook, reason},
    rules::proto,
};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

pub use hub::{EventLine, Hub};

use crate::{
    budget::PerRunnerBudget,
    clock::monotonic_ns,
    compile,
    jobs::{JobIdentity, Jobs, LOOKUP_WAIT, Wanted},
    learned::SharedLearning,
    runners,
};

/// Cgroup paths remembered by id; past this many the memory starts over,
/// so a job making cgroups without end cannot grow the agent.
const CGROUP_PATHS_KEPT: usize = 16_384;
/// Records drained from the ring buffer before they are written out: the
/// agent's memory stays bounded however fast denials come.
const BATCH: usize = 256;
/// Processes looked up in `/proc` for one batch at most; the other events
/// of a batch go out with what the cache knows.
const LOOKUPS_PER_BATCH: usize = 32;

/// Names what an event's ids stand for. Each lock here is held for one
/// lookup only; the slow part, a walk of the cgroup tree for a new job
/// cgroup, runs with no lock held, so neither the DNS proxy (which shares
/// the learned addresses) nor the agent loop ever waits for it.
pub struct Enricher {
    cgroup_root: PathBuf,
    /// Runner id → (name, cgroup directory), replaced on every apply.
    runners: RwLock<HashMap<u32, (String, PathBuf)>>,
    cgroup_paths: Mutex<HashMap<u64, String>>,
    learning: SharedLearning,
    /// Finds a cgroup by id below a runner's directory: the tree walk.
    walk: CgroupWalk,
    jobs: Arc<Jobs>,
}

/// (cgroup2 root, where to start, cgroup id) → the cgroup's path.
type CgroupWalk = Box<dyn Fn(&Path, &Path, u64) -> Option<String> + Send + Sync>;

impl Enricher {
    pub fn new(cgroup_root: PathBuf, learning: SharedLearning, jobs: Arc<Jobs>) -> Self {
        Self {
            cgroup_root,
            runners: RwLock::default(),
            cgroup_paths: Mutex::default(),
            learning,
            walk: Box::new(runners::find_by_id),
            jobs,
        }
    }

    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// What a `/proc` lookup for `ev`'s job needs, or `None` when the cache
    /// already knows.
    fn job_lookup(&self, ev: &Event, now: std::time::Instant) -> Option<Wanted> {
        if ev.pid == 0 || self.jobs.cache.cached(ev.pid, ev.cgroup_id, now).is_some() {
            return None;
        }
        let (_, dir) = self.runner(ev.runner)?;
        Some(Wanted {
            pid: ev.pid,
            cgroup_id: ev.cgroup_id,
            runner_cgroup: runners::relative(&self.cgroup_root, &dir)?,
        })
    }

    fn job_of(&self, ev: &Event, now: std::time::Instant) -> Option<JobIdentity> {
        self.jobs
            .cache
            .cached(ev.pid, ev.cgroup_id, now)
            .unwrap_or_else(|| self.jobs.cache.of_cgroup(ev.cgroup_id, now))
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    pub fn set_runners(&self, runners: HashMap<u32, (String, PathBuf)>) {
        *self.runners.write().unwrap_or_else(|e| e.into_inner()) = runners;
    }

    /// Every runner's name and cgroup directory.
    pub fn runner_dirs(&self) -> Vec<(String, PathBuf)> {
        self.runners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn runner(&self, id: u32) -> Option<(String, PathBuf)> {
        self.runners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn cgroup_path(&self, runner_dir: &Path, id: u64) -> Option<String> {
        let cached = self
            .cgroup_paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        if cached.is_some() {
            return cached;
        }
        let found = (self.walk)(&self.cgroup_root, runner_dir, id)?;
        let mut paths = self.cgroup_paths.lock().unwrap_or_else(|e| e.into_inner());
        if paths.len() >= CGROUP_PATHS_KEPT {
            paths.clear();
        }
        paths.insert(id, found.clone());
        Some(found)
    }

    fn host_for(&self, runner: u32, ip: IpAddr) -> Option<String> {
        self.learning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hosts_for(runner, ip)
    }
}

/// One event line, as the agent writes it and as `egret suggest` and
/// `egret replay` read it back from a recording. Text the agent fills from
/// its own tables is borrowed; read back, it is owned.
/// The version of the event line format. Bumped when a field changes
/// meaning or goes away; new fields may come without a bump.
pub const SCHEMA: u32 = 1;

fn schema() -> u32 {
    SCHEMA
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    /// [`SCHEMA`]; lines written before it existed read as 1.
    #[serde(default = "schema")]
    pub schema: u32,
    /// RFC 3339, UTC.
    pub time: String,
    pub runner: String,
    /// The job's cgroup, relative to the cgroup2 root; the runner's cgroup or
    /// one below it (a container).
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    pub pid: u32,
    pub comm: String,
    pub family: Cow<'static, str>,
    pub proto: String,
    /// None for a refused `socket()`, which has no destination yet.
    pub dst: Option<String>,
    pub port: u16,
    /// For a refused `socket()`: stream, dgram, raw, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_type: Option<Cow<'static, str>>,
    /// For a refused `setsockopt()`: the option, e.g. `IP_ADD_MEMBERSHIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_option: Option<Cow<'static, str>>,
    /// For a `privileged_job` report: the capabilities the process holds
    /// that put it outside what egret can hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// The name this runner resolved to `dst`, if any; for a DNS event,
    /// the name asked.
    pub host: Option<String>,
    /// For a name an audit-mode runner's jobs resolved outside the policy:
    /// what it resolved to, so learn mode can tie the job's connects to
    /// the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<Vec<IpAddr>>,
    pub reason: Cow<'static, str>,
    pub action: Cow<'static, str>,
    pub hook: Cow<'static, str>,
    /// The CI job, when it could be told.
    pub job: Option<JobIdentity>,
}

/// Decodes one ring-buffer record. `None` for a record of the wrong size,
/// which can only come from a mismatched object and is skipped.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is Pod (repr(C), explicit padding); the length is checked
    // and read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// The destination as the job gave it: a v6 socket's mapped address stays v6.
pub fn destination(ev: &Event) -> IpAddr {
    if ev.family == 4 {
        compile::ip_of(ev.addr)
    } else {
        IpAddr::V6(Ipv6Addr::from(ev.addr))
    }
}

/// The address policy was judged on, which `host` attribution is keyed by.
fn judged(ev: &Event) -> IpAddr {
    compile::ip_of(addr::normalize(ev.addr))
}

fn socket_type_name(t: u8) -> &'static str {
    match t {
        1 => "stream",
        2 => "dgram",
        3 => "raw",
        5 => "seqpacket",
        _ => "other",
    }
}

fn sockopt_level_name(level: u8) -> String {
    match i32::from(level) {
        egret_common::sockopt::SOL_IP => "ip".into(),
        egret_common::sockopt::SOL_IPV6 => "ipv6".into(),
        egret_common::sockopt::SOL_TCP => "tcp".into(),
        other => other.to_string(),
    }
}

fn proto_name(p: u8) -> String {
    match p {
        132 => "sctp".into(),
        255 => "mptcp or other".into(),
        proto::IPPROTO_TCP => "tcp".into(),
        proto::IPPROTO_UDP => "udp".into(),
        proto::IPPROTO_ICMP => "icmp".into(),
        proto::IPPROTO_ICMPV6 => "icmpv6".into(),
        other => other.to_string(),
    }
}

pub fn enrich(ev: &Event, enricher: &Enricher, wall_now: SystemTime, mono_now: u64) -> EventRecord {
    let age = Duration::from_nanos(mono_now.saturating_sub(ev.time_ns));
    let time =
        humantime::format_rfc3339_millis(wall_now.checked_sub(age).unwrap_or(wall_now)).to_string();
    let (runner, runner_dir) = enricher
        .runner(ev.runner)
        .unwrap_or_else(|| (format!("#{}", ev.runner), PathBuf::new()));
    let cgroup = enricher.cgroup_path(&runner_dir, ev.cgroup_id);
    // Socket creation and options have no destination yet; a setsockopt
    // event carries the option's level and number in `proto` and `port`.
    let has_destination = ev.hook != hook::SOCK_CREATE && ev.hook != hook::SETSOCKOPT;
    let comm_end = ev
        .comm
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(ev.comm.len());
    EventRecord {
        schema: SCHEMA,
        time,
        runner,
        cgroup,
        cgroup_id: ev.cgroup_id,
        pid: ev.pid,
        comm: String::from_utf8_lossy(&ev.comm[..comm_end]).into_owned(),
        family: if ev.family == 4 { "ipv4" } else { "ipv6" }.into(),
        proto: if ev.hook == hook::SETSOCKOPT {
            sockopt_level_name(ev.proto)
        } else {
            proto_name(ev.proto)
        },
        dst: has_destination.then(|| destination(ev).to_string()),
        port: if has_destination { ev.port } else { 0 },
        socket_type: (ev.hook == hook::SOCK_CREATE).then(|| socket_type_name(ev.sock_type).into()),
        socket_option: (ev.hook == hook::SETSOCKOPT)
            .then(|| egret_common::sockopt::name(i32::from(ev.proto), i32::from(ev.port)).into()),
        capabilities: None,
        host: enricher.host_for(ev.runner, judged(ev)),
        answers: None,
        reason: reason::name(ev.reason).into(),
        action: action::name(ev.action).into(),
        hook: hook::name(ev.hook).into(),
        job: enricher.job_of(ev, std::time::Instant::now()),
    }
}

/// Writes one event the agent itself produced (the DNS proxy's refusals)
/// to stdout and to every follower, as the kernel's events are.
pub fn publish(record: &EventRecord, hub: &Hub) {
    if let Some(line) = line_of(record) {
        write_out(line, hub);
    }
}

/// The line a subscriber gets for `record`, which `egret events` filters by
/// runner and job.
fn line_of(record: &EventRecord) -> Option<EventLine> {
    Some(EventLine {
        runner: record.runner.clone(),
        job: record.job.as_ref().map(|j| j.id.clone()),
        json: serde_json::to_string(record).ok()?,
    })
}

/// Ordinary denials reported one by one per runner and second; past it, a
/// flood is counted and summarised ([`Suppressed`]) instead, so one job
/// cannot flood the log pipeline or the agent's followers. Metadata and
/// lockdown denials are never limited.
pub const EVENTS_PER_SECOND: u32 = 1000;

/// The budget of ordinary events each runner may report one by one.
pub fn flood_limit() -> PerRunnerBudget {
    PerRunnerBudget::new(EVENTS_PER_SECOND)
}

/// A flood's summary: denials of one runner not reported one by one,
/// because they came faster than [`EVENTS_PER_SECOND`] or the kernel's ring
/// buffer was full. They were denied all the same, and counted; the rare
/// kinds (metadata, lockdown) have a ring of their own and are never among
/// them.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Suppressed {
    pub schema: u32,
    pub time: String,
    pub runner: String,
    /// Always `events_suppressed`, so a consumer tells it from a denial.
    pub notice: &'static str,
    /// How many denials went unreported since the last notice.
    pub suppressed: u64,
}

impl Suppressed {
    pub fn new(runner: &str, suppressed: u64) -> Self {
        Self {
            schema: SCHEMA,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            runner: runner.to_owned(),
            notice: "events_suppressed",
            suppressed,
        }
    }
}

/// Writes one line the agent itself produced (the DNS proxy's refusals,
/// flood summaries) to stdout and to every follower, as the kernel's
/// events are.
pub fn publish_line(runner: &str, line: &impl Serialize, hub: &Hub) {
    let Ok(json) = serde_json::to_string(line) else {
        return;
    };
    write_out(
        EventLine {
            runner: runner.to_owned(),
            job: None,
            json,
        },
        hub,
    );
}

/// One line the agent produced itself: to stdout, flushed, then to every
/// follower.
fn write_out(line: EventLine, hub: &Hub) {
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line.json);
        let _ = out.flush();
    }
    hub.publish(line);
}

/// Reads events until the task is dropped. Writes go to stdout, one line per
/// event, flushed after each batch so a pipeline sees denials as they
/// happen.
pub async fn pump(
    ring: RingBuf<MapData>,
    enricher: Arc<Enricher>,
    hub: Arc<Hub>,
    limit: Option<Arc<PerRunnerBudget>>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as the AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let mut guard = fd.readable_mut().await?;
        // Cleared before draining: a record that lands while we drain
        // makes the fd ready again, so none waits for the next one.
        guard.clear_ready();
        let ring = guard.get_inner_mut();
        loop {
            batch.clear();
            while batch.len() < BATCH {
                let Some(item) = ring.next() else { break };
                if let Some(ev) = decode(&item) {
                    batch.push(ev);
                }
            }
            if batch.is_empty() {
                break;
            }
            let now = std::time::Instant::now();
            batch.retain(|ev| limit.as_ref().is_none_or(|l| l.allow(ev.runner, now)));
            look_up_jobs(&batch, &enricher, now).await;
            let wall = SystemTime::now();
            let mono = monotonic_ns();
            let lines: Vec<EventLine> = batch
                .iter()
                .filter_map(|ev| {
                    let record = enrich(ev, &enricher, wall, mono);
                    if let Some(job) = &record.job {
                        enricher.jobs.recent.note(&record.runner, job, &record.time);
                    }
                    line_of(&record)
                })
                .collect();
            let mut out = std::io::stdout().lock();
            for line in lines {
                writeln!(out, "{}", line.json)?;
                hub.publish(line);
            }
            out.flush()?;
        }
    }
}

/// Reads the jobs of a batch's processes that the cache does not know yet,
/// off the runtime, waiting at most [`LOOKUP_WAIT`]: past it the events go
/// out without, and the lookups finish for the events that follow.
async fn look_up_jobs(batch: &[Event], enricher: &Arc<Enricher>, now: std::time::Instant) {
    let mut wanted: Vec<Wanted> = Vec::new();
    for ev in batch {
        if wanted.len() == LOOKUPS_PER_BATCH {
            break;
        }
        if let Some(w) = enricher.job_lookup(ev, now)
            && !wanted.contains(&w)
        {
            wanted.push(w);
        }
    }
    if wanted.is_empty() {
        return;
    }
    let jobs = enricher.jobs.clone();
    let task = tokio::task::spawn_blocking(move || {
        for w in &wanted {
            jobs.cache.look_up(&jobs.proc, w, now);
        }
    });
    let _ = tokio::time::timeout(LOOKUP_WAIT, task).await;
}

#[cfg(test)]
mod tests;
