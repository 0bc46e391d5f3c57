//! Which CI job a process belongs to, for the `job` object of every event
//! and for `egret status`.
//!
//! Shell executors and GitHub runners start a job's processes with the CI
//! system's variables in their environment (`CI_JOB_ID`, `GITHUB_RUN_ID`,
//! ...). The agent reads them from `/proc/<pid>/environ`, walking up the
//! process's parents inside the runner's cgroup when a process dropped them
//! (`env -i`). A job can rewrite its own environment, so such an identity is
//! marked `source: environ`: claimed by the job, not proven.
//!
//! Looking up never holds up an event for long: results are cached per
//! process and per job cgroup, each lookup reads a bounded number of bytes
//! from a bounded number of processes, and the event pump waits for a
//! batch's lookups only [`LOOKUP_WAIT`] before it writes the events without.

mod environ;
mod recent;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

pub use environ::from_environ;
pub use recent::{RecentJob, RecentJobs};

/// How long the event pump waits for a batch's job lookups.
pub const LOOKUP_WAIT: Duration = Duration::from_millis(100);
/// Parents walked up from a process without CI variables.
const MAX_ANCESTORS: usize = 16;
/// Bytes of one process's environment read at most.
const MAX_ENVIRON: u64 = 256 * 1024;
/// How long a process's (or a cgroup's) job is remembered.
const CACHE_FOR: Duration = Duration::from_secs(30);
/// Entries per cache; past it the cache starts over, so a job forking
/// without end cannot grow the agent.
const CACHE_ENTRIES: usize = 16_384;

/// The CI job behind an event, as the `job` object shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobIdentity {
    /// `gitlab` or `github`.
    pub ci: String,
    /// GitLab's job id; GitHub's run id.
    pub id: String,
    /// GitLab's job name; GitHub's job id in the workflow (`GITHUB_JOB`).
    pub name: Option<String>,
    pub url: Option<String>,
    /// `group/project`, or GitHub's `owner/repository`.
    pub project: Option<String>,
    pub pipeline: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub source: Source,
}

/// Where an identity came from, and so how far to trust it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Container labels set by the runner: trusted.
    Labels,
    /// The job's own environment: claimed by the job, which could change it.
    #[default]
    Environ,
}

/// Where processes are read from: `/proc`, or a fake tree in tests.
#[derive(Clone, Debug)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc"),
        }
    }
}

impl ProcFs {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn environ(&self, pid: u32) -> Option<Vec<u8>> {
        use std::io::Read as _;
        let file = std::fs::File::open(self.root.join(pid.to_string()).join("environ")).ok()?;
        let mut bytes = Vec::new();
        file.take(MAX_ENVIRON).read_to_end(&mut bytes).ok()?;
        Some(bytes)
    }

    fn parent(&self, pid: u32) -> Option<u32> {
        let status =
            std::fs::read_to_string(self.root.join(pid.to_string()).join("status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
            .filter(|p| *p > 1)
    }

    /// The process's cgroup v2 path (`0::/a/b`), relative to the root.
    pub fn cgroup(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(self.root.join(pid.to_string()).join("cgroup")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_owned)
    }
}

/// The job of `pid`: its own environment, or the nearest parent's that
/// still lives inside `runner_cgroup` (relative to the cgroup2 root, as
/// `/proc/<pid>/cgroup` shows it).
pub fn job_of(proc: &ProcFs, pid: u32, runner_cgroup: &str) -> Option<JobIdentity> {
    let mut current = pid;
    for _ in 0..MAX_ANCESTORS {
        let cgroup = proc.cgroup(current)?;
        if !within(&cgroup, runner_cgroup) {
            return None;
        }
        if let Some(job) = proc.environ(current).as_deref().and_then(from_environ) {
            return Some(job);
        }
        current = proc.parent(current)?;
    }
    None
}

pub(crate) fn within(cgroup: &str, runner: &str) -> bool {
    let runner = runner.trim_end_matches('/');
    cgroup == runner
        || cgroup
            .strip_prefix(runner)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Jobs remembered by process and by job cgroup.
#[derive(Default)]
pub struct JobCache {
    by_pid: Mutex<HashMap<u32, (Instant, Option<JobIdentity>)>>,
    /// The jobs seen lately in each cgroup: an event whose process is gone
    /// is named after its cgroup's job, but only when one job alone ran
    /// there lately (a shell executor running two jobs at once in one
    /// cgroup could not be told apart).
    by_cgroup: Mutex<HashMap<u64, Vec<(Instant, JobIdentity)>>>,
    /// Container cgroup → the job its runner's labels name: trusted, and
    /// preferred to anything a process's environment claims.
    labelled: Mutex<HashMap<u64, JobIdentity>>,
}

/// A lookup still to make: what one event needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Wanted {
    pub pid: u32,
    pub cgroup_id: u64,
    pub runner_cgroup: String,
}

impl JobCache {
    /// What is known for this process, without reading anything: `None`
    /// when it must be looked up, `Some(None)` when it has no job.
    pub fn cached(&self, pid: u32, cgroup_id: u64, now: Instant) -> Option<Option<JobIdentity>> {
        if let Some(job) = self
            .labelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cgroup_id)
        {
            return Some(Some(job.clone()));
        }
        let by_pid = self.by_pid.lock().unwrap_or_else(|e| e.into_inner());
        match by_pid.get(&pid) {
            Some((at, job)) if now.duration_since(*at) < CACHE_FOR => {
                Some(job.clone().or_else(|| self.of_cgroup(cgroup_id, now)))
            }
            _ => None,
        }
    }

    /// The one job seen lately in `cgroup_id`, if only one was.
    pub fn of_cgroup(&self, cgroup_id: u64, now: Instant) -> Option<JobIdentity> {
        let by_cgroup = self.by_cgroup.lock().unwrap_or_else(|e| e.into_inner());
        let mut lately = by_cgroup
            .get(&cgroup_id)?
            .iter()
            .filter(|(at, _)| now.duration_since(*at) < CACHE_FOR)
            .map(|(_, job)| job);
        let first = lately.next()?;
        lately.all(|j| j == first).then(|| first.clone())
    }

    /// Looks up `wanted` in `/proc` (slow: call off the async runtime) and
    /// remembers the answer.
    pub fn look_up(&self, proc: &ProcFs, wanted: &Wanted, now: Instant) -> Option<JobIdentity> {
        let found = job_of(proc, wanted.pid, &wanted.runner_cgroup);
        self.remember(wanted.pid, wanted.cgroup_id, found.clone(), now);
        found.or_else(|| self.of_cgroup(wanted.cgroup_id, now))
    }

    /// Replaces the jobs known from container labels.
    pub fn set_labelled(&self, jobs: HashMap<u64, JobIdentity>) {
        *self.labelled.lock().unwrap_or_else(|e| e.into_inner()) = jobs;
    }

    pub fn remember(&self, pid: u32, cgroup_id: u64, job: Option<JobIdentity>, now: Instant) {
        {
            let mut by_pid = self.by_pid.lock().unwrap_or_else(|e| e.into_inner());
            if by_pid.len() >= CACHE_ENTRIES {
                by_pid.clear();
            }
            by_pid.insert(pid, (now, job.clone()));
        }
        let Some(job) = job else { return };
        let mut by_cgroup = self.by_cgroup.lock().unwrap_or_else(|e| e.into_inner());
        if by_cgroup.len() >= CACHE_ENTRIES {
            by_cgroup.clear();
        }
        let seen = by_cgroup.entry(cgroup_id).or_default();
        seen.retain(|(at, j)| now.duration_since(*at) < CACHE_FOR && *j != job);
        seen.push((now, job));
    }
}

/// Everything the agent knows of jobs: where to read processes, what it
/// read, and each runner's recent jobs. Shared by the event pumps and the
/// DNS proxies.
#[derive(Default)]
pub struct Jobs {
    pub proc: ProcFs,
    pub cache: JobCache,
    pub recent: RecentJobs,
}

impl Jobs {
    /// The job of `wanted`, from the cache or else from `/proc` (slow: call
    /// off the async runtime).
    pub fn resolve(&self, wanted: &Wanted, now: Instant) -> Option<JobIdentity> {
        match self.cache.cached(wanted.pid, wanted.cgroup_id, now) {
            Some(known) => known,
            None => self.cache.look_up(&self.proc, wanted, now),
        }
    }
}

/// Where the runner's cgroup sits, as `/proc/<pid>/cgroup` names it.
pub fn runner_cgroup_path(cgroup_root: &Path, runner_dir: &Path) -> Option<String> {
    crate::runners::relative(cgroup_root, runner_dir)
}

#[cfg(test)]
mod tests;
