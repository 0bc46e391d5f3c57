//! The verdict every socket hook and the packet backstop share, written
//! once for the kernel and for host tests.
//!
//! The programs implement [`Lookup`] over their map statics; tests and the
//! agent implement it over plain maps, so the verdict order of the design
//! (lockdown, metadata, policy, loopback, lateral, default) is checked on
//! the host with no kernel at all.

use crate::{
    addr::{self, Addr},
    event::reason,
    maps::{Baseline, ExactKey, Learned, Nat64Entry, hint, lateral_kind},
    rules::{PortRules, rules_flags},
    state::{GLOBAL_RUNNER, Lockdown, RunnerState, flags, lockdown_flags},
};

/// Return values of `cgroup/connect*` and `cgroup/sendmsg*` programs.
/// The kernel fails the syscall with EPERM.
pub const DENY: i32 = 0;
pub const ALLOW: i32 = 1;

/// What the verdict reads from the maps. Every lookup that finds nothing
/// returns `None`; the verdict treats a missing runner or lockdown entry
/// as a fault and denies.
pub trait Lookup {
    fn runner_state(&self, runner: u32) -> Option<&RunnerState>;
    /// The lockdown entry of `id` ([`GLOBAL_RUNNER`] for every runner).
    fn lockdown(&self, id: u32) -> Option<&Lockdown>;
    /// Longest-prefix match in the merged baseline: metadata, neighbours
    /// and DoH resolvers ([`crate::maps::merged_baseline`]).
    fn baseline(&self, target: &Addr) -> Option<Baseline>;
    /// Whether an entry of `kind` ([`crate::maps::hint`]) of `runner` may
    /// hold addresses of `slot`; `false` lets the verdict skip that lookup.
    fn may_hold(&self, runner: u32, kind: u32, slot: u32) -> bool;
    /// The runner's longest-prefix static CIDR entry for `target`.
    fn cidr(&self, runner: u32, target: &Addr) -> Option<&PortRules>;
    /// An address the runner's DNS answers taught it.
    fn learned(&self, key: &ExactKey) -> Option<&Learned>;
    /// The runner whose job bound the listener a connection to the
    /// loopback address `target` reaches, found as the kernel delivers it:
    /// in the socket's own network namespace, a specific address before a
    /// wildcard, a v6 wildcard taking IPv4 too. `None` for a host
    /// service's listener, or none.
    fn listener_runner(&self, dst: &Destination, target: &Addr) -> Option<u32>;
    /// The declared NAT64 prefix (other than the well-known `/96`)
    /// `target` lies in.
    fn nat64(&self, target: &Addr) -> Option<&Nat64Entry>;
    /// Whether `target` is a container of the same CI job as the caller's
    /// container (its cgroup `cgroup`, or the current task's when 0): a
    /// job and its service containers reach each other on any port.
    fn job_peer(&self, cgroup: u64, target: &Addr) -> bool;
}

/// A destination as a sock_addr hook (or the backstop) saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    /// What the job passed (v4 in mapped form), reported in events.
    pub given: Addr,
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// 4 or 6: the socket's family.
    pub family: u8,
    /// [`crate::event::hook`] code.
    pub hook: u8,
    /// The cgroup of the socket's owner when the hook knows it (the packet
    /// backstop); 0 in the socket hooks, which ask for the current task's
    /// only when it matters.
    pub cgroup: u64,
}

/// What the verdict decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    /// Denied, with the [`reason`] code.
    Deny(u8),
    /// Audit mode: let through, reported with the reason it would have had.
    Audit(u8),
    /// A map could not be read: denied as `not_allowed`, and counted as a
    /// program error.
    Fault,
}

/// What the lockdowns in force (of this runner, of every runner) leave open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    Open,
    /// Only rules marked `forge`, and DNS to reach the forge by name: every
    /// lockdown in force keeps the forge.
    ForgeOnly,
    Closed,
}

/// The lockdown state of `runner`; `None` when an entry cannot be read. The
/// clock is read only when a lockdown is active, for its deadline.
#[inline(always)]
pub fn lock_of<M: Lookup + ?Sized>(
    maps: &M,
    runner: u32,
    mut now: impl FnMut() -> u64,
) -> Option<Lock> {
    let (Some(own), Some(global)) = (maps.lockdown(runner), maps.lockdown(GLOBAL_RUNNER)) else {
        return None;
    };
    let active = |l: &Lockdown| l.flags & lockdown_flags::ACTIVE != 0;
    if !active(own) && !active(global) {
        return Some(Lock::Open);
    }
    let now = now();
    let (own_in_force, global_in_force) = (own.in_force(now), global.in_force(now));
    Some(if !own_in_force && !global_in_force {
        Lock::Open
    } else if (!own_in_force || own.keeps_forge()) && (!global_in_force || global.keeps_forge()) {
        Lock::ForgeOnly
    } else {
        Lock::Closed
    })
}

/// Whether `runner`'s job opened the listener a loopback `target`
/// reaches.
#[inline(always)]
fn owns_listener<M: Lookup + ?Sized>(
    maps: &M,
    runner: u32,
    dst: &Destination,
    target: &Addr,
) -> bool {
    maps.listener_runner(dst, &addr::reached_by_connect(target)) == Some(runner)
}

/// Whether the destination is DNS, which the hooks redirect to the
/// runner's proxy instead of judging.
#[inline(always)]
pub fn is_dns(dst: &Destination) -> bool {
    dst.port == crate::port::DNS
        && (dst.proto == crate::rules::proto::IPPROTO_TCP
            || dst.proto == crate::rules::proto::IPPROTO_UDP)
}

/// CLOCK_MONOTONIC, read on first use and then remembered: most verdicts
/// (a static CIDR, no lockdown) never need it, and none reads it twice.
pub struct Clock<F: Fn() -> u64> {
    read: F,
    at: core::cell::Cell<u64>,
}

impl<F: Fn() -> u64> Clock<F> {
    #[inline(always)]
    pub const fn new(read: F) -> Self {
        Self {
            read,
            at: core::cell::Cell::new(0),
        }
    }

    /// Nanoseconds; the first call reads the clock.
    #[inline(always)]
    pub fn now(&self) -> u64 {
        if self.at.get() == 0 {
            self.at.set((self.read)());
        }
        self.at.get()
    }
}

/// [`decide_at`] at a known time, for host code.
pub fn decide<M: Lookup + ?Sized>(maps: &M, runner: u32, dst: &Destination, now: u64) -> Outcome {
    decide_at(maps, runner, dst, &Clock::new(|| now))
}

/// The verdict order of the design: lockdown, metadata, policy, loopback,
/// lateral, default. The first match wins.
///
/// What it costs, cheapest first: the runner's state, both lockdown entries
/// and the hints are array slots; then at most one baseline trie lookup,
/// one learned hash lookup and one CIDR trie lookup, in that order, each
/// only where its hint says it may match, and the clock only for a learned
/// entry's expiry or an active lockdown.
#[inline(always)]
pub fn decide_at<M: Lookup + ?Sized, F: Fn() -> u64>(
    maps: &M,
    runner: u32,
    dst: &Destination,
    clock: &Clock<F>,
) -> Outcome {
    let Some(state) = maps.runner_state(runner) else {
        return Outcome::Fault;
    };
    if !state.has(flags::CONFIGURED) {
        return Outcome::Deny(reason::NOT_ALLOWED);
    }
    let forge_only = match lock_of(maps, runner, || clock.now()) {
        None => return Outcome::Fault,
        Some(Lock::Closed) => return Outcome::Deny(reason::LOCKDOWN),
        // Under lockdown only rules marked `forge` can still match.
        Some(Lock::ForgeOnly) => true,
        Some(Lock::Open) => false,
    };

    let mut target = addr::normalize(dst.given);
    // Behind a NAT64 prefix the policy declares, the destination is the
    // IPv4 address it carries, where its layout puts it. (The local-use
    // block, whose layout only the operator knows, is a lateral range
    // until it is declared.)
    if !addr::is_mapped_v4(&target)
        && let Some(prefix) = maps.nat64(&target)
        && let Some(v4) = addr::nat64_embedded(&target, prefix.layout)
    {
        target = addr::mapped_v4(v4);
    }

    // The runner's own DNS proxy, reached after a redirect (the backstop
    // sees the rewritten address) or directly.
    if state.is_dns_proxy(&target, dst.port) {
        return Outcome::Allow;
    }

    let slot = hint::slot(&target);
    let baseline = if maps.may_hold(GLOBAL_RUNNER, hint::CIDRS, slot) {
        maps.baseline(&target).unwrap_or_default()
    } else {
        Baseline::default()
    };
    if baseline.refuses_metadata(dst.port) {
        return Outcome::Deny(reason::METADATA);
    }

    let exact = ExactKey {
        runner,
        addr: target,
    };
    if maps.may_hold(runner, hint::LEARNED, slot)
        && let Some(learned) = maps.learned(&exact)
        && learned.rules.permits_with(dst.port, dst.proto, forge_only)
        && clock.now() < learned.expires_ns
    {
        return Outcome::Allow;
    }
    let mut lateral = baseline.lateral != lateral_kind::NONE;
    if maps.may_hold(runner, hint::CIDRS, slot)
        && let Some(rules) = maps.cidr(runner, &target)
        && (!lateral || rules.flags & rules_flags::LATERAL_OK != 0)
        && rules.permits_with(dst.port, dst.proto, forge_only)
    {
        return Outcome::Allow;
    }
    if forge_only {
        return Outcome::Deny(reason::LOCKDOWN);
    }

    if addr::is_loopback(&target) {
        if state.has(flags::LOOPBACK_ALLOW)
            || (!state.has(flags::LOOPBACK_DENY) && owns_listener(maps, runner, dst, &target))
        {
            return Outcome::Allow;
        }
        // A host service on loopback is a neighbour like any other.
        lateral = true;
    }

    // Last, as only a refusal pays for it: a container of the same CI job
    // (a service container, or the job's container seen from its service).
    if maps.job_peer(dst.cgroup, &target) {
        return Outcome::Allow;
    }

    let doh = baseline.lateral == lateral_kind::DOH;
    let why = if lateral && !doh {
        reason::LATERAL
    } else {
        reason::NOT_ALLOWED
    };
    if state.has(flags::AUDIT) {
        Outcome::Audit(why)
    } else {
        Outcome::Deny(why)
    }
}

#[cfg(test)]
mod tests;
