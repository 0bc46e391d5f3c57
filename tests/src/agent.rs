//! Running `egret agent` in the host namespace of a world, as it would run on
//! a runner host, with private bpffs and state paths.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::world::World;

#[derive(Default)]
struct Output {
    events: Vec<Value>,
    logs: Vec<String>,
    ready: bool,
    exited: bool,
}

/// A running agent. Dropping it kills the process; the pins stay (use
/// [`Agent::teardown`] or [`Pins`] to remove them).
pub struct Agent {
    child: Option<Child>,
    out: Arc<(Mutex<Output>, Condvar)>,
    pub policy: PathBuf,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
}

/// The bpffs directory a world's agents share; torn down on drop so no test
/// leaves programs attached.
pub struct Pins {
    pub bpffs: PathBuf,
}

impl Pins {
    pub fn new(world: &World) -> Self {
        Self {
            bpffs: world.path("bpffs"),
        }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new(crate::workspace_bin("egret"))
            .args(["teardown", "--bpffs"])
            .arg(&self.bpffs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Agent {
    /// Starts the agent and waits until it reports enforcement in place.
    pub fn start(world: &World, pins: &Pins, policy: &Path, extra: &[&str]) -> Self {
        let mut agent = Self::spawn(world, pins, policy, extra);
        if let Err(logs) = agent.wait_ready(Duration::from_secs(30)) {
            panic!("agent did not become ready:\n{logs}");
        }
        agent
    }

    /// Starts the agent without waiting (to test failures).
    pub fn spawn(world: &World, pins: &Pins, policy: &Path, extra: &[&str]) -> Self {
        Self::spawn_env(world, pins, policy, extra, &[], &[])
    }

    /// Starts the agent without waiting, with more environment (what a
    /// service manager sets, say), under `wrapper` when one is given
    /// (`strace -f -o FILE`, say).
    pub fn spawn_env(
        world: &World,
        pins: &Pins,
        policy: &Path,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        wrapper: &[&std::ffi::OsStr],
    ) -> Self {
        let state_dir = world.path("state");
        let egret = crate::workspace_bin("egret");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&egret);
                c
            }
            None => Command::new(&egret),
        };
        cmd.arg("agent")
            .arg("--policy")
            .arg(policy)
            .arg("--bpffs")
            .arg(&pins.bpffs)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--socket")
            .arg(world.path("egret.sock"))
            .args(["--ttl-floor", "1s", "--grace", "2s"])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = world.host.spawn(&mut cmd, None);
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let o = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("agent stdout line is not JSON ({e}): {line}"));
                let (lock, cv) = &*o;
                lock.lock().unwrap().events.push(value);
                cv.notify_all();
            }
        });
        let o = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (lock, cv) = &*o;
                let mut g = lock.lock().unwrap();
                if line.contains("egret agent ready") {
                    g.ready = true;
                }
                g.logs.push(line);
                cv.notify_all();
            }
            let (lock, cv) = &*o;
            lock.lock().unwrap().exited = true;
            cv.notify_all();
        });
        Self {
            child: Some(child),
            out,
            policy: policy.to_owned(),
            bpffs: pins.bpffs.clone(),
            state_dir,
        }
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let (lock, cv) = &*self.out;
        let deadline = Instant::now() + timeout;
        let mut g = lock.lock().unwrap();
        while !g.ready && !g.exited && Instant::now() < deadline {
            g = cv.wait_timeout(g, deadline - Instant::now()).unwrap().0;
        }
        if g.ready {
            Ok(())
        } else {
            Err(g.logs.join("\n"))
        }
    }

    /// Waits for the process to exit; returns its code and its log.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("agent already reaped");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (lock, cv) = &*self.out;
        let mut g = lock.lock().unwrap();
        while !g.exited {
            g = cv.wait_timeout(g, Duration::from_secs(2)).unwrap().0;
        }
        (status.code(), g.logs.join("\n"))
    }

    pub fn logs(&self) -> String {
        self.out.0.lock().unwrap().logs.join("\n")
    }

    pub fn events(&self) -> Vec<Value> {
        self.out.0.lock().unwrap().events.clone()
    }

    /// Waits until an event satisfying `pred` arrives.
    pub fn wait_event(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.wait_events(timeout, |events| events.iter().find(|e| pred(e)).cloned())
    }

    /// Waits until `check` finds what it wants in the events so far.
    pub fn wait_events<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&[Value]) -> Option<T>,
    ) -> Option<T> {
        let (lock, cv) = &*self.out;
        let deadline = Instant::now() + timeout;
        let mut g = lock.lock().unwrap();
        loop {
            if let Some(found) = check(&g.events) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// SIGKILL: the harshest way an agent can go away.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output of one `egret` CLI command.
pub struct Cli {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `egret <args>` against a world's pins, state directory and socket,
/// given as a script would: once, in the environment (`EGRET_BPFFS`,
/// `EGRET_STATE_DIR`, `EGRET_SOCKET`), whatever the subcommand.
pub fn cli(world: &World, args: &[&str]) -> Cli {
    let mut cmd = Command::new(crate::workspace_bin("egret"));
    cmd.args(args);
    let out = with_world_paths(&mut cmd, world)
        .output()
        .expect("run egret");
    Cli::from(out)
}

/// As [`cli`], run in the world's host namespace (where shell jobs run)
/// behind `wrapper`, a command that runs what follows it: `setpriv` with
/// capabilities dropped, for one.
pub fn cli_wrapped(world: &World, wrapper: &[&str], args: &[&str]) -> Cli {
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg(crate::workspace_bin("egret"))
        .args(args);
    with_world_paths(&mut cmd, world)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = world
        .host
        .spawn(&mut cmd, None)
        .wait_with_output()
        .expect("run egret");
    Cli::from(out)
}

/// The world's pins, state directory and socket, in the environment, and
/// no stdin.
fn with_world_paths<'a>(cmd: &'a mut Command, world: &World) -> &'a mut Command {
    cmd.env("EGRET_BPFFS", world.path("bpffs"))
        .env("EGRET_STATE_DIR", world.path("state"))
        .env("EGRET_SOCKET", world.path("egret.sock"))
        .stdin(Stdio::null())
}

impl From<std::process::Output> for Cli {
    fn from(out: std::process::Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `egret teardown` against these pins; returns its exit code and output.
pub fn teardown(pins: &Pins) -> (i32, String) {
    let out = Command::new(crate::workspace_bin("egret"))
        .args(["teardown", "--bpffs"])
        .arg(&pins.bpffs)
        .output()
        .expect("run egret teardown");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
