//! A real Docker daemon (Debian's `docker.io`) inside the test world, for
//! the docker executor tests.
//!
//! dockerd runs only in namespaces the test created: the world's host
//! network namespace (so containers sit behind it on docker0, as on a
//! runner VM, and reach the world's internet through it) and a mount
//! namespace of its own, with every directory it writes (`/run`,
//! `/etc/docker`, `/var/lib/docker`) bound to the world's directory. `--iptables=false`, the cgroupfs driver, the vfs storage
//! driver, and images made with `docker import` from files on this
//! machine: nothing is pulled. On drop every container is removed, the
//! daemon stopped, and the cgroup v1 directories its driver made are
//! removed.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use crate::{job::JOB_UID, world::World};

/// The job image: the test kit, the libraries it needs, and busybox.
pub const IMAGE: &str = "egret-job:test";
/// The client that came with the daemon (the machine may have a newer one
/// elsewhere on PATH).
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// From busybox-static: one static binary, the job image's shell.
const BUSYBOX: &str = "/bin/busybox";

pub struct Dockerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    host_netns: String,
    /// Top-level cgroup names under which containers were placed, for the
    /// v1 clean-up.
    parents: Vec<String>,
}

impl Dockerd {
    /// Starts dockerd in `world`'s host namespace and loads [`IMAGE`].
    pub fn start(world: &World) -> Self {
        for tool in [DOCKER, DOCKERD, BUSYBOX] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: `cargo xtask setup` installs docker.io and busybox-static"
            );
        }
        // Routes for every docker network (172.16.0.0/12) back through the
        // host, which forwards, as a runner VM's network would.
        world
            .internet
            .ip(&["route", "add", "172.16.0.0/12", "via", "192.0.2.2"]);
        crate::netns::run_ip(&[
            "netns",
            "exec",
            &world.host.name,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ]);
        let dir = world.path("docker");
        std::fs::create_dir_all(&dir).expect("docker dir");
        let mut d = Self {
            child: None,
            socket: dir.join("docker.sock"),
            dir,
            host_netns: world.host.name.clone(),
            parents: Vec::new(),
        };
        d.launch(world);
        d.import_image();
        d
    }

    fn launch(&mut self, world: &World) {
        let config = self.dir.join("daemon.json");
        // Containers outlive a daemon restart, as with live-restore on a
        // runner host: the restart test needs that.
        std::fs::write(&config, "{\"live-restore\": true}\n").expect("daemon.json");
        let mut cmd = Command::new(DOCKERD);
        cmd.arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--config-file")
            .arg(&config)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--storage-driver=vfs",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("dockerd.log")).expect("dockerd log"));
        // What dockerd and its containerd write outside their roots goes to
        // the world's directory, the same on every launch, so a restarted
        // daemon finds its live containers again.
        let shadows: Vec<(PathBuf, &'static str)> = ["/run", "/etc/docker", "/var/lib/docker"]
            .into_iter()
            .filter(|dir| Path::new(dir).is_dir())
            .map(|dir| {
                let own = self.dir.join("shadow").join(dir.trim_start_matches('/'));
                std::fs::create_dir_all(&own).expect("shadow dir");
                (own, dir)
            })
            .collect();
        // SAFETY: only async-signal-safe calls (unshare, mount, on paths
        // made before the fork) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                use nix::{
                    mount::{MsFlags, mount},
                    sched::{CloneFlags, unshare},
                };
                unshare(CloneFlags::CLONE_NEWNS)?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                for (own, dir) in &shadows {
                    mount(
                        Some(own.as_path()),
                        *dir,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )?;
                }
                Ok(())
            });
        }
        self.child = Some(world.host.spawn(&mut cmd, None));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self
            .docker(&["info", "--format", "{{.ServerVersion}}"])
            .status
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd did not come up: {}",
                self.log()
            );
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("dockerd exited ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker client against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .stdin(Stdio::null())
            .output()
            .expect("docker client")
    }

    /// As [`Dockerd::docker`], asserting success; returns stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Builds [`IMAGE`] from files of this machine and loads it with
    /// `docker import`.
    fn import_image(&self) {
        let root = self.dir.join("rootfs");
        let testkit = crate::workspace_bin("egret-testkit");
        let mut files: Vec<PathBuf> = vec![testkit.clone(), PathBuf::from(BUSYBOX)];
        let ldd = Command::new("ldd").arg(&testkit).output().expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
                files.push(PathBuf::from(path));
            }
        }
        for file in &files {
            let dest = if *file == testkit {
                root.join("usr/local/bin/egret-testkit")
            } else {
                root.join(file.strip_prefix("/").expect("absolute"))
            };
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
        }
        for (path, text) in [
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
            ),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
            ("etc/nsswitch.conf", "hosts: files dns\n"),
        ] {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        std::fs::create_dir_all(root.join("bin")).expect("bin");
        std::fs::create_dir_all(root.join("tmp")).expect("tmp");
        for applet in ["sh", "sleep", "cat", "ip"] {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        let tar = self.dir.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success(), "tar the job image");
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// Starts a container the way GitLab Runner's docker executor does:
    /// under `cgroup_parent` (the runner's cgroup), with `labels`, as the
    /// job user unless `root`, running `egret-testkit job ACTIONS`. Extra
    /// `docker run` arguments come first. Returns the container id.
    pub fn run(
        &mut self,
        world: &World,
        cgroup_parent: &str,
        extra: &[&str],
        root: bool,
        actions: &[&str],
    ) -> String {
        let top = cgroup_parent
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !top.is_empty() && !self.parents.contains(&top) {
            self.parents.push(top);
        }
        let initial = crate::netns::initial().to_string();
        let user = if root {
            "0:0".to_owned()
        } else {
            format!("{JOB_UID}:{JOB_UID}")
        };
        let mut args = vec![
            "run",
            "--detach",
            "--cgroup-parent",
            cgroup_parent,
            "--user",
            &user,
            "--env",
        ];
        let env = format!("EGRET_TEST_INITIAL_NETNS={initial}");
        args.push(&env);
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "/usr/local/bin/egret-testkit", "job"]);
        args.extend_from_slice(actions);
        let _ = world;
        self.ok(&args)
    }

    /// Runs `egret-testkit job ACTIONS` inside a running container, as the
    /// job user unless `root`, and returns the outcomes.
    pub fn exec(&self, id: &str, root: bool, actions: &[&str]) -> Vec<crate::job::Outcome> {
        let user = if root {
            "0:0".to_owned()
        } else {
            format!("{JOB_UID}:{JOB_UID}")
        };
        let mut args = vec![
            "exec",
            "--user",
            &user,
            id,
            "/usr/local/bin/egret-testkit",
            "job",
        ];
        args.extend_from_slice(actions);
        let out = self.docker(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "docker exec {actions:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let outcomes: Vec<crate::job::Outcome> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("outcome {l}: {e}")))
            .collect();
        assert_eq!(outcomes.len(), actions.len(), "one outcome per action");
        outcomes
    }

    /// The pid of a running container's first process.
    pub fn pid(&self, id: &str) -> u32 {
        self.ok(&["inspect", "--format", "{{.State.Pid}}", id])
            .parse()
            .expect("a pid")
    }

    /// Waits for a container to exit and returns its outcomes.
    pub fn outcomes(&self, id: &str) -> Vec<crate::job::Outcome> {
        let code = self.ok(&["wait", id]);
        let out = self.docker(&["logs", id]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            code,
            "0",
            "container {id} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("outcome {l}: {e}")))
            .collect()
    }

    /// The container's address on `network` (`bridge` for the default).
    pub fn addr(&self, id: &str, network: &str) -> String {
        self.ok(&[
            "inspect",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            id,
        ])
    }

    /// Stops the daemon (containers die with it, as without live-restore).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts the daemon again on the same data.
    pub fn restart(&mut self, world: &World) {
        self.stop();
        self.launch(world);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "--all", "--quiet"]);
            let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "--force", "--volumes"];
                args.extend(ids.iter().map(String::as_str));
                let _ = self.docker(&args);
            }
        }
        self.stop();
        // With live-restore the containers' shims outlive the daemon: every
        // process still pointing into this daemon's directory goes.
        kill_leftovers(&self.dir);
        // The cgroupfs driver made v1 directories under each parent, in
        // every v1 hierarchy: remove them, deepest first.
        for top in &self.parents {
            let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
                continue;
            };
            for h in hierarchies.flatten() {
                if h.file_name() == "unified" {
                    continue;
                }
                remove_tree(&h.path().join(top));
            }
        }
        let _ = &self.host_netns;
    }
}

/// Kills every process whose command line names `dir` (containerd and its
/// shims, which live on after dockerd with live-restore).
fn kill_leftovers(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn remove_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Runs `egret-testkit job ACTIONS` as the job user in the network
/// namespace of the process `pid` (a container's) and in the cgroup whose
/// `cgroup.procs` is given: a job process, with no Docker daemon to exec
/// through.
pub fn run_in_container(
    pid: u32,
    cgroup_procs: &Path,
    actions: &[&str],
) -> Vec<crate::job::Outcome> {
    use std::os::fd::AsRawFd as _;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the container's netns");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup_procs)
        .expect("the container's cgroup");
    let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
    let mut cmd = Command::new(crate::workspace_bin("egret-testkit"));
    cmd.arg("job")
        .args(actions)
        .env(
            "EGRET_TEST_INITIAL_NETNS",
            crate::netns::initial().to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (setns, write, set*id) between
    // fork and exec, on descriptors opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0
                || libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(JOB_UID) != 0
                || libc::setuid(JOB_UID) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("a job in the container");
    drop((ns, procs));
    assert!(
        out.status.success(),
        "job {actions:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("outcome {l}: {e}")))
        .collect()
}
