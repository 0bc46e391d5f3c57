//! Job processes holding a capability that puts them outside what egret can
//! hold: CAP_NET_RAW (an AF_PACKET socket sends frames no socket hook sees),
//! CAP_NET_ADMIN (reconfigures the network under the hooks) and
//! CAP_SYS_ADMIN (can leave the cgroup, or detach programs). A root job in
//! a default Docker container holds CAP_NET_RAW.
//!
//! The agent looks through each runner's processes every
//! [`SCAN_INTERVAL`] and reports every new one it finds: one
//! `privileged_job` event per process, and the current list in
//! `egret status`. It does not stop them; it tells the operator which jobs
//! run outside the boundary so the runner's settings can be fixed (drop the
//! capabilities, no privileged containers).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use egret_common::event::{hook, reason};
use serde::{Deserialize, Serialize};

use crate::{
    events::{EventRecord, Hub},
    jobs::{JobIdentity, Jobs, Wanted},
    runners,
};

pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Processes looked at per runner and scan at most, so a job forking
/// without end cannot make the agent spin.
const MAX_PROCESSES: usize = 4096;
/// Cgroups walked per runner and scan at most.
const MAX_CGROUPS: usize = 1024;

/// The capabilities watched for, by bit number (linux/capability.h).
const WATCHED: [(u32, &str); 3] = [
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
    (21, "CAP_SYS_ADMIN"),
];

/// The watched capabilities in a `/proc/<pid>/status` text's effective set.
pub fn watched_capabilities(status: &str) -> Vec<&'static str> {
    let Some(effective) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return Vec::new();
    };
    WATCHED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// One process found holding a watched capability.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrivilegedProcess {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    pub capabilities: Vec<String>,
    pub job: Option<JobIdentity>,
}

/// A runner to look through: its name and cgroup directory.
pub type RunnerDirs = Vec<(String, PathBuf)>;

/// What the scans found, per runner, and which processes were reported.
#[derive(Default)]
pub struct PrivilegedWatch {
    current: Mutex<HashMap<String, Vec<PrivilegedProcess>>>,
    /// (runner, pid, start time) of every process reported, so each is
    /// reported once while it lives.
    reported: Mutex<HashSet<(String, u32, u64)>>,
}

impl PrivilegedWatch {
    /// The processes found in a runner's cgroup at the last scan.
    pub fn of(&self, runner: &str) -> Vec<PrivilegedProcess> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(runner)
            .cloned()
            .unwrap_or_default()
    }

    /// Looks through every runner's processes (slow: call off the async
    /// runtime) and returns the events for the processes not reported yet.
    pub fn scan(&self, cgroup_root: &Path, runners: &RunnerDirs, jobs: &Jobs) -> Vec<EventRecord> {
        let now = Instant::now();
        let mut found_now = HashMap::new();
        let mut alive = HashSet::new();
        let mut events = Vec::new();
        for (name, dir) in runners {
            let runner_cgroup = runners::relative(cgroup_root, dir);
            let mut found = Vec::new();
            for (pid, cgroup_dir) in processes(dir) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    continue;
                };
                let caps = watched_capabilities(&status);
                if caps.is_empty() {
                    continue;
                }
                let comm = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Name:"))
                    .map_or_else(String::new, |c| c.trim().to_owned());
                let cgroup_id = runners::cgroup_id(&cgroup_dir).unwrap_or(0);
                let job = runner_cgroup.as_ref().and_then(|rc| {
                    jobs.resolve(
                        &Wanted {
                            pid,
                            cgroup_id,
                            runner_cgroup: rc.clone(),
                        },
                        now,
                    )
                });
                let process = PrivilegedProcess {
                    pid,
                    comm,
                    cgroup: runners::relative(cgroup_root, &cgroup_dir),
                    capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
                    job,
                };
                let key = (name.clone(), pid, start_time(pid));
                alive.insert(key.clone());
                let new = self
                    .reported
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key);
                if new {
                    events.push(record(name, &process, cgroup_id));
                }
                found.push(process);
            }
            found_now.insert(name.clone(), found);
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = found_now;
        // Forget the processes that are gone, so the set stays bounded.
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k| alive.contains(k));
        events
    }
}

/// The processes in the cgroup tree at `dir`, each with its cgroup; bounded.
fn processes(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out = Vec::new();
    runners::walk_cgroups(dir, MAX_CGROUPS, |d| {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .take(MAX_PROCESSES.saturating_sub(out.len()))
                    .map(|pid| (pid, d.to_owned())),
            );
        }
        (out.len() >= MAX_PROCESSES).then_some(())
    });
    out
}

/// The process's start time in clock ticks (field 22 of its stat), which
/// tells a reused pid from the process first seen with it.
fn start_time(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name may hold spaces and parentheses: count from
            // the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(0)
}

fn record(runner: &str, p: &PrivilegedProcess, cgroup_id: u64) -> EventRecord {
    EventRecord {
        schema: crate::events::SCHEMA,
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        runner: runner.to_owned(),
        cgroup: p.cgroup.clone(),
        cgroup_id,
        pid: p.pid,
        comm: p.comm.clone(),
        family: "none".into(),
        proto: "none".into(),
        dst: None,
        port: 0,
        socket_type: None,
        socket_option: None,
        capabilities: Some(p.capabilities.clone()),
        host: None,
        answers: None,
        reason: reason::name(reason::PRIVILEGED_JOB).into(),
        action: "report".into(),
        hook: hook::name(hook::PROCESS_SCAN).into(),
        job: p.job.clone(),
    }
}

/// Scans every [`SCAN_INTERVAL`] until dropped, publishing what is new.
pub async fn watch(
    watch: Arc<PrivilegedWatch>,
    cgroup_root: PathBuf,
    runners: impl Fn() -> RunnerDirs + Send + 'static,
    jobs: Arc<Jobs>,
    hub: Arc<Hub>,
) {
    let mut tick = tokio::time::interval(SCAN_INTERVAL);
    loop {
        tick.tick().await;
        let (watch, root, dirs, jobs) =
            (watch.clone(), cgroup_root.clone(), runners(), jobs.clone());
        let Ok(events) = tokio::task::spawn_blocking(move || watch.scan(&root, &dirs, &jobs)).await
        else {
            continue;
        };
        for ev in &events {
            tracing::warn!(
                runner = %ev.runner,
                pid = ev.pid,
                comm = %ev.comm,
                capabilities = ?ev.capabilities,
                "a job process holds capabilities that put it outside what egret can hold"
            );
            crate::events::publish(ev, &hub);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read_bit_by_bit() {
        // Docker's default set: NET_RAW among them, NET_ADMIN and SYS_ADMIN not.
        let docker_default = "Name:\tsh\nCapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\n";
        assert_eq!(watched_capabilities(docker_default), vec!["CAP_NET_RAW"]);
        let root = "CapEff:\t000001ffffffffff\n";
        assert_eq!(
            watched_capabilities(root),
            vec!["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"]
        );
        assert!(watched_capabilities("CapEff:\t0000000000000000\n").is_empty());
        assert!(watched_capabilities("Name:\tx\n").is_empty());
    }
}
