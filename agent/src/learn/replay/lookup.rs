//! The maps of a compiled plan as the verdict reads them, on the host: the
//! same `egret_common::verdict::decide` the kernel programs run, over
//! tries that answer with the longest matching prefix as the kernel's do.

use std::collections::HashMap;

use egret_common::{
    addr::{Addr, longest_match as longest},
    maps::{Baseline, ExactKey, Learned, Nat64Entry},
    rules::PortRules,
    state::{GLOBAL_RUNNER, Lockdown, RunnerState, flags},
    verdict::{Destination, Lookup},
};

use crate::compile::{Plan, TrieKey};

/// A candidate policy's maps, and the addresses its DNS answers taught so
/// far in the replay.
pub struct PlanMaps {
    states: HashMap<u32, RunnerState>,
    /// No lockdown: replay asks what the policy itself decides.
    open: Lockdown,
    baseline: Vec<(TrieKey, Baseline)>,
    nat64: Vec<(TrieKey, Nat64Entry)>,
    /// Per runner: (prefix length over the address, address, rules).
    cidrs: HashMap<u32, Vec<(u32, Addr, PortRules)>>,
    pub learned: HashMap<ExactKey, Learned>,
}

impl PlanMaps {
    /// Every runner judged as enforcing, whatever mode the candidate gives
    /// it: replay asks what enforcing it would break.
    pub fn new(plan: &Plan) -> Self {
        let mut cidrs: HashMap<u32, Vec<(u32, Addr, PortRules)>> = HashMap::new();
        for ((len, key), rules) in &plan.cidrs {
            cidrs
                .entry(u32::from_be_bytes(key.runner_be))
                .or_default()
                .push((len.saturating_sub(32), key.addr, *rules));
        }
        Self {
            states: plan
                .runners
                .iter()
                .map(|r| {
                    let mut state = r.state;
                    state.flags &= !flags::AUDIT;
                    (r.id, state)
                })
                .collect(),
            open: Lockdown::default(),
            baseline: plan.baseline().into_iter().collect(),
            nat64: plan.nat64.iter().map(|(k, v)| (*k, *v)).collect(),
            cidrs,
            learned: HashMap::new(),
        }
    }
}

impl Lookup for PlanMaps {
    fn runner_state(&self, runner: u32) -> Option<&RunnerState> {
        self.states.get(&runner)
    }
    fn lockdown(&self, id: u32) -> Option<&Lockdown> {
        (id == GLOBAL_RUNNER || self.states.contains_key(&id)).then_some(&self.open)
    }
    fn baseline(&self, t: &Addr) -> Option<Baseline> {
        longest(self.baseline.iter().map(|((l, a), v)| (*l, a, v)), t).copied()
    }
    /// Replay looks everything up: hints only save the kernel time.
    fn may_hold(&self, _runner: u32, _kind: u32, _slot: u32) -> bool {
        true
    }
    fn cidr(&self, runner: u32, t: &Addr) -> Option<&PortRules> {
        longest(
            self.cidrs.get(&runner)?.iter().map(|(l, a, v)| (*l, a, v)),
            t,
        )
    }
    fn learned(&self, key: &ExactKey) -> Option<&Learned> {
        self.learned.get(key)
    }
    /// A recording holds only refused or audited loopback connects, never
    /// the runner's own listeners, which were let through unreported.
    fn listener_runner(&self, _dst: &Destination, _target: &Addr) -> Option<u32> {
        None
    }
    fn nat64(&self, t: &Addr) -> Option<&Nat64Entry> {
        longest(self.nat64.iter().map(|((l, a), v)| (*l, a, v)), t)
    }
    /// Likewise a job's own service containers, reached unreported.
    fn job_peer(&self, _cgroup: u64, _target: &Addr) -> bool {
        false
    }
}
