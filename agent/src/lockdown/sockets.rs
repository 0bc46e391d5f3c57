//! Ending what a lockdown's runners already have open. The maps stop every
//! new connection at once; a connection already established, or a
//! handshake in flight, would otherwise hang until its own timeout on
//! packets the backstop drops. So the lockdown destroys those sockets
//! (sock_diag), in every network namespace the runners' processes live
//! in, and each job sees ECONNABORTED at once. It runs in `egret lockdown`
//! itself, so it needs no agent.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use egret_common::{
    addr::Addr,
    maps::{Baseline, CidrKey, ExactKey, Learned, Nat64Entry},
    rules::PortRules,
    state::{GLOBAL_RUNNER, Lockdown, RunnerState},
    verdict::{self, Destination, Lookup, Outcome},
};

use super::sock_diag::{Diag, Socket, TCP_LISTEN, TCP_SYN_SENT, TCP_TIME_WAIT};
use crate::{clock::monotonic_ns, datapath::Maps};

/// What ending the connections did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Ended {
    pub destroyed: usize,
    /// Connections the lockdown leaves open (`--keep-forge`).
    pub kept: usize,
    pub failures: Vec<String>,
}

/// Each runner's cgroup (by id), with its directory.
pub struct RunnerCgroups {
    /// cgroup id at or below a runner's cgroup → the runner's id.
    runner_of: HashMap<u64, u32>,
    dirs: Vec<PathBuf>,
}

impl RunnerCgroups {
    pub fn new(runners: &[(u32, PathBuf)]) -> Self {
        let mut runner_of = HashMap::new();
        for (id, dir) in runners {
            subtree(dir, &mut |d| {
                if let Ok(m) = std::fs::metadata(d) {
                    runner_of.insert(m.ino(), *id);
                }
            });
        }
        Self {
            runner_of,
            dirs: runners.iter().map(|(_, d)| d.clone()).collect(),
        }
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

/// The network namespaces of every process in the runners' cgroups: one
/// open handle each. (A socket of the runners' cgroups in a namespace none
/// of their processes is in still meets the lockdown at the backstop, on
/// every packet; it only waits for its own timeout.)
fn namespaces(cgroups: &RunnerCgroups) -> Vec<File> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |path: PathBuf| {
        if let Ok(f) = File::open(&path)
            && let Ok(m) = f.metadata()
            && seen.insert((m.dev(), m.ino()))
        {
            out.push(f);
        }
    };
    for dir in &cgroups.dirs {
        subtree(dir, &mut |d| {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                add(PathBuf::from(format!("/proc/{pid}/ns/net")));
            }
        });
    }
    out
}

/// Destroys every TCP connection (listeners and TIME_WAIT aside) and UDP
/// socket of the runners' cgroups, except those `keep` names.
pub fn end(cgroups: &RunnerCgroups, keep: &(dyn Fn(u32, &Socket) -> bool + Sync)) -> Ended {
    let namespaces = namespaces(cgroups);
    // A dump walks the kernel's whole socket hash table, whatever the
    // family asked for: one thread per namespace and family, in parallel.
    let results: Vec<Ended> = std::thread::scope(|scope| {
        let workers: Vec<_> = namespaces
            .iter()
            .flat_map(|ns| [(ns, libc::AF_INET as u8), (ns, libc::AF_INET6 as u8)])
            .map(|(ns, family)| scope.spawn(move || end_in(ns, family, cgroups, keep)))
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
        all.destroyed += one.destroyed;
        all.kept += one.kept;
        all.failures.extend(one.failures);
        all
    })
}

/// [`end`] in one network namespace and family, on a thread that enters
/// the namespace.
fn end_in(
    ns: &File,
    family: u8,
    cgroups: &RunnerCgroups,
    keep: &(dyn Fn(u32, &Socket) -> bool + Sync),
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
            if keep(runner, &s) {
                ended.kept += 1;
                continue;
            }
            match diag.destroy(&s) {
                Ok(()) => ended.destroyed += 1,
                Err(e) => ended.failures.push(format!(
                    "destroy a socket to {}:{}: {e}",
                    s.peer, s.peer_port
                )),
            }
        }
    }
    ended
}

/// Whether the lockdown now in the maps still lets `socket` through: the
/// kernel's own verdict on its peer, over the pinned maps. What
/// `--keep-forge` keeps. An unconnected UDP socket has no peer; each of its
/// datagrams meets the verdict when sent, so it is kept too.
pub fn still_allowed(maps: &Maps, runner: u32, socket: &Socket) -> bool {
    if socket.peer.is_unspecified() && socket.protocol == libc::IPPROTO_UDP as u8 {
        return true;
    }
    let given = crate::compile::addr_of(socket.peer);
    let view = PeerView::read(maps, runner, egret_common::addr::normalize(given));
    let dst = Destination {
        given,
        port: socket.peer_port,
        proto: socket.protocol,
        family: if i32::from(socket.family) == libc::AF_INET {
            4
        } else {
            6
        },
        hook: egret_common::event::hook::CONNECT4,
        cgroup: socket.cgroup,
    };
    verdict::decide(&view, runner, &dst, monotonic_ns()) == Outcome::Allow
}

/// The pinned maps' answers for one runner and one destination, read
/// ahead so the verdict can borrow them. A question about anything else
/// finds nothing, which only ever refuses.
struct PeerView {
    runner: u32,
    target: Addr,
    state: Option<RunnerState>,
    own: Option<Lockdown>,
    global: Option<Lockdown>,
    baseline: Option<Baseline>,
    cidr: Option<PortRules>,
    learned: Option<Learned>,
    nat64: Option<Nat64Entry>,
}

impl PeerView {
    fn read(maps: &Maps, runner: u32, target: Addr) -> Self {
        use aya::maps::lpm_trie::Key;
        use egret_common::maps::{ADDR_BITS, CIDR_KEY_BITS};
        Self {
            runner,
            target,
            state: maps.runner_state(runner).ok(),
            own: maps.lockdown_of(runner).ok(),
            global: maps.lockdown_of(GLOBAL_RUNNER).ok(),
            baseline: maps.baseline.get(&Key::new(ADDR_BITS, target), 0).ok(),
            cidr: maps
                .cidrs
                .get(&Key::new(CIDR_KEY_BITS, CidrKey::new(runner, target)), 0)
                .ok(),
            learned: maps
                .learned
                .get(
                    &ExactKey {
                        runner,
                        addr: target,
                    },
                    0,
                )
                .ok(),
            nat64: maps.nat64.get(&Key::new(ADDR_BITS, target), 0).ok(),
        }
    }

    fn ours(&self, runner: u32, target: &Addr) -> bool {
        runner == self.runner && *target == self.target
    }
}

impl Lookup for PeerView {
    fn runner_state(&self, runner: u32) -> Option<&RunnerState> {
        (runner == self.runner)
            .then_some(self.state.as_ref())
            .flatten()
    }
    fn lockdown(&self, id: u32) -> Option<&Lockdown> {
        if id == GLOBAL_RUNNER {
            self.global.as_ref()
        } else if id == self.runner {
            self.own.as_ref()
        } else {
            None
        }
    }
    fn baseline(&self, target: &Addr) -> Option<Baseline> {
        (*target == self.target).then_some(self.baseline).flatten()
    }
    fn may_hold(&self, _runner: u32, _kind: u32, _slot: u32) -> bool {
        true
    }
    fn cidr(&self, runner: u32, target: &Addr) -> Option<&PortRules> {
        self.ours(runner, target)
            .then_some(self.cidr.as_ref())
            .flatten()
    }
    fn learned(&self, key: &ExactKey) -> Option<&Learned> {
        self.ours(key.runner, &key.addr)
            .then_some(self.learned.as_ref())
            .flatten()
    }
    fn listener_runner(&self, _dst: &Destination, _target: &Addr) -> Option<u32> {
        None
    }
    fn nat64(&self, target: &Addr) -> Option<&Nat64Entry> {
        (*target == self.target)
            .then_some(self.nat64.as_ref())
            .flatten()
    }
    fn job_peer(&self, _cgroup: u64, _target: &Addr) -> bool {
        false
    }
}
