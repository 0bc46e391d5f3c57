//! Counters and events: how a verdict becomes visible to the agent.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_ktime_get_coarse_ns, bpf_ktime_get_ns,
};
use egret_common::{
    event::{Event, action, reason},
    maps::{counter, counter_index},
    verdict::{ALLOW, Clock, DENY, Destination, Outcome, decide_at},
};

use crate::maps::{COUNTERS, EVENTS, Kernel, URGENT_EVENTS, runner_id};

/// Who an event is about: the task for socket hooks; for packets, which
/// carry no task, the socket's cgroup.
pub struct Origin {
    pub pid: u32,
    pub comm: [u8; 16],
    pub cgroup_id: u64,
}

/// The task that made the call a socket hook is judging.
#[inline(always)]
pub fn task_origin() -> Origin {
    Origin {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
        // SAFETY: a helper with no arguments, valid in every cgroup hook.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

#[inline(always)]
pub const fn denial_counter(why: u8) -> u32 {
    match why {
        reason::METADATA => counter::DENIED_METADATA,
        reason::LATERAL => counter::DENIED_LATERAL,
        reason::LOCKDOWN => counter::DENIED_LOCKDOWN,
        reason::DNS_REFUSED => counter::DENIED_DNS,
        _ => counter::DENIED_NOT_ALLOWED,
    }
}

#[inline(always)]
pub fn count(runner: u32, kind: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(runner, kind)) {
        // SAFETY: a per-CPU slot from a successful lookup; no other writer
        // runs on this CPU while the program does.
        unsafe { *slot += 1 };
    }
}

/// The clock verdicts read: CLOCK_MONOTONIC at the kernel tick, a plain
/// load where the precise clock costs a clock-source read. Learned entries
/// and lockdowns last seconds to hours; a tick more or less of either is
/// no matter.
#[inline(always)]
pub fn verdict_clock() -> Clock<impl Fn() -> u64> {
    // SAFETY: a helper with no arguments.
    Clock::new(|| unsafe { bpf_ktime_get_coarse_ns() })
}

/// Never blocks: a full ring buffer costs an event, counted, not a verdict.
/// Metadata and lockdown denials go to a ring of their own, so a flood of
/// ordinary denials never crowds them out.
#[inline(always)]
pub fn emit(runner: u32, dst: &Destination, why: u8, act: u8, sock_type: u8, origin: &Origin) {
    let ring = if reason::urgent(why) {
        &URGENT_EVENTS
    } else {
        &EVENTS
    };
    let Some(mut slot) = ring.reserve::<Event>(0) else {
        count(runner, counter::EVENTS_DROPPED);
        return;
    };
    slot.write(Event {
        // SAFETY: a helper with no arguments. Events keep the precise
        // clock: they are read against the agent's own.
        time_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: origin.cgroup_id,
        pid: origin.pid,
        runner,
        port: dst.port,
        family: dst.family,
        proto: dst.proto,
        reason: why,
        action: act,
        hook: dst.hook,
        sock_type,
        addr: dst.given,
        comm: origin.comm,
    });
    slot.submit(0);
}

/// Takes the shared verdict on `dst` for this runner, counts it, reports
/// denials and audits, and returns what the hook returns to the kernel.
#[inline(always)]
pub fn judge(maps: &Kernel, dst: &Destination, origin: impl Fn() -> Origin) -> i32 {
    let runner = runner_id();
    let (why, act) = match decide_at(maps, runner, dst, &verdict_clock()) {
        Outcome::Allow => {
            count(runner, counter::ALLOWED);
            return ALLOW;
        }
        Outcome::Audit(why) => (why, action::AUDIT),
        Outcome::Deny(why) => (why, action::DENY),
        Outcome::Fault => {
            count(runner, counter::ERRORS);
            (reason::NOT_ALLOWED, action::DENY)
        }
    };
    let audit = act == action::AUDIT;
    count(
        runner,
        if audit {
            counter::AUDITED
        } else {
            denial_counter(why)
        },
    );
    emit(runner, dst, why, act, 0, &origin());
    if audit { ALLOW } else { DENY }
}
