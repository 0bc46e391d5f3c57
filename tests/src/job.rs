//! Jobs: real processes placed in a runner's cgroup before they create any
//! socket, performing scripted network actions and reporting each outcome.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use serde::Deserialize;

use crate::netns::Netns;

/// Result of one action, as `egret-testkit job` reports it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub action: String,
    /// `ok` or `error`.
    pub result: String,
    pub errno: Option<i32>,
    pub error: Option<String>,
    /// First line the server sent, when it sent one.
    pub banner: Option<String>,
    pub pid: u32,
    /// Extra numbers some actions report (loops: elapsed ns, count).
    pub elapsed_ns: Option<u64>,
    pub count: Option<u64>,
    pub oks: Option<u64>,
    pub eperms: Option<u64>,
    pub others: Option<u64>,
    /// DNS actions: response code (`No Error`, `Refused`, ...), the
    /// addresses answered, and where the reply appeared to come from.
    pub rcode: Option<String>,
    pub answers: Option<Vec<String>>,
    pub peer: Option<String>,
    /// Load actions: latency percentiles and replies per second.
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub qps: Option<u64>,
    /// Loops: the CPU time the looping thread spent, kernel time included
    /// (what the kernel's hooks cost lands here, whoever else is busy).
    pub cpu_ns: Option<u64>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.result == "ok"
    }
    pub fn eperm(&self) -> bool {
        self.errno == Some(libc::EPERM)
    }
}

/// The user a job runs as, as the threat model assumes: no capabilities,
/// no groups (`nobody`).
pub const JOB_UID: u32 = 65_534;

/// Runs `egret-testkit job ACTIONS...` in `ns` as [`JOB_UID`], in the cgroup
/// whose `cgroup.procs` is given (None: outside any runner).
pub fn run(ns: &Netns, cgroup_procs: Option<&Path>, actions: &[&str]) -> Vec<Outcome> {
    start(ns, cgroup_procs, actions).wait()
}

/// As [`run`], as root: for the labelled cases about what a job with
/// capabilities can do.
pub fn run_as_root(ns: &Netns, cgroup_procs: Option<&Path>, actions: &[&str]) -> Vec<Outcome> {
    spawn(ns, cgroup_procs, actions, None).wait()
}

/// A job running in the background.
pub struct Running {
    child: Child,
    actions: Vec<String>,
}

/// As [`run`], in the background.
pub fn start(ns: &Netns, cgroup_procs: Option<&Path>, actions: &[&str]) -> Running {
    spawn(ns, cgroup_procs, actions, Some(JOB_UID))
}

/// As [`run_as_root`], in the background.
pub fn start_as_root(ns: &Netns, cgroup_procs: Option<&Path>, actions: &[&str]) -> Running {
    spawn(ns, cgroup_procs, actions, None)
}

fn spawn(ns: &Netns, cgroup_procs: Option<&Path>, actions: &[&str], uid: Option<u32>) -> Running {
    spawn_with_stdin(ns, cgroup_procs, actions, uid, Stdio::null())
}

fn spawn_with_stdin(
    ns: &Netns,
    cgroup_procs: Option<&Path>,
    actions: &[&str],
    uid: Option<u32>,
    stdin: Stdio,
) -> Running {
    let mut cmd = Command::new(crate::workspace_bin("egret-testkit"));
    cmd.arg("job")
        .args(actions)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Running {
        child: ns.spawn_as(&mut cmd, cgroup_procs, uid),
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
    }
}

impl Running {
    pub fn wait(self) -> Vec<Outcome> {
        let actions = self.actions;
        let out = self.child.wait_with_output().expect("job output");
        assert!(
            out.status.success(),
            "job {actions:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let outcomes: Vec<Outcome> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("job output {l}: {e}")))
            .collect();
        assert_eq!(outcomes.len(), actions.len(), "one outcome per action");
        outcomes
    }
}

pub fn one(ns: &Netns, cgroup_procs: Option<&Path>, action: &str) -> Outcome {
    run(ns, cgroup_procs, &[action]).remove(0)
}

/// A job that stays up and does one round of its action (such as
/// `connect-rounds`) each time it is asked: a benchmark's side, warm
/// between its turns.
pub struct Worker {
    running: Running,
    ask: std::process::ChildStdin,
    answers: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Worker {
    /// Starts `action` as [`JOB_UID`] in `ns` and the given cgroup.
    pub fn start(ns: &Netns, cgroup_procs: Option<&Path>, action: &str) -> Self {
        use std::io::BufRead as _;
        let mut running =
            spawn_with_stdin(ns, cgroup_procs, &[action], Some(JOB_UID), Stdio::piped());
        let ask = running.child.stdin.take().expect("worker stdin");
        let answers =
            std::io::BufReader::new(running.child.stdout.take().expect("worker stdout")).lines();
        Self {
            running,
            ask,
            answers,
        }
    }

    /// One round: its outcome, once the worker has done it.
    pub fn round(&mut self) -> Outcome {
        use std::io::Write as _;
        writeln!(self.ask, "go").expect("asking the worker");
        let line = self
            .answers
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("worker {:?} ended", self.running.actions));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker output {line}: {e}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.running.child.kill();
        let _ = self.running.child.wait();
    }
}
