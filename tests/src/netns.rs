//! Network namespaces: creation, and spawning processes inside them with a
//! hard check that they really are isolated.

use std::{
    ffi::CString,
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command, Stdio},
    sync::OnceLock,
};

use std::os::unix::fs::MetadataExt as _;

/// The namespace the test process started in. Recorded before anything
/// unshares, from the main thread's view, which never changes namespace.
pub fn initial() -> u64 {
    static INITIAL: OnceLock<u64> = OnceLock::new();
    *INITIAL.get_or_init(|| inode("/proc/self/ns/net"))
}

fn inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .ino()
}

/// The calling thread's namespace.
pub fn current() -> u64 {
    inode("/proc/thread-self/ns/net")
}

/// Moves the calling thread into a fresh, empty namespace, so that even an
/// accidental socket of the test thread itself goes nowhere.
pub fn isolate_this_thread() {
    let before = initial();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    assert_ne!(
        current(),
        before,
        "unshare left this thread in the initial network namespace"
    );
}

impl Netns {
    /// Runs `f` on a thread of its own inside this namespace (a client of
    /// a service the agent runs there, say), after checking that the
    /// thread really left the initial one.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.path()));
        let before = initial();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            assert_ne!(current(), before, "still in the initial network namespace");
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    }
}

pub fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A named namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Self {
        run_ip(&["netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn inode(&self) -> u64 {
        inode(&self.path())
    }

    /// `ip -n <name> ...`
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full);
    }

    /// Starts `cmd` inside this namespace, and, when given, inside a cgroup
    /// (by writing its pid to `cgroup.procs` before exec, so the process never
    /// creates a socket outside it). The child refuses to exec if it finds
    /// itself in the test's initial namespace.
    pub fn spawn(&self, cmd: &mut Command, cgroup_procs: Option<&std::path::Path>) -> Child {
        self.spawn_as(cmd, cgroup_procs, None)
    }

    /// As [`Netns::spawn`], then drops to `uid` (and the same gid, no
    /// supplementary groups) once in the namespace and the cgroup, the way an
    /// unprivileged job runs.
    pub fn spawn_as(
        &self,
        cmd: &mut Command,
        cgroup_procs: Option<&std::path::Path>,
        uid: Option<u32>,
    ) -> Child {
        let ns_file =
            File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.path()));
        let procs = cgroup_procs.map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        });
        let initial = initial();
        let self_ns = CString::new("/proc/self/ns/net").expect("static path");
        let ns_fd = ns_file.as_raw_fd();
        let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
        cmd.env("EGRET_TEST_INITIAL_NETNS", initial.to_string());
        // SAFETY: only async-signal-safe calls (setns, stat, write) on values
        // prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut st: libc::stat = std::mem::zeroed();
                if libc::stat(self_ns.as_ptr(), &mut st) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if st.st_ino == initial {
                    return Err(std::io::Error::other(
                        "refusing to run in the initial network namespace",
                    ));
                }
                if let Some(fd) = procs_fd
                    && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
                {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(id) = uid
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(id) != 0
                        || libc::setuid(id) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?} in netns {}: {e}", self.name));
        drop(ns_file);
        drop(procs);
        child
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
