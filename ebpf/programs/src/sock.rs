//! The `cgroup/sock*` hooks: which kinds of socket a job may create, which
//! options it may set, and which loopback listeners belong to the
//! runner's own jobs.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    macros::{cgroup_sock, cgroup_sockopt},
    programs::{SockContext, SockoptContext},
};
use egret_common::{
    addr::{self, Addr},
    event::{action, hook, reason},
    maps::{counter, sock_note},
    rules::proto,
    sockopt,
    state::flags,
    verdict::{ALLOW, DENY, Destination},
};

use crate::{
    maps::{SOCKS, STATE, runner_id},
    report::{count, emit, task_origin},
};

pub const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;
const IPPROTO_SCTP: u32 = 132;

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
    let icmp =
        protocol == u32::from(proto::IPPROTO_ICMP) || protocol == u32::from(proto::IPPROTO_ICMPV6);
    // The kinds every runner may create need no map at all.
    match (ty, protocol) {
        (SOCK_STREAM, p) if p == u32::from(proto::IPPROTO_TCP) => return ALLOW,
        (SOCK_DGRAM, p) if p == u32::from(proto::IPPROTO_UDP) => return ALLOW,
        // Ping sockets: connect is judged by the connect hooks, an
        // unconnected sendto by the egress backstop.
        (SOCK_DGRAM, _) if icmp => return ALLOW,
        _ => {}
    }
    let runner = runner_id();
    let Some(state) = STATE.get(runner) else {
        count(runner, counter::ERRORS);
        return DENY;
    };
    let permitted = match (ty, protocol) {
        (SOCK_RAW, _) => state.has(flags::SOCK_RAW),
        (_, IPPROTO_SCTP) => state.has(flags::SOCK_SCTP),
        _ => false,
    };
    if permitted {
        return ALLOW;
    }
    count(runner, counter::DENIED_SOCKET_KIND);
    let dst = Destination {
        given: [0; 16],
        port: 0,
        proto: if protocol > 255 { 255 } else { protocol as u8 },
        family: if family == AF_INET { 4 } else { 6 },
        hook: hook::SOCK_CREATE,
        cgroup: 0,
    };
    emit(
        runner,
        &dst,
        reason::SOCKET_KIND,
        action::DENY,
        ty as u8,
        &task_origin(),
    );
    DENY
}

/// Marks a socket a job binds to loopback (or to every address, which
/// includes loopback) as the runner's, so that `loopback: own` lets the
/// runner's jobs reach it once it listens: a connect asks the kernel which
/// listener it would reach and reads that socket's note. The note goes
/// away with the socket, so a host service that later binds the address is
/// never taken for the job's.
#[inline(always)]
fn note_listener(ctx: &SockContext, local: Addr) -> i32 {
    if !addr::is_loopback(&local) {
        return ALLOW;
    }
    let runner = runner_id();
    // SAFETY: a cgroup sock program passes its own context, the socket.
    match unsafe { SOCKS.note(ctx.as_ptr(), true) } {
        // SAFETY: this socket's own note, from a successful lookup.
        Some(note) => unsafe {
            (*note).runner = runner;
            (*note).flags |= sock_note::LISTENER;
        },
        // Unmarked, the listener is no one's: unreachable (fail closed).
        None => count(runner, counter::ERRORS),
    }
    ALLOW
}

#[cgroup_sock(post_bind4)]
pub fn egret_post_bind4(ctx: SockContext) -> i32 {
    // SAFETY: as in note_listener.
    let ip = unsafe { (*ctx.sock).src_ip4 }.to_ne_bytes();
    note_listener(&ctx, addr::mapped_v4(ip))
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
    note_listener(&ctx, addr::from_words(words))
}

/// Refuses the socket options that make the kernel carry job-chosen data
/// past every other hook (`egret_common::sockopt`); group membership only
/// unless the runner's policy sets `multicast: true`. Every other option
/// passes untouched.
#[cgroup_sockopt(setsockopt)]
pub fn egret_setsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: the kernel hands the program a valid sockopt context; the
    // verifier checks the field accesses.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    if sockopt::refused(level, optname, false).is_none() {
        return ALLOW;
    }
    let runner = runner_id();
    let Some(state) = STATE.get(runner) else {
        count(runner, counter::ERRORS);
        return DENY;
    };
    if sockopt::refused(level, optname, state.has(flags::MULTICAST)).is_none() {
        return ALLOW;
    }
    count(runner, counter::DENIED_SOCKET_OPTION);
    // SAFETY: as above; `sk` is the socket the option is set on.
    let family = unsafe { (*(*so).__bindgen_anon_1.sk).family };
    let dst = Destination {
        given: [0; 16],
        port: optname as u16,
        proto: level as u8,
        family: if family == AF_INET { 4 } else { 6 },
        hook: hook::SETSOCKOPT,
        cgroup: 0,
    };
    emit(
        runner,
        &dst,
        reason::SOCKET_OPTION,
        action::DENY,
        0,
        &task_origin(),
    );
    DENY
}
