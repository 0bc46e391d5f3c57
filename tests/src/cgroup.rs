//! Test cgroups under a unique name, removed (processes and all) on drop.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// A top-level cgroup `egret-test-<pid>-<n>`, removed with everything below it.
pub struct TestCgroup {
    pub root: PathBuf,
    pub top: PathBuf,
}

impl TestCgroup {
    pub fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let root =
            egret::runners::cgroup2_root().expect("cgroup2 mount (from /proc/self/mountinfo)");
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let top = root.join(&name);
        std::fs::create_dir(&top).unwrap_or_else(|e| panic!("mkdir {}: {e}", top.display()));
        Self { root, top }
    }

    /// A top-level cgroup with a fixed name (the demo's policy names it).
    /// Refuses to take over one that already exists.
    pub fn named(name: &str) -> Result<Self, String> {
        let root = egret::runners::cgroup2_root().map_err(|e| e.to_string())?;
        let top = root.join(name);
        if top.exists() {
            if populated(&top) {
                return Err(format!(
                    "{} exists and has processes in it (is another demo running?)",
                    top.display()
                ));
            }
            // Left over from an interrupted run.
            remove_tree(&top);
        }
        std::fs::create_dir(&top).map_err(|e| format!("mkdir {}: {e}", top.display()))?;
        Ok(Self { root, top })
    }

    /// Creates `rel` below the top cgroup; returns its path as a policy
    /// names it (relative to the cgroup2 root, leading slash).
    pub fn child(&mut self, rel: &str) -> String {
        let dir = self.top.join(rel);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.policy_path(rel)
    }

    pub fn policy_path(&self, rel: &str) -> String {
        let top = self.top.strip_prefix(&self.root).expect("under root");
        format!("/{}/{}", top.display(), rel.trim_matches('/'))
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        self.top.join(rel)
    }

    pub fn procs(&self, rel: &str) -> PathBuf {
        self.dir(rel).join("cgroup.procs")
    }
}

/// Whether any process lives at or below `dir`.
fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l == "populated 1"))
        .unwrap_or(true)
}

fn empty(dir: &Path) {
    // A lockdown test may have left it frozen.
    let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        let _ = std::fs::write(&kill, "1");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            return;
        }
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    empty(dir);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_tree(&self.top);
        if self.top.exists() {
            let msg = format!("could not remove test cgroup {}", self.top.display());
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}
