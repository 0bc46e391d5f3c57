//! GitHub Actions self-hosted runners: their service user, whether they
//! are ephemeral, the job-started hook, and the slice their unit runs in.
//!
//! A runner directory is one `config.sh` configured: it holds `.runner`
//! (the registration), `.env` (where `ACTIONS_RUNNER_HOOK_JOB_STARTED` is
//! set) and, once `svc.sh install` ran, a systemd unit
//! `actions.runner.*.service` points into it.

use std::path::{Path, PathBuf};

use super::Finding;

/// Groups whose members are root in all but name.
const ROOT_GROUPS: [&str; 4] = ["docker", "sudo", "wheel", "admin"];

/// The usual places runners are installed, below `root` (`/` on a host).
pub fn default_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("opt/actions-runner")];
    if let Ok(homes) = std::fs::read_dir(root.join("home")) {
        dirs.extend(homes.flatten().map(|h| h.path().join("actions-runner")));
    }
    dirs.into_iter()
        .filter(|d| d.join(".runner").is_file())
        .collect()
}

/// Every finding for the runner in `dir`; `/etc` is read below `root`.
pub fn check(dir: &Path, root: &Path, policy: &[(String, String)]) -> Vec<Finding> {
    let subject = format!("github runner {}", dir.display());
    if !dir.join(".runner").is_file() {
        return vec![Finding::fail(
            "github.runner",
            subject,
            "no .runner file: this is not a configured runner directory",
            "point --github-runner at the directory where config.sh ran",
        )];
    }
    let mut out = Vec::new();
    let registration = std::fs::read_to_string(dir.join(".runner")).unwrap_or_default();
    // The registration is JSON written by config.sh (it may start with a
    // byte-order mark); `--ephemeral` records itself there.
    let ephemeral =
        serde_json::from_str::<serde_json::Value>(registration.trim_start_matches('\u{feff}'))
            .ok()
            .and_then(|v| {
                v.as_object()?
                    .iter()
                    .find(|(k, _)| {
                        k.eq_ignore_ascii_case("ephemeral") || k.eq_ignore_ascii_case("isEphemeral")
                    })
                    .and_then(|(_, v)| v.as_bool())
            })
            .unwrap_or(false);
    out.push(if ephemeral {
        Finding::pass(
            "github.ephemeral",
            &subject,
            "ephemeral: one job per registration",
        )
    } else {
        Finding::warn(
            "github.ephemeral",
            &subject,
            "not ephemeral: what one job leaves on the host meets the next",
            "configure the runner with config.sh --ephemeral (and re-register it after each job)",
        )
        .at(Some(dir.join(".runner").display().to_string()))
    });

    let env_file = dir.join(".env");
    let env = std::fs::read_to_string(&env_file).unwrap_or_default();
    let hook = env.lines().enumerate().find_map(|(i, l)| {
        l.trim()
            .strip_prefix("ACTIONS_RUNNER_HOOK_JOB_STARTED=")
            .map(|v| (i + 1, v.trim().trim_matches('"').to_owned()))
    });
    out.push(match hook {
        Some((line, script)) => {
            let verifies = std::fs::read_to_string(&script)
                .is_ok_and(|s| s.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("egret verify")));
            if verifies {
                Finding::pass("github.verify_hook", &subject, format!("the job-started hook {script} runs egret verify"))
            } else {
                Finding::fail(
                    "github.verify_hook",
                    &subject,
                    format!("the job-started hook {script} does not run egret verify: a job runs unguarded when egret is not enforcing"),
                    "add `egret verify --require-enforce` to the hook script (docs/install.md)",
                )
                .at(Some(format!("{}:{line}", env_file.display())))
            }
        }
        None => Finding::fail(
            "github.verify_hook",
            &subject,
            "no ACTIONS_RUNNER_HOOK_JOB_STARTED: jobs run even when egret is not enforcing",
            "set ACTIONS_RUNNER_HOOK_JOB_STARTED in .env to a script that runs `egret verify --require-enforce` (docs/install.md)",
        )
        .at(Some(env_file.display().to_string())),
    });

    let Some((unit, text)) = unit_of(dir, root) else {
        out.push(Finding::warn(
            "github.service",
            &subject,
            "no systemd unit runs this runner",
            "install it as a service (sudo ./svc.sh install USER) with Slice= naming a runner of the egret policy",
        ));
        return out;
    };
    let value = |key: &str| {
        text.lines().enumerate().find_map(|(i, l)| {
            l.trim()
                .strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(|v| (i + 1, v.trim().to_owned()))
        })
    };
    let at = |line: usize| Some(format!("{}:{line}", unit.display()));
    let user = value("User").map_or_else(|| "root".to_owned(), |(_, u)| u);
    let groups = groups_of(&user, root);
    let risky: Vec<&str> = groups
        .iter()
        .map(String::as_str)
        .filter(|g| ROOT_GROUPS.contains(g))
        .collect();
    out.push(if user == "root" {
        Finding::fail(
            "github.user",
            &subject,
            "the service runs as root: every job is root",
            "run it as a user of its own (User= in the unit)",
        )
        .at(value("User").map(|(l, _)| l).and_then(at))
    } else if !risky.is_empty() {
        Finding::fail(
            "github.user",
            &subject,
            format!(
                "service user {user} is in {}: its jobs are root in all but name",
                risky.join(", ")
            ),
            format!("remove {user} from those groups"),
        )
    } else if sudoers_name(&user, root) {
        Finding::fail(
            "github.user",
            &subject,
            format!("service user {user} has sudo rights: its jobs can become root"),
            format!("remove {user}'s sudoers entries"),
        )
    } else {
        Finding::pass(
            "github.user",
            &subject,
            format!("service user {user}: no root-equivalent group or sudo rights"),
        )
    });
    out.push(match value("Slice") {
        Some((line, slice)) => match crate::policy::slice_cgroup(&slice)
            .ok()
            .and_then(|cg| policy.iter().find(|(_, c)| crate::jobs::within(&cg, c)))
        {
            Some((name, _)) => Finding::pass(
                "github.slice",
                &subject,
                format!("the service runs in {slice}, egret runner \"{name}\""),
            ),
            None => Finding::fail(
                "github.slice",
                &subject,
                format!("the service's slice {slice} is no runner of the egret policy"),
                "name the same slice in the policy (`slice:`)",
            )
            .at(at(line)),
        },
        None => Finding::fail(
            "github.slice",
            &subject,
            "the service's unit sets no Slice=: its jobs run in system.slice, where egret is not attached",
            "add Slice=egret-github.slice to the unit (a drop-in) and `slice: egret-github.slice` to the policy",
        )
        .at(Some(unit.display().to_string())),
    });
    out
}

/// The systemd unit whose `WorkingDirectory` or `ExecStart` is in `dir`.
fn unit_of(dir: &Path, root: &Path) -> Option<(PathBuf, String)> {
    let units = std::fs::read_dir(root.join("etc/systemd/system")).ok()?;
    let dir = dir.display().to_string();
    units.flatten().find_map(|u| {
        let name = u.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("actions.runner.") && name.ends_with(".service")) {
            return None;
        }
        let text = std::fs::read_to_string(u.path()).ok()?;
        text.lines()
            .any(|l| {
                (l.starts_with("WorkingDirectory=") || l.starts_with("ExecStart="))
                    && l.contains(&dir)
            })
            .then(|| (u.path(), text))
    })
}

/// The groups that list `user` as a member in `/etc/group`.
fn groups_of(user: &str, root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("etc/group"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            let members = fields.get(3)?;
            members
                .split(',')
                .any(|m| m.trim() == user)
                .then(|| fields[0].to_owned())
        })
        .collect()
}

/// Whether a sudoers file names `user` at the start of a rule.
fn sudoers_name(user: &str, root: &Path) -> bool {
    let mut files = vec![root.join("etc/sudoers")];
    if let Ok(d) = std::fs::read_dir(root.join("etc/sudoers.d")) {
        files.extend(d.flatten().map(|e| e.path()));
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with('#') && l.split_whitespace().next() == Some(user)
            })
        })
    })
}

#[cfg(test)]
mod tests;
