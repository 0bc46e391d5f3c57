//! Everything egret keeps in its state directory (`--state-dir`, default
//! `/var/lib/egret`), as typed records written and read by the same code:
//! - `agent.json`: which agent applied which policy to which runners and
//!   their cgroups, so `status`, `lockdown --freeze` and `unlock` know the
//!   cgroups with no agent running;
//! - `lockdown.log`: the audit log of lockdowns, unlocks and expiries, one
//!   JSON object per line.
//!
//! Neither is needed for enforcement, which lives in the pins.

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::IoError;

pub const APPLIED: &str = "agent.json";
pub const AUDIT_LOG: &str = "lockdown.log";

/// `agent.json`: the policy the agent last applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AppliedRecord {
    pub pid: u32,
    pub version: String,
    /// RFC 3339.
    pub applied_at: String,
    pub policy: PathBuf,
    /// `sha256:` over the policy's files, as `egret status` shows it: a
    /// restarted agent carries the DNS-learned addresses over only when
    /// its policy is this one.
    #[serde(default)]
    pub digest: String,
    pub files: Vec<PathBuf>,
    pub bpffs: PathBuf,
    pub runners: Vec<AppliedRunner>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AppliedRunner {
    pub name: String,
    pub id: u32,
    /// As the policy names it, relative to the cgroup2 root.
    pub cgroup: String,
}

impl AppliedRecord {
    /// Written to a temporary file and renamed, so a reader never sees half
    /// of it.
    pub fn write(&self, state_dir: &Path) -> Result<(), IoError> {
        let path = state_dir.join(APPLIED);
        let tmp = state_dir.join(format!("{APPLIED}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| IoError {
            op: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, bytes).map_err(IoError::at("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(IoError::at("rename", &tmp))
    }

    /// `None` when the agent never ran with this state directory, or the
    /// file is not one this egret wrote.
    pub fn read(state_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(state_dir.join(APPLIED)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Runner name → cgroup, as the policy names it.
    pub fn cgroups(&self) -> HashMap<String, String> {
        self.runners
            .iter()
            .map(|r| (r.name.clone(), r.cgroup.clone()))
            .collect()
    }
}

/// Runner name → cgroup as the agent last recorded it; empty when it never
/// ran with this state directory.
pub fn recorded_cgroups(state_dir: &Path) -> HashMap<String, String> {
    AppliedRecord::read(state_dir)
        .map(|r| r.cgroups())
        .unwrap_or_default()
}

/// One line of the lockdown audit log.
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
    /// What went wrong after the change was in force (a freeze or thaw
    /// that failed): the lockdown itself held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

impl AuditEntry {
    pub fn append(&self, state_dir: &Path) -> Result<(), IoError> {
        let path = state_dir.join(AUDIT_LOG);
        std::fs::create_dir_all(state_dir).map_err(IoError::at("create", state_dir))?;
        let mut line = serde_json::to_string(self).map_err(|e| IoError {
            op: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push('\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(IoError::at("append to", &path))
    }

    /// The last `n` entries, oldest first.
    pub fn tail(state_dir: &Path, n: usize) -> Vec<Self> {
        let text = std::fs::read_to_string(state_dir.join(AUDIT_LOG)).unwrap_or_default();
        let entries: Vec<Self> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let skip = entries.len().saturating_sub(n);
        entries.into_iter().skip(skip).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_applied_record_round_trips_with_each_runners_cgroup() {
        let dir = std::env::temp_dir().join(format!("egret-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let record = AppliedRecord {
            pid: 7,
            version: "0.1.0".into(),
            runners: vec![AppliedRunner {
                name: "ci".into(),
                id: 1,
                cgroup: "/egret.slice/ci".into(),
            }],
            ..Default::default()
        };
        record.write(&dir).unwrap();
        assert_eq!(AppliedRecord::read(&dir).as_ref(), Some(&record));
        assert_eq!(
            recorded_cgroups(&dir).get("ci").map(String::as_str),
            Some("/egret.slice/ci")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn audit_entries_append_and_tail() {
        let dir = std::env::temp_dir().join(format!("egret-audit-{}", std::process::id()));
        let entry = |action: &str| AuditEntry {
            time: "t".into(),
            action: action.into(),
            user: "root".into(),
            uid: 0,
            runners: vec!["*".into()],
            reason: None,
            duration_s: None,
            keep_forge: false,
            freeze: true,
            took_us: None,
            failures: vec!["freeze /x: No such file".into()],
        };
        for a in ["lockdown", "unlock", "expired"] {
            entry(a).append(&dir).unwrap();
        }
        let tail = AuditEntry::tail(&dir, 2);
        assert_eq!(tail, vec![entry("unlock"), entry("expired")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
