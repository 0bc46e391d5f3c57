//! Incident mode. `egret lockdown` and `egret unlock` flip the pinned
//! lockdown map the kernel programs read on every verdict, so they take effect
//! at once, need no program reload and work with no agent running. Every
//! change is appended to an audit log in the state directory, together with
//! anything that failed after it took effect (a freeze or thaw): the
//! lockdown itself is never held up or undone by those.

mod held;
mod keep_forge;
mod sock_diag;
mod sockets;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use egret_common::state::{GLOBAL_RUNNER, Lockdown, lockdown_flags};
use serde::Serialize;

use crate::{
    IoError,
    clock::monotonic_ns,
    datapath::{DatapathError, Maps, Pins},
    runners,
    state_dir::{self, AuditEntry},
};

#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("no runner named '{name}' is installed (known: {known})")]
    UnknownRunner { name: String, known: String },
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

/// What a lockdown or unlock did.
#[derive(Debug, Serialize)]
pub struct Report {
    pub runners: Vec<String>,
    pub frozen: Vec<String>,
    pub thawed: Vec<String>,
    /// Connections the lockdown ended, and those `--keep-forge` kept.
    pub connections_ended: usize,
    pub connections_kept: usize,
    /// Why the kernel's socket tables were walked to find the jobs'
    /// sockets, where they were (slower: the walk visits the whole table).
    pub walked: Option<String>,
    pub took: Duration,
    /// What failed after the change took effect: a cgroup that could not
    /// be found, frozen or thawed, an audit entry that could not be
    /// written. Every one is also in the audit log where the log works.
    pub failures: Vec<String>,
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

    let mut failures = Vec::new();
    // New connections meet the lockdown in the kernel from here on; what
    // the jobs already have open ends now, not at its own timeout.
    // (A runner whose cgroup is gone has no job left to hold a socket.)
    let dirs: Vec<(u32, PathBuf)> = cgroups_of(&maps, state_dir, &targets)
        .into_iter()
        .filter_map(|(id, dir)| dir.ok().map(|d| (id, d)))
        .collect();
    let cgroups = sockets::RunnerCgroups::new(&dirs);
    let keep_forge = req.keep_forge;
    let ended = sockets::end(&cgroups, &|runner, socket| {
        keep_forge && keep_forge::still_allowed(&maps, runner, socket)
    });
    failures.extend(
        ended
            .failures
            .iter()
            .map(|f| format!("end connections: {f}")),
    );
    let frozen = if req.freeze {
        set_frozen(&maps, state_dir, &targets, true, &mut failures)
    } else {
        Vec::new()
    };
    let runners: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    record(
        state_dir,
        AuditEntry {
            action: "lockdown".into(),
            runners: runners.clone(),
            reason: req.reason.clone(),
            duration_s: req.duration.map(|d| d.as_secs_f64()),
            keep_forge: req.keep_forge,
            freeze: req.freeze,
            took_us: Some(took.as_micros() as u64),
            failures: failures.clone(),
            ..AuditEntry::now("")
        },
        &mut failures,
    );
    Ok(Report {
        runners,
        frozen,
        thawed: Vec::new(),
        connections_ended: ended.destroyed,
        connections_kept: ended.kept,
        walked: ended.walked,
        took,
        failures,
    })
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
    let mut failures = Vec::new();
    let thawed = set_frozen(&maps, state_dir, &to_thaw, false, &mut failures);
    let runners = if names.is_empty() {
        vec!["*".into()]
    } else {
        names.to_vec()
    };
    record(
        state_dir,
        AuditEntry {
            action: "unlock".into(),
            runners: runners.clone(),
            took_us: Some(took.as_micros() as u64),
            failures: failures.clone(),
            ..AuditEntry::now("")
        },
        &mut failures,
    );
    Ok(Report {
        runners,
        frozen: Vec::new(),
        thawed,
        connections_ended: 0,
        connections_kept: 0,
        walked: None,
        took,
        failures,
    })
}

/// Lockdowns that passed their `--for` deadline: the kernel already ignores
/// them; this clears the entries, thaws what they froze and logs it. The
/// agent calls it periodically.
pub fn expire(maps: &mut Maps, state_dir: &Path) -> Result<Report, LockdownError> {
    let started = Instant::now();
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
    let mut failures = Vec::new();
    let thawed = set_frozen(maps, state_dir, &thaw, false, &mut failures);
    if !expired.is_empty() {
        record(
            state_dir,
            AuditEntry {
                action: "expired".into(),
                runners: expired.clone(),
                failures: failures.clone(),
                ..AuditEntry::now("egret agent")
            },
            &mut failures,
        );
    }
    Ok(Report {
        runners: expired,
        frozen: Vec::new(),
        thawed,
        connections_ended: 0,
        connections_kept: 0,
        walked: None,
        took: started.elapsed(),
        failures,
    })
}

/// Freezes or thaws the cgroups of `targets`, going on past failures,
/// which are added to `failures`. Returns the directories it changed.
fn set_frozen(
    maps: &Maps,
    state_dir: &Path,
    targets: &[Target],
    frozen: bool,
    failures: &mut Vec<String>,
) -> Vec<String> {
    let verb = if frozen { "freeze" } else { "thaw" };
    let mut done = Vec::new();
    for (_, found) in cgroups_of(maps, state_dir, targets) {
        let result = found.and_then(|dir| {
            let path = dir.join("cgroup.freeze");
            std::fs::write(&path, if frozen { "1" } else { "0" })
                .map(|()| dir.display().to_string())
                .map_err(|e| IoError::at("write", &path)(e).to_string())
        });
        match result {
            Ok(dir) => done.push(dir),
            Err(why) => failures.push(format!("{verb}: {why}")),
        }
    }
    done
}

/// Appends to the audit log; a log that cannot be written is one more
/// failure to report, never a reason to undo what was done.
fn record(state_dir: &Path, entry: AuditEntry, failures: &mut Vec<String>) {
    if let Err(e) = entry.append(state_dir) {
        tracing::warn!(error = %e, "cannot append to the lockdown audit log");
        failures.push(format!("audit log: {e}"));
    }
}

/// The cgroup directory of each target, or why it cannot be found; the
/// host-wide target stands for every installed runner. Paths come from
/// what the agent recorded and are checked against the pinned cgroup id;
/// failing that, the tree is searched.
fn cgroups_of(
    maps: &Maps,
    state_dir: &Path,
    targets: &[Target],
) -> Vec<(u32, Result<PathBuf, String>)> {
    let root = match runners::cgroup2_root() {
        Ok(root) => root,
        Err(e) => return vec![(GLOBAL_RUNNER, Err(e.to_string()))],
    };
    let recorded = state_dir::recorded_cgroups(state_dir);
    let expanded = if targets.iter().any(|t| t.id == GLOBAL_RUNNER) {
        Target::installed(maps)
    } else {
        targets.to_vec()
    };
    expanded
        .into_iter()
        .map(|t| {
            let dir = recorded
                .get(&t.name)
                .map(|rel| runners::cgroup_dir(&root, rel))
                .filter(|dir| runners::cgroup_id(dir).is_ok_and(|id| id == t.cgroup_id))
                .or_else(|| {
                    runners::find_by_id(&root, &root, t.cgroup_id)
                        .map(|rel| runners::cgroup_dir(&root, &rel))
                })
                .ok_or_else(|| {
                    format!(
                        "the cgroup of runner '{}' (id {}) is gone",
                        t.name, t.cgroup_id
                    )
                });
            (t.id, dir)
        })
        .collect()
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
            failures: Vec::new(),
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
