//! The `cgroup/sock*` hooks: which kinds of socket a job may create, which
//! options it may set, and which loopback listeners belong to the
//! runner's own jobs.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sockopt},
    programs::{SockContext, SockoptContext},
};
use egret_common::{
    addr::{self, Addr},
    event::{action, hook, reason},
    maps::{OWNED_PER_RUNNER, OwnedKey, Owner, counter, sock_note},
    rules::proto,
    sockopt,
    state::flags,
    verdict::{ALLOW, DENY, Destination},
};

use crate::{
    maps::{OWNED, OWNED_COUNTS, SOCKS, STATE, runner_id},
    report::{count, emit, task_origin},
};

pub const AF_INET: u32 = 2;
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
        netns: 0,
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

/// Remembers a listener a job opens on loopback (or on every address, which
/// includes loopback) so `loopback: own` lets the runner's jobs reach it and
/// nothing else on the host's loopback. An address already owned stays with
/// its owner: a job binding it too (`SO_REUSEPORT`) takes nothing away. A
/// runner past its share of the map ([`OWNED_PER_RUNNER`]) gets EPERM, so
/// no runner's jobs can fill it for the others.
#[inline(always)]
fn note_listener(ctx: &SockContext, local: Addr) -> i32 {
    if !addr::is_loopback(&local) {
        return ALLOW;
    }
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY: a valid socket from the kernel; fields checked by the verifier.
    let (port, protocol) = unsafe { ((*sk).src_port, (*sk).protocol) };
    if port == 0 {
        return ALLOW;
    }
    let runner = runner_id();
    // SAFETY: as in socket_cookie.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = OwnedKey::new(netns, local, port as u16, protocol as u8);
    if OWNED.get_ptr(key).is_some() {
        // Owned already, by this runner's other socket or another
        // runner's: nothing changes hands.
        return ALLOW;
    }
    let Some(held) = OWNED_COUNTS.get_ptr_mut(runner) else {
        count(runner, counter::ERRORS);
        return DENY;
    };
    // Take a place, then look: of binds racing on several CPUs for the
    // last place, none can see a count within the share once more than the
    // share is taken, so at most the share ever holds (some may all back
    // off instead: fail closed). Reading the add's own result would need
    // BPF v3 instructions; the object targets v1.
    add(held, 1);
    // SAFETY: as in `add`; a plain aligned read of a u64.
    if unsafe { core::ptr::read_volatile(held) } > OWNED_PER_RUNNER {
        add(held, u64::MAX);
        over_quota(runner, local, port as u16, protocol);
        return DENY;
    }
    let cookie = socket_cookie(ctx);
    let owner = Owner {
        runner,
        _pad: 0,
        cookie,
    };
    if OWNED.insert(key, owner, BPF_NOEXIST).is_err() {
        // Taken meanwhile, or the map is full: this socket owns nothing.
        add(held, u64::MAX);
        return ALLOW;
    }
    // SAFETY: a cgroup sock program passes its own context, the socket.
    match unsafe { SOCKS.note(ctx.as_ptr(), true) } {
        Some(note) => {
            // SAFETY: this socket's own note, from a successful lookup.
            unsafe {
                (*note).owned = key;
                (*note).flags |= sock_note::OWNS_LISTENER;
            }
        }
        None => {
            // Without its note the release could not find the entry:
            // undo, and the listener stays unreachable (fail closed).
            let _ = OWNED.remove(key);
            add(held, u64::MAX);
            count(runner, counter::ERRORS);
        }
    }
    ALLOW
}

/// Atomically adds `delta` (wrapping: `u64::MAX` takes one away).
#[inline(always)]
fn add(slot: *mut u64, delta: u64) {
    // SAFETY: `slot` is a value of a shared array map from a successful
    // lookup, so it stays valid while the program runs; every writer goes
    // through this atomic add.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, delta) };
}

#[inline(always)]
fn over_quota(runner: u32, local: Addr, port: u16, protocol: u32) {
    count(runner, counter::QUOTA);
    let dst = Destination {
        netns: 0,
        given: local,
        port,
        proto: protocol as u8,
        family: if addr::is_mapped_v4(&local) { 4 } else { 6 },
        hook: hook::POST_BIND,
        cgroup: 0,
    };
    emit(runner, &dst, reason::QUOTA, action::DENY, 0, &task_origin());
}

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

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

/// Forgets a listener when the socket that owns it goes away, so a host
/// service that later binds the same address is not mistaken for the job's.
/// A socket that owns none (nearly all) costs one lookup of its own note.
#[cgroup_sock(sock_release)]
pub fn egret_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: as in note_listener; the note is copied out at once.
    let Some(note) = (unsafe { SOCKS.note(ctx.as_ptr(), false) }).map(|n| unsafe { *n }) else {
        return ALLOW;
    };
    if note.flags & sock_note::OWNS_LISTENER == 0 {
        return ALLOW;
    }
    let cookie = socket_cookie(&ctx);
    // SAFETY: the pointer comes from a successful lookup and is read at
    // once; entries are plain integers.
    let owner = OWNED.get_ptr(note.owned).map(|o| unsafe { *o });
    if let Some(owner) = owner.filter(|o| o.cookie == cookie)
        && OWNED.remove(note.owned).is_ok()
        && let Some(held) = OWNED_COUNTS.get_ptr_mut(owner.runner)
    {
        add(held, u64::MAX);
    }
    ALLOW
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
        netns: 0,
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
