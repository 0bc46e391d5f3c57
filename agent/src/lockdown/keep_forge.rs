//! What `--keep-forge` keeps: the kernel's own verdict on a socket's peer,
//! over the pinned maps, as the lockdown now in them answers it.

use egret_common::{
    addr::Addr,
    maps::{Baseline, CidrKey, ExactKey, Learned, Nat64Entry},
    rules::PortRules,
    state::{GLOBAL_RUNNER, Lockdown, RunnerState},
    verdict::{self, Destination, Lookup, Outcome},
};

use super::sock_diag::Socket;
use crate::{clock::monotonic_ns, datapath::Maps};

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
