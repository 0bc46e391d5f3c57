//! What `egret status` reports, assembled from the pinned maps (and, when the
//! agent answers, from what only it knows: policy, uptime, reload results).

use std::{collections::HashMap, path::Path};

use egret_common::{
    maps::{counter, counter_index},
    state::{GLOBAL_RUNNER, flags},
};
use serde::{Deserialize, Serialize};

use crate::{
    clock::monotonic_ns,
    datapath::{Maps, PROGRAMS, Pins},
    lockdown,
};

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Status {
    /// None when no agent answered: the report then comes from the pins alone.
    pub agent: Option<AgentInfo>,
    pub bpffs: String,
    pub lockdown_all: Option<serde_json::Value>,
    pub runners: Vec<RunnerStatus>,
    pub totals: HashMap<String, u64>,
    pub recent_lockdowns: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, Default, Clone)]
pub struct AgentInfo {
    pub version: String,
    pub pid: u32,
    pub uptime_s: f64,
    pub policy: String,
    pub policy_digest: String,
    pub last_reload: Option<ReloadResult>,
    /// Reloads since the agent started (file changes, SIGHUP, `egret
    /// reload`), applied and rejected.
    #[serde(default)]
    pub reloads_ok: u64,
    #[serde(default)]
    pub reloads_failed: u64,
    /// What the DNS proxies did since the agent started.
    #[serde(default)]
    pub dns: DnsCounts,
    /// The CI job containers the agent follows through the Docker API.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Serialize, Deserialize, Default, Clone)]
pub struct ContainerStatus {
    pub runner: String,
    pub name: String,
    /// The CI job its labels name.
    pub job: Option<String>,
    pub addrs: Vec<std::net::IpAddr>,
}

#[derive(Debug, Serialize, Deserialize, Default, Clone)]
pub struct DnsCounts {
    /// Queries for allowed names answered from upstream.
    pub answered: u64,
    /// Queries for names no policy entry allows.
    pub refused: u64,
    /// Queries that got SERVFAIL (upstream unreachable, bad answer) or were
    /// dropped under load.
    pub failed: u64,
    /// Answers dropped by the rebinding guard.
    pub stripped: u64,
    /// Answers refused because their runner holds its whole share of the
    /// learned-address map.
    #[serde(default)]
    pub quota: u64,
}

#[derive(Debug, Serialize, Deserialize, Default, Clone)]
pub struct ReloadResult {
    pub at: String,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct RunnerStatus {
    pub name: String,
    pub id: u32,
    pub cgroup: Option<String>,
    pub mode: String,
    pub lockdown: Option<serde_json::Value>,
    pub programs_attached: usize,
    pub cidr_entries: usize,
    pub learned_entries: usize,
    /// Port of the runner's DNS proxy on 127.0.0.1 and ::1 (and on
    /// `dns.listen`); 0 while none, and then every DNS query is refused.
    #[serde(default)]
    pub dns_proxy_port: u16,
    pub counters: HashMap<String, u64>,
    /// What the runner's DNS proxy did since the agent started (only the
    /// agent knows).
    #[serde(default)]
    pub dns: DnsCounts,
    /// The CI jobs denied lately, with their denial counts (only the agent
    /// knows them).
    #[serde(default)]
    pub recent_jobs: Vec<crate::jobs::RecentJob>,
    /// Job processes holding CAP_NET_RAW, CAP_NET_ADMIN or CAP_SYS_ADMIN
    /// at the agent's last look: outside what egret can hold.
    #[serde(default)]
    pub privileged_processes: Vec<crate::privileged::PrivilegedProcess>,
}

/// Everything the pins tell. `cgroups` maps runner names to their cgroup
/// when known (the agent knows; offline, the state directory may).
pub fn from_pins(
    maps: &Maps,
    pins: &Pins,
    cgroups: &HashMap<String, String>,
    state_dir: &Path,
) -> Status {
    let now = monotonic_ns();
    let mut runners: Vec<RunnerStatus> = maps
        .runner_records()
        .into_iter()
        .map(|(name, rec)| {
            let state = maps.runner_state(rec.id).unwrap_or_default();
            let lock = maps.lockdown_of(rec.id).unwrap_or_default();
            let counters = (0..counter::KINDS)
                .map(|k| {
                    (
                        counter::NAMES[k as usize].to_owned(),
                        maps.counter(counter_index(rec.id, k)),
                    )
                })
                .collect();
            RunnerStatus {
                cgroup: cgroups.get(&name).cloned(),
                mode: if !state.has(flags::CONFIGURED) {
                    "unconfigured (denies everything)".into()
                } else if state.has(flags::AUDIT) {
                    "audit".into()
                } else {
                    "enforce".into()
                },
                lockdown: lockdown::shown(&lock, now).map(to_value),
                programs_attached: PROGRAMS
                    .iter()
                    .filter(|p| pins.runner_links_dir(rec.id).join(p).exists())
                    .count(),
                cidr_entries: maps.count_cidrs(rec.id),
                learned_entries: maps.count_learned(rec.id),
                dns_proxy_port: state.dns_proxy_port,
                counters,
                dns: DnsCounts::default(),
                recent_jobs: Vec::new(),
                privileged_processes: Vec::new(),
                id: rec.id,
                name,
            }
        })
        .collect();
    runners.sort_by_key(|r| r.id);
    let mut totals: HashMap<String, u64> = HashMap::new();
    for r in &runners {
        for (k, v) in &r.counters {
            *totals.entry(k.clone()).or_default() += v;
        }
    }
    Status {
        agent: None,
        bpffs: pins.root.display().to_string(),
        lockdown_all: lockdown::shown(&maps.lockdown_of(GLOBAL_RUNNER).unwrap_or_default(), now)
            .map(to_value),
        runners,
        totals,
        recent_lockdowns: crate::state_dir::AuditEntry::tail(state_dir, 5)
            .iter()
            .map(to_value)
            .collect(),
    }
}

fn to_value<T: Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// The human-readable form.
pub fn render(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match &s.agent {
        Some(a) => {
            let _ = writeln!(
                out,
                "agent:    running, egret {} (pid {}), up {:.0}s",
                a.version, a.pid, a.uptime_s
            );
            let _ = writeln!(out, "policy:   {} ({})", a.policy, a.policy_digest);
            if !a.containers.is_empty() {
                let _ = writeln!(out, "containers (from the Docker API):");
                for c in &a.containers {
                    let _ = writeln!(
                        out,
                        "  {} runner {} job {} at {:?}",
                        c.name,
                        c.runner,
                        c.job.as_deref().unwrap_or("-"),
                        c.addrs
                    );
                }
            }
            let _ = writeln!(
                out,
                "dns:      {} answered, {} refused, {} failed, {} rebinding answers dropped, {} over a runner's quota",
                a.dns.answered, a.dns.refused, a.dns.failed, a.dns.stripped, a.dns.quota
            );
            if let Some(r) = &a.last_reload {
                let _ = writeln!(
                    out,
                    "reload:   {} at {}{}",
                    if r.ok { "applied" } else { "REJECTED" },
                    r.at,
                    r.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
        }
        None => {
            let _ = writeln!(
                out,
                "agent:    not running (enforcement continues from the pins)"
            );
        }
    }
    let _ = writeln!(out, "bpffs:    {}", s.bpffs);
    if let Some(l) = &s.lockdown_all {
        let _ = writeln!(out, "LOCKDOWN: every runner {l}");
    }
    for r in &s.runners {
        let _ = writeln!(
            out,
            "runner {} (id {}): {} cgroup {} mode {}{}",
            r.name,
            r.id,
            if r.programs_attached == PROGRAMS.len() {
                "attached"
            } else {
                "NOT ATTACHED"
            },
            r.cgroup.as_deref().unwrap_or("?"),
            r.mode,
            r.lockdown
                .as_ref()
                .map(|l| format!(" LOCKDOWN {l}"))
                .unwrap_or_default()
        );
        let c = |k: &str| r.counters.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "  dns proxy: {}",
            if r.dns_proxy_port == 0 {
                "none (DNS refused)".to_owned()
            } else {
                format!("port {}", r.dns_proxy_port)
            }
        );
        let _ = writeln!(
            out,
            "  entries: {} cidr, {} learned; allowed {}, denied {} (not_allowed {}, metadata {}, lateral {}, lockdown {}, socket_kind {}, dns {}), audited {}, events dropped {}",
            r.cidr_entries,
            r.learned_entries,
            c("allowed"),
            c("denied_not_allowed")
                + c("denied_metadata")
                + c("denied_lateral")
                + c("denied_lockdown")
                + c("denied_socket_kind")
                + c("denied_dns"),
            c("denied_not_allowed"),
            c("denied_metadata"),
            c("denied_lateral"),
            c("denied_lockdown"),
            c("denied_socket_kind"),
            c("denied_dns"),
            c("audited"),
            c("events_dropped"),
        );
        for p in &r.privileged_processes {
            let _ = writeln!(
                out,
                "  PRIVILEGED pid {} ({}) in {} holds {}: outside what egret can hold{}",
                p.pid,
                p.comm,
                p.cgroup.as_deref().unwrap_or("?"),
                p.capabilities.join(", "),
                p.job
                    .as_ref()
                    .map(|j| format!(" (job {}:{})", j.ci, j.id))
                    .unwrap_or_default()
            );
        }
        for j in r.recent_jobs.iter().rev() {
            let _ = writeln!(
                out,
                "  job {}:{}{}{}: {} denied, last at {}",
                j.job.ci,
                j.job.id,
                j.job
                    .project
                    .as_deref()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default(),
                j.job
                    .name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                j.denials,
                j.last
            );
        }
    }
    if !s.recent_lockdowns.is_empty() {
        let _ = writeln!(out, "recent lockdown actions:");
        for e in &s.recent_lockdowns {
            let _ = writeln!(
                out,
                "  {} {} {} by {}{}",
                e["time"].as_str().unwrap_or(""),
                e["action"].as_str().unwrap_or(""),
                e["runners"],
                e["user"].as_str().unwrap_or(""),
                e["reason"]
                    .as_str()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
    }
    out
}
