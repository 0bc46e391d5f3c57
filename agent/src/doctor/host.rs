//! egret itself on this host: cgroup v2 and BPF, the kernel's lockdown
//! and LSMs, the agent and each runner's attachment, and the sysctls that
//! change what jobs can do.

use super::Finding;
use crate::status::Status;

/// What the host shows, read once by [`HostFacts::read`].
#[derive(Debug, Default)]
pub struct HostFacts {
    pub cgroup2: Option<String>,
    pub bpffs: bool,
    /// `/sys/kernel/security/lockdown`, e.g. `[none] integrity confidentiality`.
    pub lockdown: Option<String>,
    /// `/sys/kernel/security/lsm`.
    pub lsms: Option<String>,
    pub ping_group_range: Option<String>,
    pub unprivileged_userns_clone: Option<String>,
    /// The agent's status when it answered; else what the pins say.
    pub status: Option<Status>,
    pub agent_answered: bool,
    /// Programs each runner needs attached.
    pub programs: usize,
}

impl HostFacts {
    pub fn read(status: Option<Status>, agent_answered: bool) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
        Self {
            cgroup2: crate::runners::cgroup2_root()
                .ok()
                .map(|p| p.display().to_string()),
            bpffs: crate::mountinfo::read()
                .map(|m| m.iter().any(|m| m.fstype == "bpf"))
                .unwrap_or(false),
            lockdown: read("/sys/kernel/security/lockdown"),
            lsms: read("/sys/kernel/security/lsm"),
            ping_group_range: read("/proc/sys/net/ipv4/ping_group_range"),
            unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
            status,
            agent_answered,
            programs: crate::datapath::PROGRAMS.len(),
        }
    }
}

pub fn check(h: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(match &h.cgroup2 {
        Some(root) => Finding::pass("egret.cgroup2", "egret", format!("cgroup v2 at {root}")),
        None => Finding::fail(
            "egret.cgroup2",
            "egret",
            "no cgroup v2 hierarchy is mounted",
            "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1) or mount cgroup2",
        ),
    });
    out.push(if h.bpffs {
        Finding::pass(
            "egret.bpffs",
            "egret",
            "a bpffs is mounted, for egret's pins",
        )
    } else {
        Finding::warn(
            "egret.bpffs",
            "egret",
            "no bpffs is mounted",
            "the agent mounts one at /sys/fs/bpf/egret when it starts; check that it runs",
        )
    });
    let lockdown = h
        .lockdown
        .as_deref()
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with('[')))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned());
    out.push(match lockdown.as_deref() {
        None | Some("none") => Finding::pass("egret.kernel_lockdown", "egret", "kernel lockdown off"),
        Some(mode) => Finding::pass(
            "egret.kernel_lockdown",
            "egret",
            format!("kernel lockdown {mode}: egret's cgroup programs still load (they read no kernel memory)"),
        ),
    });
    let bpf_lsm = h
        .lsms
        .as_deref()
        .is_some_and(|l| l.split(',').any(|m| m == "bpf"));
    out.push(Finding::pass(
        "egret.bpf_lsm",
        "egret",
        if bpf_lsm {
            "BPF LSM active: not needed by egret, available for future hooks"
        } else {
            "BPF LSM not active: egret does not need it (its hooks are cgroup programs)"
        },
    ));
    if !h.agent_answered {
        out.push(Finding::fail(
            "egret.agent",
            "egret",
            "the agent does not answer on its socket: new DNS lookups of jobs fail, and policy changes do not apply",
            "start it: systemctl start egret (see docs/install.md)",
        ));
    } else {
        out.push(Finding::pass(
            "egret.agent",
            "egret",
            "the agent is running",
        ));
    }
    if let Some(status) = &h.status {
        for r in &status.runners {
            let subject = format!("egret runner \"{}\"", r.name);
            let cgroup = r.cgroup.as_deref().unwrap_or("?");
            out.push(if r.programs_attached == h.programs {
                Finding::pass(
                    "egret.attached",
                    &subject,
                    format!("attached to {cgroup}, mode {}", r.mode),
                )
            } else {
                Finding::fail(
                    "egret.attached",
                    &subject,
                    format!(
                        "{} of {} programs attached to {cgroup}",
                        r.programs_attached, h.programs
                    ),
                    "restart the agent; with --create-cgroups it creates a missing cgroup",
                )
            });
            if !r.privileged_processes.is_empty() {
                out.push(Finding::fail(
                    "egret.privileged_jobs",
                    &subject,
                    format!(
                        "{} job process(es) hold NET_RAW, NET_ADMIN or SYS_ADMIN (pids {})",
                        r.privileged_processes.len(),
                        r.privileged_processes
                            .iter()
                            .map(|p| p.pid.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "drop those capabilities in the runner's configuration (cap_drop, no privileged containers)",
                ));
            }
        }
    }
    out.push(match h.ping_group_range.as_deref() {
        Some(r) if r.split_whitespace().collect::<Vec<_>>() != ["1", "0"] => Finding::pass(
            "egret.ping_group_range",
            "egret",
            format!("net.ipv4.ping_group_range = {r}: jobs may open ping sockets; egret judges every echo packet"),
        ),
        _ => Finding::pass(
            "egret.ping_group_range",
            "egret",
            "net.ipv4.ping_group_range = 1 0: jobs cannot open ping sockets",
        ),
    });
    out.push(match h.unprivileged_userns_clone.as_deref() {
        Some("0") => Finding::pass(
            "egret.userns",
            "egret",
            "kernel.unprivileged_userns_clone = 0: jobs cannot make user namespaces",
        ),
        _ => Finding::warn(
            "egret.userns",
            "egret",
            "unprivileged user namespaces allowed: a job can gain CAP_NET_RAW inside a namespace of its own (its traffic stays in the cgroup egret judges, but the kernel's attack surface grows)",
            "set kernel.unprivileged_userns_clone = 0 (or user.max_user_namespaces = 0) where jobs do not need rootless containers",
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{doctor::Level, status::RunnerStatus};

    fn healthy() -> HostFacts {
        HostFacts {
            cgroup2: Some("/sys/fs/cgroup".into()),
            bpffs: true,
            lockdown: Some("[none] integrity confidentiality".into()),
            lsms: Some("lockdown,capability,bpf".into()),
            ping_group_range: Some("1\t0".into()),
            unprivileged_userns_clone: Some("0".into()),
            status: Some(Status {
                runners: vec![RunnerStatus {
                    name: "ci".into(),
                    cgroup: Some("/egret.slice/ci".into()),
                    programs_attached: 14,
                    mode: "enforce".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            agent_answered: true,
            programs: 14,
        }
    }

    #[test]
    fn a_healthy_host_passes() {
        let f = check(&healthy());
        assert!(f.iter().all(|f| f.level == Level::Pass), "{f:#?}");
    }

    /// Lockdown, the BPF LSM and ping sockets change nothing egret needs
    /// (its programs read no kernel memory, its hooks are cgroup programs,
    /// every echo is judged): each state passes, saying what it means.
    #[test]
    fn informational_checks_say_what_each_state_means() {
        let mut h = healthy();
        h.lockdown = Some("none integrity [confidentiality]".into());
        h.lsms = Some("capability,landlock,yama".into());
        h.ping_group_range = Some("0\t2147483647".into());
        let f = check(&h);
        let found = |id: &str| {
            let f = f.iter().find(|f| f.check == id).expect(id);
            assert_eq!(f.level, Level::Pass, "{f:?}");
            f.found.clone()
        };
        assert!(found("egret.kernel_lockdown").contains("lockdown confidentiality"));
        assert!(found("egret.bpf_lsm").contains("not active"));
        assert!(found("egret.ping_group_range").contains("judges every echo"));
        let healthy = check(&self::healthy());
        let text = |id: &str| {
            healthy
                .iter()
                .find(|f| f.check == id)
                .expect(id)
                .found
                .clone()
        };
        assert_eq!(text("egret.kernel_lockdown"), "kernel lockdown off");
        assert!(text("egret.bpf_lsm").starts_with("BPF LSM active"));
        assert!(text("egret.ping_group_range").contains("cannot open ping sockets"));
    }

    #[test]
    fn each_problem_is_reported() {
        let mut h = healthy();
        h.cgroup2 = None;
        h.bpffs = false;
        h.agent_answered = false;
        h.unprivileged_userns_clone = Some("1".into());
        if let Some(s) = h.status.as_mut() {
            s.runners[0].programs_attached = 3;
        }
        let f = check(&h);
        let level = |id: &str| f.iter().find(|f| f.check == id).map(|f| f.level);
        assert_eq!(level("egret.cgroup2"), Some(Level::Fail));
        assert_eq!(level("egret.bpffs"), Some(Level::Warn));
        assert_eq!(level("egret.agent"), Some(Level::Fail));
        assert_eq!(level("egret.attached"), Some(Level::Fail));
        assert_eq!(level("egret.userns"), Some(Level::Warn));
    }
}
