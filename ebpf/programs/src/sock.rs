//! The `cgroup/sock*` hooks: which kinds of socket a job may create, and
//! which loopback listeners belong to the runner's own jobs.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::cgroup_sock,
    programs::SockContext,
};
use egret_common::{
    addr,
    event::{action, hook, reason},
    maps::{OwnedKey, Owner, counter},
    rules::proto,
    state::flags,
    verdict::{ALLOW, DENY, Destination},
};

use crate::{
    maps::{BOUND, DNS_ORIGINS, OWNED, STATE, runner_id},
    report::{count, emit, task_origin},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;
const IPPROTO_SCTP: u32 = 132;

#[inline(always)]
fn socket_cookie(ctx: &SockContext) -> u64 {
    // SAFETY: the context pointer is the one the kernel passed in, which
    // this helper accepts in cgroup sock programs.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Refuses, at `socket()`, the kinds of socket the connect and sendmsg hooks
/// cannot police (raw, ping, SCTP, MPTCP, UDP-Lite, ...), unless the runner's
/// policy opts in. Programs that probe for MPTCP fall back to TCP.
#[cgroup_sock(sock_create)]
pub fn egret_sock_create(ctx: SockContext) -> i32 {
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY: the kernel hands the program a valid socket; the verifier
    // checks the field accesses.
    let (family, ty, protocol) = unsafe { ((*sk).family, (*sk).type_, (*sk).protocol) };
    if family != AF_INET && family != AF_INET6 {
        return ALLOW;
    }
    let runner = runner_id();
    let Some(state) = STATE.get(runner) else {
        count(runner, counter::ERRORS);
        return DENY;
    };
    let icmp =
        protocol == u32::from(proto::IPPROTO_ICMP) || protocol == u32::from(proto::IPPROTO_ICMPV6);
    let permitted = match (ty, protocol) {
        (SOCK_STREAM, p) if p == u32::from(proto::IPPROTO_TCP) => true,
        (SOCK_DGRAM, p) if p == u32::from(proto::IPPROTO_UDP) => true,
        // Ping sockets: connect is judged by the connect hooks, an
        // unconnected sendto by the egress backstop.
        (SOCK_DGRAM, _) if icmp => true,
        (SOCK_RAW, _) => state.has(flags::SOCK_RAW),
        (_, IPPROTO_SCTP) => state.has(flags::SOCK_SCTP),
        _ => false,
    };
    if permitted {
        return ALLOW;
    }
    count(runner, counter::DENIED_SOCKET_KIND);
    let dst = Destination {
        netns: 0,
        given: [0; 16],
        port: 0,
        proto: if protocol > 255 { 255 } else { protocol as u8 },
        family: if family == AF_INET { 4 } else { 6 },
        hook: hook::SOCK_CREATE,
    };
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    emit(
        runner,
        &dst,
        reason::SOCKET_KIND,
        action::DENY,
        ty as u8,
        now,
        &task_origin(),
    );
    DENY
}

/// Remembers a listener a job opens on loopback (or on every address, which
/// includes loopback) so `loopback: own` lets the runner's jobs reach it and
/// nothing else on the host's loopback.
#[inline(always)]
fn note_listener(ctx: &SockContext, local_is_loopback_or_any: bool) -> i32 {
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY: a valid socket from the kernel; fields checked by the verifier.
    let (port, protocol) = unsafe { ((*sk).src_port, (*sk).protocol) };
    if local_is_loopback_or_any && port != 0 {
        let runner = runner_id();
        let key = OwnedKey {
            // SAFETY: as in socket_cookie.
            netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            port: port as u16,
            proto: protocol as u8,
            _pad: [0; 5],
        };
        if OWNED.insert(key, Owner { runner, _pad: 0 }, 0).is_err()
            || BOUND.insert(socket_cookie(ctx), key, 0).is_err()
        {
            // Full: the listener stays unreachable to the runner (fail closed).
            count(runner, counter::ERRORS);
        }
    }
    ALLOW
}

#[cgroup_sock(post_bind4)]
pub fn egret_post_bind4(ctx: SockContext) -> i32 {
    // SAFETY: as in note_listener.
    let ip = unsafe { (*ctx.sock).src_ip4 }.to_ne_bytes();
    note_listener(&ctx, ip[0] == 127 || ip == [0, 0, 0, 0])
}

#[cgroup_sock(post_bind6)]
pub fn egret_post_bind6(ctx: SockContext) -> i32 {
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY: as in note_listener; one 32-bit word at a time.
    let words = unsafe {
        [
            (*sk).src_ip6[0],
            (*sk).src_ip6[1],
            (*sk).src_ip6[2],
            (*sk).src_ip6[3],
        ]
    };
    note_listener(&ctx, addr::is_loopback(&addr::from_words(words)))
}

/// Forgets a listener when its socket goes away, so a host service that
/// later binds the same port is not mistaken for the job's.
#[cgroup_sock(sock_release)]
pub fn egret_sock_release(ctx: SockContext) -> i32 {
    let cookie = socket_cookie(&ctx);
    let _ = DNS_ORIGINS.remove(cookie);
    // SAFETY: the entry is copied out at once; only this socket's release
    // removes it.
    let Some(key) = (unsafe { BOUND.get(cookie) }).copied() else {
        return ALLOW;
    };
    let runner = runner_id();
    // SAFETY: the pointer comes from a successful lookup and is read at
    // once; entries are plain integers.
    if OWNED
        .get_ptr(key)
        .is_some_and(|o| unsafe { (*o).runner } == runner)
    {
        let _ = OWNED.remove(key);
    }
    let _ = BOUND.remove(cookie);
    ALLOW
}
