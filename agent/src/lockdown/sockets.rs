//! Ending what a lockdown's runners already have open. The maps stop every
//! new connection at once; a connection already established, or a
//! handshake in flight, would otherwise hang until its own timeout on
//! packets the backstop drops. So the lockdown destroys those sockets
//! (sock_diag SOCK_DESTROY), and each job sees ECONNABORTED at once. It
//! runs in `egret lockdown` itself, so it needs no agent.
//!
//! The sockets are found through the jobs' own descriptors ([`held`]) and
//! destroyed by name. Where that cannot be done, the kernel's socket tables
//! are walked instead, in every network namespace the runners' processes
//! live in.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{
    held::{self, Held},
    sock_diag::{Diag, Socket, TCP_CLOSE, TCP_LISTEN, TCP_SYN_SENT, TCP_TIME_WAIT},
};

/// What ending the connections did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Ended {
    pub destroyed: usize,
    /// Connections the lockdown leaves open (`--keep-forge`).
    pub kept: usize,
    /// Why the socket tables were walked, where they were: the jobs'
    /// descriptors could not be borrowed, or a socket shared its name.
    pub walked: Option<String>,
    pub failures: Vec<String>,
}

impl Ended {
    fn add(&mut self, other: Ended) {
        self.destroyed += other.destroyed;
        self.kept += other.kept;
        self.walked = self.walked.take().or(other.walked);
        self.failures.extend(other.failures);
    }
}

/// What to keep: given the runner and the socket, true leaves it open.
pub type Keep<'a> = &'a (dyn Fn(u32, &Socket) -> bool + Sync);

/// Each runner's cgroups: the runner's own and every one below it.
pub struct RunnerCgroups {
    /// cgroup id → the runner's id.
    runner_of: HashMap<u64, u32>,
    /// Each cgroup's directory, with its runner.
    dirs: Vec<(u32, PathBuf)>,
}

impl RunnerCgroups {
    pub fn new(runners: &[(u32, PathBuf)]) -> Self {
        let mut runner_of = HashMap::new();
        let mut dirs = Vec::new();
        for (id, dir) in runners {
            subtree(dir, &mut |d| {
                if let Ok(m) = std::fs::metadata(d) {
                    runner_of.insert(m.ino(), *id);
                    dirs.push((*id, d.to_path_buf()));
                }
            });
        }
        Self { runner_of, dirs }
    }

    /// Every process in the cgroups, with its runner.
    fn processes(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for (runner, dir) in &self.dirs {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            out.extend(
                procs
                    .lines()
                    .filter_map(|p| Some((*runner, p.parse().ok()?))),
            );
        }
        out
    }
}

/// Calls `each` for `dir` and every cgroup below it.
fn subtree(dir: &Path, each: &mut impl FnMut(&Path)) {
    each(dir);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            subtree(&entry.path(), each);
        }
    }
}

/// Destroys every TCP connection (listeners and TIME_WAIT aside) and bound
/// UDP socket of the runners' cgroups, except those `keep` names.
pub fn end(cgroups: &RunnerCgroups, keep: Keep) -> Ended {
    let processes = cgroups.processes();
    match held::scan(&processes) {
        Ok(held) => end_held(held, cgroups, keep),
        Err(held::Unavailable(e)) => {
            let mut failures = Vec::new();
            let namespaces = namespaces(&processes, &mut failures);
            let mut ended = walk(&namespaces, cgroups, keep, &HashSet::new());
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (borrowing another user's needs CAP_SYS_PTRACE)"
            } else {
                ""
            };
            ended.walked = Some(format!(
                "the jobs' descriptors could not be borrowed: {e}{hint}"
            ));
            ended.failures.extend(failures);
            ended
        }
    }
}

/// Destroys the sockets the jobs hold, each by name. Where the kernel finds
/// no socket by a name and the socket still lives (another socket shares
/// its addresses), that namespace is walked after all.
fn end_held(held: Vec<Held>, cgroups: &RunnerCgroups, keep: Keep) -> Ended {
    let mut ended = Ended::default();
    let own_netns = std::fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino());
    let mut diags: HashMap<u64, Result<Diag, String>> = HashMap::new();
    let mut missed: HashMap<u64, File> = HashMap::new();
    let mut kept = HashSet::new();
    for h in held {
        if keep(h.runner, &h.socket) {
            ended.kept += 1;
            kept.insert(h.socket.cookie());
            continue;
        }
        let (ns, inode) = &h.netns;
        let diag = diags.entry(*inode).or_insert_with(|| {
            if *inode == own_netns {
                return Diag::open().map_err(|e| format!("sock_diag: {e}"));
            }
            Diag::open_in(ns).map_err(|e| format!("sock_diag in a job's network namespace: {e}"))
        });
        let diag = match diag {
            Ok(d) => d,
            Err(e) => {
                ended.failures.push(e.clone());
                continue;
            }
        };
        match diag.destroy(&h.socket) {
            Ok(true) => ended.destroyed += 1,
            Ok(false) => {
                let closed = i32::from(h.socket.protocol) == libc::IPPROTO_TCP
                    && held::tcp_state(&h.fd).is_none_or(|s| s == TCP_CLOSE);
                if !closed {
                    let (ns, inode) = h.netns;
                    missed.entry(inode).or_insert(ns);
                }
            }
            Err(e) => ended.failures.push(format!(
                "destroy a socket to {}:{}: {e}",
                h.socket.peer, h.socket.peer_port
            )),
        }
    }
    if !missed.is_empty() {
        let namespaces: Vec<File> = missed.into_values().collect();
        ended.add(Ended {
            walked: Some("the kernel found no socket by a socket's name: another shares it, as in an SO_REUSEPORT group".into()),
            ..walk(&namespaces, cgroups, keep, &kept)
        });
    }
    ended
}

/// The network namespaces of `processes`: one open handle each. (A socket
/// of the runners' cgroups in a namespace none of their processes is in
/// still meets the lockdown at the backstop, on every packet; it only
/// waits for its own timeout.) A namespace the command may not open (no
/// CAP_SYS_PTRACE for another user's process) is a failure, and the
/// command's own namespace, where shell jobs run, is walked in its place.
fn namespaces(processes: &[(u32, u32)], failures: &mut Vec<String>) -> Vec<File> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |f: File| {
        if let Ok(m) = f.metadata()
            && seen.insert((m.dev(), m.ino()))
        {
            out.push(f);
        }
    };
    let mut refused = 0;
    for (_, pid) in processes {
        match File::open(format!("/proc/{pid}/ns/net")) {
            Ok(f) => add(f),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => refused += 1,
            Err(_) => {}
        }
    }
    if refused > 0 {
        failures.push(format!(
            "the network namespace of {refused} job process{} could not be opened (CAP_SYS_PTRACE); only this command's own was searched",
            if refused == 1 { "" } else { "es" }
        ));
        if let Ok(own) = File::open("/proc/thread-self/ns/net") {
            add(own);
        }
    }
    out
}

/// Walks the socket tables of `namespaces` for the runners' sockets and
/// destroys them, except those `keep` names and those `done` (cookies)
/// already counted.
fn walk(namespaces: &[File], cgroups: &RunnerCgroups, keep: Keep, done: &HashSet<u64>) -> Ended {
    // A dump walks the kernel's whole socket hash table, whatever the
    // family asked for: one thread per namespace and family, in parallel.
    let results: Vec<Ended> = std::thread::scope(|scope| {
        let workers: Vec<_> = namespaces
            .iter()
            .flat_map(|ns| [(ns, libc::AF_INET as u8), (ns, libc::AF_INET6 as u8)])
            .map(|(ns, family)| scope.spawn(move || walk_one(ns, family, cgroups, keep, done)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| Ended {
                    failures: vec!["a socket scan panicked".into()],
                    ..Ended::default()
                })
            })
            .collect()
    });
    results.into_iter().fold(Ended::default(), |mut all, one| {
        all.add(one);
        all
    })
}

/// [`walk`] in one network namespace and family, on a thread that enters
/// the namespace.
fn walk_one(
    ns: &File,
    family: u8,
    cgroups: &RunnerCgroups,
    keep: Keep,
    done: &HashSet<u64>,
) -> Ended {
    let mut ended = Ended::default();
    // Only this thread changes namespace.
    if let Err(e) = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET) {
        ended
            .failures
            .push(format!("enter a job's network namespace: {e}"));
        return ended;
    }
    let mut diag = match Diag::open() {
        Ok(d) => d,
        Err(e) => {
            ended.failures.push(format!("sock_diag: {e}"));
            return ended;
        }
    };
    // Listeners carry no traffic, and TIME_WAIT is already closed. A
    // connect that passed its hook before the lockdown can enter the table
    // behind the first walk, and its handshake would then hang on the
    // backstop until its own timeout: a last walk for handshakes catches
    // it, after every connection the jobs wait on has its error.
    let connections = !(1 << TCP_LISTEN | 1 << TCP_TIME_WAIT);
    for (protocol, states) in [
        (libc::IPPROTO_TCP as u8, connections),
        (libc::IPPROTO_UDP as u8, u32::MAX),
        (libc::IPPROTO_TCP as u8, 1 << TCP_SYN_SENT),
    ] {
        let sockets = match diag.list(family, protocol, states) {
            Ok(s) => s,
            Err(e) => {
                ended.failures.push(format!("list sockets: {e}"));
                continue;
            }
        };
        for s in sockets {
            let Some(runner) = cgroups.runner_of.get(&s.cgroup).copied() else {
                continue;
            };
            if done.contains(&s.cookie()) {
                continue;
            }
            if keep(runner, &s) {
                ended.kept += 1;
                continue;
            }
            match diag.destroy(&s) {
                Ok(true) => ended.destroyed += 1,
                Ok(false) => {}
                Err(e) => ended.failures.push(format!(
                    "destroy a socket to {}:{}: {e}",
                    s.peer, s.peer_port
                )),
            }
        }
    }
    ended
}
