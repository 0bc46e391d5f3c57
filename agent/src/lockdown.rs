//! Incident mode. `egret lockdown` and `egret unlock` flip the pinned
//! lockdown map the kernel programs read on every verdict, so they take effect
//! at once, need no program reload and work with no agent running. Every
//! change is appended to an audit log in the state directory.

use crate::IoError;
use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use egret_common::state::{GLOBAL_RUNNER, Lockdown, lockdown_flags};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{DatapathError, Maps, Pins},
    resolver::monotonic_ns,
    runners,
};

pub const AUDIT_LOG: &str = "lockdown.log";
pub const APPLIED: &str = "agent.json";

#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("no runner named '{name}' is installed (known: {known})")]
    UnknownRunner { name: String, known: String },
    #[error("cannot find the cgroup of runner '{0}' to freeze it")]
    NoCgroup(String),
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error(transparent)]
    Cgroup(#[from] runners::CgroupError),
}

impl LockdownError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::UnknownRunner { .. } => 1,
            _ => 2,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Empty: every runner (the host-wide entry, which also covers runners
    /// added later).
    pub runners: Vec<String>,
    pub keep_forge: bool,
    pub freeze: bool,
    pub reason: Option<String>,
    pub duration: Option<Duration>,
}

/// One line of the audit log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub time: String,
    /// `lockdown`, `unlock` or `expired`.
    pub action: String,
    pub user: String,
    pub uid: u32,
    /// Runner names; `["*"]` for every runner.
    pub runners: Vec<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub duration_s: Option<f64>,
    #[serde(default)]
    pub keep_forge: bool,
    #[serde(default)]
    pub freeze: bool,
    /// Time from the command's start until the kernel maps held the change.
    #[serde(default)]
    pub took_us: Option<u64>,
}

/// What a lockdown or unlock did.
#[derive(Debug, Serialize)]
pub struct Report {
    pub runners: Vec<String>,
    pub frozen: Vec<String>,
    pub thawed: Vec<String>,
    pub took: Duration,
}

#[derive(Clone)]
struct Target {
    name: String,
    id: u32,
    cgroup_id: u64,
}

impl Target {
    /// The host-wide entry, which covers every runner.
    fn every_runner() -> Self {
        Self {
            name: "*".into(),
            id: GLOBAL_RUNNER,
            cgroup_id: 0,
        }
    }

    fn installed(maps: &Maps) -> Vec<Self> {
        maps.runner_records()
            .into_iter()
            .map(|(name, r)| Self {
                name,
                id: r.id,
                cgroup_id: r.cgroup_id,
            })
            .collect()
    }
}

fn targets(maps: &Maps, names: &[String]) -> Result<Vec<Target>, LockdownError> {
    if names.is_empty() {
        return Ok(vec![Target::every_runner()]);
    }
    let installed = Target::installed(maps);
    names
        .iter()
        .map(|name| {
            installed
                .iter()
                .find(|t| &t.name == name)
                .cloned()
                .ok_or_else(|| LockdownError::UnknownRunner {
                    name: name.clone(),
                    known: known(&installed),
                })
        })
        .collect()
}

fn known(installed: &[Target]) -> String {
    if installed.is_empty() {
        return "none".into();
    }
    let mut names: Vec<&str> = installed.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    names.join(", ")
}

/// Puts runners (or all of them) under lockdown.
pub fn lockdown(pins: &Pins, state_dir: &Path, req: &Request) -> Result<Report, LockdownError> {
    let started = Instant::now();
    let mut maps = Maps::from_pins(pins)?;
    let targets = targets(&maps, &req.runners)?;
    let now = monotonic_ns();
    let mut flags = lockdown_flags::ACTIVE;
    if req.keep_forge {
        flags |= lockdown_flags::KEEP_FORGE;
    }
    if req.freeze {
        flags |= lockdown_flags::FROZE;
    }
    let entry = Lockdown {
        flags,
        _pad: 0,
        since_ns: now,
        until_ns: req.duration.map_or(0, |d| now + d.as_nanos() as u64),
    };
    for t in &targets {
        maps.set_lockdown(t.id, entry)?;
    }
    let took = started.elapsed();

    let mut frozen = Vec::new();
    if req.freeze {
        for dir in cgroups_of(&maps, state_dir, &targets)? {
            write_freeze(&dir, true)?;
            frozen.push(dir.display().to_string());
        }
    }
    let report = Report {
        runners: targets.iter().map(|t| t.name.clone()).collect(),
        frozen,
        thawed: Vec::new(),
        took,
    };
    append_audit(
        state_dir,
        &AuditEntry {
            action: "lockdown".into(),
            runners: report.runners.clone(),
            reason: req.reason.clone(),
            duration_s: req.duration.map(|d| d.as_secs_f64()),
            keep_forge: req.keep_forge,
            freeze: req.freeze,
            took_us: Some(took.as_micros() as u64),
            ..AuditEntry::now("")
        },
    );
    Ok(report)
}

/// Ends lockdowns: of the named runners, or every lockdown (host-wide and
/// per runner) when none is named. Thaws what a lockdown froze.
pub fn unlock(pins: &Pins, state_dir: &Path, names: &[String]) -> Result<Report, LockdownError> {
    let started = Instant::now();
    let mut maps = Maps::from_pins(pins)?;
    let mut targets = targets(&maps, names)?;
    if names.is_empty() {
        targets.extend(Target::installed(&maps));
    }
    let mut to_thaw = Vec::new();
    for t in &targets {
        let old = maps.lockdown_of(t.id)?;
        if old.flags & lockdown_flags::FROZE != 0 {
            to_thaw.push(t.clone());
        }
        maps.set_lockdown(t.id, Lockdown::default())?;
    }
    let took = started.elapsed();
    let mut thawed = Vec::new();
    for dir in cgroups_of(&maps, state_dir, &to_thaw).unwrap_or_default() {
        if write_freeze(&dir, false).is_ok() {
            thawed.push(dir.display().to_string());
        }
    }
    let report = Report {
        runners: if names.is_empty() {
            vec!["*".into()]
        } else {
            names.to_vec()
        },
        frozen: Vec::new(),
        thawed,
        took,
    };
    append_audit(
        state_dir,
        &AuditEntry {
            action: "unlock".into(),
            runners: report.runners.clone(),
            took_us: Some(took.as_micros() as u64),
            ..AuditEntry::now("")
        },
    );
    Ok(report)
}

/// Lockdowns that passed their `--for` deadline: the kernel already ignores
/// them; this clears the entries, thaws what they froze and logs it. The
/// agent calls it periodically.
pub fn expire(maps: &mut Maps, state_dir: &Path) -> Result<Vec<String>, LockdownError> {
    let now = monotonic_ns();
    let mut expired = Vec::new();
    let mut all = vec![Target::every_runner()];
    all.extend(Target::installed(maps));
    let mut thaw = Vec::new();
    for t in all {
        let l = maps.lockdown_of(t.id)?;
        if l.flags & lockdown_flags::ACTIVE != 0 && !l.in_force(now) {
            maps.set_lockdown(t.id, Lockdown::default())?;
            expired.push(t.name.clone());
            if l.flags & lockdown_flags::FROZE != 0 {
                thaw.push(t);
            }
        }
    }
    for dir in cgroups_of(maps, state_dir, &thaw).unwrap_or_default() {
        let _ = write_freeze(&dir, false);
    }
    if !expired.is_empty() {
        append_audit(
            state_dir,
            &AuditEntry {
                action: "expired".into(),
                runners: expired.clone(),
                ..AuditEntry::now("egret agent")
            },
        );
    }
    Ok(expired)
}

/// The cgroup directories of the targets; the host-wide target stands for
/// every installed runner. Paths come from what the agent recorded and are
/// checked against the pinned cgroup id; failing that, the tree is searched.
fn cgroups_of(
    maps: &Maps,
    state_dir: &Path,
    targets: &[Target],
) -> Result<Vec<PathBuf>, LockdownError> {
    let root = runners::cgroup2_root()?;
    let recorded = recorded_cgroups(state_dir);
    let expanded = if targets.iter().any(|t| t.id == GLOBAL_RUNNER) {
        Target::installed(maps)
    } else {
        targets.to_vec()
    };
    let mut dirs = Vec::new();
    for t in expanded {
        let from_record = recorded
            .get(&t.name)
            .map(|rel| runners::cgroup_dir(&root, rel))
            .filter(|dir| runners::cgroup_id(dir).is_ok_and(|id| id == t.cgroup_id));
        let dir = from_record
            .or_else(|| {
                runners::find_by_id(&root, &root, t.cgroup_id)
                    .map(|rel| runners::cgroup_dir(&root, &rel))
            })
            .ok_or_else(|| LockdownError::NoCgroup(t.name.clone()))?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Runner name → cgroup (as the policy names it), as the agent last
/// recorded in the state directory; empty when it never ran there.
pub fn recorded_cgroups(state_dir: &Path) -> HashMap<String, String> {
    let Ok(bytes) = std::fs::read(state_dir.join(APPLIED)) else {
        return HashMap::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    v["runners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_owned(),
                r["cgroup"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn write_freeze(dir: &Path, frozen: bool) -> Result<(), LockdownError> {
    let path = dir.join("cgroup.freeze");
    std::fs::write(&path, if frozen { "1" } else { "0" }).map_err(IoError::at("write", &path))?;
    Ok(())
}

impl AuditEntry {
    fn now(user: &str) -> Self {
        let uid = nix::unistd::getuid().as_raw();
        let user = if user.is_empty() {
            invoking_user(uid)
        } else {
            user.to_owned()
        };
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            action: String::new(),
            user,
            uid,
            runners: Vec::new(),
            reason: None,
            duration_s: None,
            keep_forge: false,
            freeze: false,
            took_us: None,
        }
    }
}

/// The account name, and the one sudo was run from when there is one.
fn invoking_user(uid: u32) -> String {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    match std::env::var("SUDO_USER") {
        Ok(sudo) if !sudo.is_empty() && sudo != name => format!("{sudo} (via sudo as {name})"),
        _ => name,
    }
}

/// Best effort: a full disk must not stop an incident response.
fn append_audit(state_dir: &Path, entry: &AuditEntry) {
    let path = state_dir.join(AUDIT_LOG);
    let result = std::fs::create_dir_all(state_dir).and_then(|()| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
        writeln!(f, "{line}")
    });
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot append to the lockdown audit log");
    }
}

/// The last `n` audit entries, oldest first.
pub fn audit_tail(state_dir: &Path, n: usize) -> Vec<AuditEntry> {
    let text = std::fs::read_to_string(state_dir.join(AUDIT_LOG)).unwrap_or_default();
    let entries: Vec<AuditEntry> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let skip = entries.len().saturating_sub(n);
    entries.into_iter().skip(skip).collect()
}

/// A lockdown as `status` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Shown {
    pub keep_forge: bool,
    pub froze: bool,
    pub for_s: f64,
    /// Seconds left; None for a lockdown without `--for`.
    pub remaining_s: Option<f64>,
}

pub fn shown(l: &Lockdown, now: u64) -> Option<Shown> {
    l.in_force(now).then(|| Shown {
        keep_forge: l.keeps_forge(),
        froze: l.flags & lockdown_flags::FROZE != 0,
        for_s: Duration::from_nanos(now.saturating_sub(l.since_ns)).as_secs_f64(),
        remaining_s: (l.until_ns != 0)
            .then(|| Duration::from_nanos(l.until_ns.saturating_sub(now)).as_secs_f64()),
    })
}
