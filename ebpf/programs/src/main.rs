//! egret's kernel programs.
//!
//! One copy of this object is loaded per runner, with [`RUNNER_ID`] set at load
//! time, and attached to that runner's cgroup. The maps are pinned by name, so
//! every copy shares them and they outlive the agent.
//!
//! Every program fails closed: a missing map entry or a helper error denies.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_fullsock,
        bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SkBuffContext, SockAddrContext, SockContext},
};
use egret_common::{
    addr::{self, Addr},
    event::{Event, action, hook, reason},
    maps::{
        ADDR_BITS, BASELINE_CAPACITY, BaselineEntry, CIDR_KEY_BITS, CIDRS_CAPACITY, COUNTERS_LEN,
        CidrKey, DNS_ORIGINS_CAPACITY, DnsOrigin, EVENTS_BYTES, ExactKey, LEARNED_CAPACITY,
        Learned, OWNED_CAPACITY, OwnedKey, Owner, baseline_kind, counter, counter_index,
    },
    port,
    rules::{PortRules, rules_flags},
    state::{GLOBAL_RUNNER, Lockdown, MAX_RUNNERS, RunnerState, flags},
    verdict::{ALLOW, DENY},
};

/// Set by the agent for each runner's copy of the programs.
#[unsafe(no_mangle)]
static RUNNER_ID: u32 = 0;

#[map(name = "EGRET_STATE")]
static STATE: Array<RunnerState> = Array::pinned(MAX_RUNNERS, 0);

#[map(name = "EGRET_LOCKDOWN")]
static LOCKDOWN: Array<Lockdown> = Array::pinned(MAX_RUNNERS, 0);

#[map(name = "EGRET_CIDRS")]
static CIDRS: LpmTrie<CidrKey, PortRules> = LpmTrie::pinned(CIDRS_CAPACITY, 0);

#[map(name = "EGRET_LEARNED")]
static LEARNED: HashMap<ExactKey, Learned> = HashMap::pinned(LEARNED_CAPACITY, 0);

#[map(name = "EGRET_METADATA")]
static METADATA: LpmTrie<Addr, BaselineEntry> = LpmTrie::pinned(BASELINE_CAPACITY, 0);

#[map(name = "EGRET_LATERAL")]
static LATERAL: LpmTrie<Addr, BaselineEntry> = LpmTrie::pinned(BASELINE_CAPACITY, 0);

#[map(name = "EGRET_OWNED")]
static OWNED: HashMap<OwnedKey, Owner> = HashMap::pinned(OWNED_CAPACITY, 0);

/// Socket cookie → the OWNED key it holds: a released socket cannot read
/// its own port, but it can tell its cookie.
#[map(name = "EGRET_BOUND")]
static BOUND: HashMap<u64, OwnedKey> = HashMap::pinned(OWNED_CAPACITY, 0);

#[map(name = "EGRET_DNS_ORIG")]
static DNS_ORIGINS: LruHashMap<u64, DnsOrigin> = LruHashMap::pinned(DNS_ORIGINS_CAPACITY, 0);

#[map(name = "EGRET_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

#[map(name = "EGRET_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[cgroup_sock_addr(connect4)]
pub fn egret_connect4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, hook::CONNECT4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egret_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, hook::SENDMSG4)
}

#[cgroup_sock_addr(connect6)]
pub fn egret_connect6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, hook::CONNECT6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egret_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, hook::SENDMSG6)
}

/// A reply from the DNS proxy appears to come from the resolver the job
/// asked, or stub resolvers would drop it.
#[cgroup_sock_addr(recvmsg4)]
pub fn egret_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_peer_v4(&ctx);
    ALLOW
}

#[inline(always)]
fn restore_peer_v4(ctx: &SockAddrContext) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: a valid context; the verifier checks the field accesses.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    if let Some(origin) = proxied_origin(ctx, addr::mapped_v4(ip.to_ne_bytes()), port)
        && addr::is_mapped_v4(&origin.addr)
    {
        write_v4(ctx, &origin.addr, origin.port);
    }
}

#[cgroup_sock_addr(recvmsg6)]
pub fn egret_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_peer_v6(&ctx);
    ALLOW
}

/// As recvmsg for TCP: `getpeername` names the resolver the job dialled.
#[cgroup_sock_addr(getpeername4)]
pub fn egret_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_peer_v4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn egret_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_peer_v6(&ctx);
    ALLOW
}

#[inline(always)]
fn restore_peer_v6(ctx: &SockAddrContext) {
    // SAFETY: a valid context; the verifier checks the field access.
    let port = unsafe { (*ctx.sock_addr).user_port };
    if let Some(origin) = proxied_origin(ctx, user_ip6(ctx), port) {
        write_v6(ctx, &origin.addr, origin.port);
    }
}

/// The v6 address of a sock_addr context, read one 32-bit word at a time,
/// the only access size the verifier accepts for it.
#[inline(always)]
fn user_ip6(ctx: &SockAddrContext) -> Addr {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: a valid context; the verifier checks the field accesses.
    let words = unsafe {
        [
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        ]
    };
    addr::from_words(words)
}

/// The resolver a socket's DNS query was redirected from, when `peer` is
/// this runner's proxy.
#[inline(always)]
fn proxied_origin(ctx: &SockAddrContext, peer: Addr, port_be: u32) -> Option<DnsOrigin> {
    let runner = unsafe { core::ptr::read_volatile(&RUNNER_ID) };
    let state = STATE.get(runner)?;
    if !state.is_dns_proxy(&addr::normalize(peer), u16::from_be(port_be as u16)) {
        return None;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    unsafe { DNS_ORIGINS.get(cookie) }.copied()
}

#[inline(always)]
fn write_v6(ctx: &SockAddrContext, a: &Addr, port: u16) {
    let word = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    // SAFETY: the hooks that call this may rewrite the address, one 32-bit
    // word at a time.
    unsafe {
        (*ctx.sock_addr).user_ip6[0] = word(0);
        (*ctx.sock_addr).user_ip6[1] = word(4);
        (*ctx.sock_addr).user_ip6[2] = word(8);
        (*ctx.sock_addr).user_ip6[3] = word(12);
        (*ctx.sock_addr).user_port = u32::from(port.to_be());
    }
}

/// Sends a DNS query, whatever resolver the job aimed it at, to the
/// runner's proxy, which answers only names the policy allows. Without a
/// proxy, or under a lockdown that keeps nothing, the query is refused.
#[inline(always)]
fn redirect_dns(ctx: &SockAddrContext, dst: &Destination, rewrite: impl FnOnce(&Addr, u16)) -> i32 {
    let runner = unsafe { core::ptr::read_volatile(&RUNNER_ID) };
    let now = unsafe { bpf_ktime_get_ns() };
    let refuse = |why: u8| {
        count(runner, counter::DENIED_DNS);
        emit(runner, dst, why, action::DENY, 0, now, &task_origin());
        DENY
    };
    let Some(state) = STATE.get(runner) else {
        count(runner, counter::ERRORS);
        return refuse(reason::DNS_REFUSED);
    };
    // `--keep-forge` keeps DNS: the forge is reached by name.
    match lock_of(runner, || now) {
        None => {
            count(runner, counter::ERRORS);
            return refuse(reason::DNS_REFUSED);
        }
        Some(Lock::Closed) => return refuse(reason::LOCKDOWN),
        Some(Lock::ForgeOnly | Lock::Open) => {}
    }
    if !state.has(flags::CONFIGURED) || state.dns_proxy_port == 0 {
        return refuse(reason::DNS_REFUSED);
    }
    let v4_socket = dst.family == 4;
    let mapped = addr::is_mapped_v4(&dst.given);
    let proxy: Addr = if dst.netns == state.host_netns {
        if v4_socket || mapped {
            addr::mapped_v4([127, 0, 0, 1])
        } else {
            addr::LOOPBACK_V6
        }
    } else {
        let listen = state.dns_listen;
        // A v4 socket cannot reach a v6 address; a v6 socket reaches a v4
        // one in mapped form.
        if listen == [0; 16] || (v4_socket && !addr::is_mapped_v4(&listen)) {
            return refuse(reason::DNS_REFUSED);
        }
        listen
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let origin = DnsOrigin {
        addr: dst.given,
        port: dst.port,
        _pad: [0; 6],
    };
    if DNS_ORIGINS.insert(cookie, origin, 0).is_err() {
        // The reply will show the proxy's address, which stub resolvers
        // reject: the lookup fails, closed.
        count(runner, counter::ERRORS);
    }
    rewrite(&proxy, state.dns_proxy_port);
    count(runner, counter::ALLOWED);
    ALLOW
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
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
    let runner = unsafe { core::ptr::read_volatile(&RUNNER_ID) };
    let Some(state) = STATE.get(runner) else {
        count(runner, counter::ERRORS);
        return DENY;
    };
    let icmp = protocol == u32::from(egret_common::rules::proto::IPPROTO_ICMP)
        || protocol == u32::from(egret_common::rules::proto::IPPROTO_ICMPV6);
    let permitted = match (ty, protocol) {
        (SOCK_STREAM, p) if p == u32::from(egret_common::rules::proto::IPPROTO_TCP) => true,
        (SOCK_DGRAM, p) if p == u32::from(egret_common::rules::proto::IPPROTO_UDP) => true,
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

#[inline(always)]
fn owned_key(netns: u64, port: u16, proto: u8) -> OwnedKey {
    OwnedKey {
        netns,
        port,
        proto,
        _pad: [0; 5],
    }
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
        let runner = unsafe { core::ptr::read_volatile(&RUNNER_ID) };
        let key = owned_key(
            unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            port as u16,
            protocol as u8,
        );
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if OWNED.insert(key, Owner { runner, _pad: 0 }, 0).is_err()
            || BOUND.insert(cookie, key, 0).is_err()
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
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = DNS_ORIGINS.remove(cookie);
    // SAFETY: the entry is copied out at once; only this socket's release
    // removes it.
    let Some(key) = (unsafe { BOUND.get(cookie) }).copied() else {
        return ALLOW;
    };
    let runner = unsafe { core::ptr::read_volatile(&RUNNER_ID) };
    // SAFETY: a plain read of a value the program itself wrote.
    if OWNED
        .get_ptr(key)
        .is_some_and(|o| unsafe { (*o).runner } == runner)
    {
        let _ = OWNED.remove(key);
    }
    let _ = BOUND.remove(cookie);
    ALLOW
}

/// The packet-level backstop. TCP and UDP were judged at connect or sendmsg;
/// every other packet leaving a job's socket (ICMP from ping sockets, raw
/// sockets a runner opted into) is judged here by its IP header, whatever
/// the socket's family. Anything unreadable is dropped.
#[cgroup_skb(egress)]
pub fn egret_egress(ctx: SkBuffContext) -> i32 {
    backstop(&ctx).unwrap_or(DENY)
}

#[inline(always)]
fn backstop(ctx: &SkBuffContext) -> Result<i32, i64> {
    let first: u8 = ctx.load(0)?;
    // The fast path reads only what it needs: version, protocol, socket type.
    let (family, proto, l4) = match first >> 4 {
        4 => (4, ctx.load::<u8>(9)?, usize::from(first & 0x0f) * 4),
        6 => (6, ctx.load::<u8>(6)?, 40),
        _ => return Ok(DENY),
    };
    let tcp_or_udp = proto == egret_common::rules::proto::IPPROTO_TCP
        || proto == egret_common::rules::proto::IPPROTO_UDP;
    // TCP and UDP from TCP and UDP sockets were judged at connect or
    // sendmsg. A raw socket can craft them, so those are judged here.
    let skb = ctx.skb.skb;
    // SAFETY: the context's socket pointer, null-checked before use; the
    // verifier checks the accesses.
    let sock_type = unsafe {
        let sk = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            SOCK_RAW
        } else {
            let full = bpf_sk_fullsock(sk);
            if full.is_null() {
                SOCK_RAW
            } else {
                (*full).type_
            }
        }
    };
    // Established flows pass without lookups, except under lockdown, which
    // must cut connections opened before it too.
    if tcp_or_udp && sock_type != SOCK_RAW && !locked_down() {
        return Ok(ALLOW);
    }
    let given = if family == 4 {
        addr::mapped_v4(ctx.load::<[u8; 4]>(16)?)
    } else {
        ctx.load::<[u8; 16]>(24)?
    };
    let icmp = proto == egret_common::rules::proto::IPPROTO_ICMP
        || proto == egret_common::rules::proto::IPPROTO_ICMPV6;
    // Pinging the host itself reaches no service.
    if icmp && addr::is_loopback(&addr::normalize(given)) {
        return Ok(ALLOW);
    }
    let port = if tcp_or_udp {
        u16::from_be(ctx.load::<u16>(l4 + 2)?)
    } else {
        0
    };
    let dst = Destination {
        given,
        netns: 0,
        port,
        proto,
        family,
        hook: hook::EGRESS,
    };
    Ok(judge_from(&dst, || Origin {
        pid: 0,
        comm: [0; 16],
        cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
    }))
}

/// What the lockdowns in force (of this runner, of every runner) leave open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lock {
    Open,
    /// Only rules marked `forge`, and DNS to reach the forge by name: every
    /// lockdown in force keeps the forge.
    ForgeOnly,
    Closed,
}

/// The lockdown state of `runner`; `None` when the map cannot be read. The
/// clock is read only when a lockdown is active, for its deadline.
#[inline(always)]
fn lock_of(runner: u32, now: impl Fn() -> u64) -> Option<Lock> {
    let (Some(own), Some(global)) = (LOCKDOWN.get(runner), LOCKDOWN.get(GLOBAL_RUNNER)) else {
        return None;
    };
    let active = |l: &Lockdown| l.flags & egret_common::state::lockdown_flags::ACTIVE != 0;
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

/// Whether a lockdown of this runner, or of every runner, is in force.
#[inline(always)]
fn locked_down() -> bool {
    let runner = unsafe { core::ptr::read_volatile(&RUNNER_ID) };
    lock_of(runner, || unsafe { bpf_ktime_get_ns() }) != Some(Lock::Open)
}

/// The destination of a sock_addr call, as the job gave it.
struct Destination {
    /// What the job passed (v4 in mapped form), reported in events.
    given: Addr,
    /// The socket's network namespace, for loopback ownership.
    netns: u64,
    port: u16,
    proto: u8,
    family: u8,
    hook: u8,
}

#[inline(always)]
fn judge_v4(ctx: &SockAddrContext, hook: u8) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context; the
    // verifier checks the field accesses.
    let (ip, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    let dst = Destination {
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        given: addr::mapped_v4(ip.to_ne_bytes()),
        port: u16::from_be(port as u16),
        proto: proto as u8,
        family: 4,
        hook,
    };
    if is_dns(&dst) {
        return redirect_dns(ctx, &dst, |proxy, port| write_v4(ctx, proxy, port));
    }
    judge(&dst)
}

#[inline(always)]
fn write_v4(ctx: &SockAddrContext, a: &Addr, port: u16) {
    // SAFETY: the v4 hooks that call this may rewrite the address.
    unsafe {
        (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        (*ctx.sock_addr).user_port = u32::from(port.to_be());
    }
}

#[inline(always)]
fn is_dns(dst: &Destination) -> bool {
    dst.port == port::DNS
        && (dst.proto == egret_common::rules::proto::IPPROTO_TCP
            || dst.proto == egret_common::rules::proto::IPPROTO_UDP)
}

#[inline(always)]
fn judge_v6(ctx: &SockAddrContext, hook: u8) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as in judge_v4.
    let (port, proto) = unsafe { ((*sa).user_port, (*sa).protocol) };
    let dst = Destination {
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        given: user_ip6(ctx),
        port: u16::from_be(port as u16),
        proto: proto as u8,
        family: 6,
        hook,
    };
    if is_dns(&dst) {
        return redirect_dns(ctx, &dst, |proxy, port| write_v6(ctx, proxy, port));
    }
    judge(&dst)
}

enum Outcome {
    Allow,
    Deny(u8),
    Audit(u8),
}

#[inline(always)]
fn judge(dst: &Destination) -> i32 {
    judge_from(dst, task_origin)
}

/// Who an event is about: the task for socket hooks; for packets, which
/// carry no task, the socket's cgroup.
struct Origin {
    pid: u32,
    comm: [u8; 16],
    cgroup_id: u64,
}

#[inline(always)]
fn task_origin() -> Origin {
    Origin {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

#[inline(always)]
fn judge_from(dst: &Destination, origin: impl Fn() -> Origin) -> i32 {
    // SAFETY: a plain read of a load-time constant; volatile so the compiler
    // does not fold the default value in.
    let runner = unsafe { core::ptr::read_volatile(&RUNNER_ID) };
    let now = unsafe { bpf_ktime_get_ns() };
    match decide(runner, dst, now) {
        Outcome::Allow => {
            count(runner, counter::ALLOWED);
            ALLOW
        }
        Outcome::Audit(why) => {
            count(runner, counter::AUDITED);
            emit(runner, dst, why, action::AUDIT, 0, now, &origin());
            ALLOW
        }
        Outcome::Deny(why) => {
            count(runner, denial_counter(why));
            emit(runner, dst, why, action::DENY, 0, now, &origin());
            DENY
        }
    }
}

/// The verdict order of the design: lockdown, metadata, policy, loopback,
/// lateral, default. The first match wins.
#[inline(always)]
fn decide(runner: u32, dst: &Destination, now: u64) -> Outcome {
    let Some(state) = STATE.get(runner) else {
        count(runner, counter::ERRORS);
        return Outcome::Deny(reason::NOT_ALLOWED);
    };
    if !state.has(flags::CONFIGURED) {
        return Outcome::Deny(reason::NOT_ALLOWED);
    }
    let forge_only = match lock_of(runner, || now) {
        None => {
            count(runner, counter::ERRORS);
            return Outcome::Deny(reason::NOT_ALLOWED);
        }
        Some(Lock::Closed) => return Outcome::Deny(reason::LOCKDOWN),
        // Under lockdown only rules marked `forge` can still match.
        Some(Lock::ForgeOnly) => true,
        Some(Lock::Open) => false,
    };

    let target = addr::normalize(dst.given);

    // The runner's own DNS proxy, reached after a redirect (the backstop
    // sees the rewritten address) or directly.
    if state.is_dns_proxy(&target, dst.port) {
        return Outcome::Allow;
    }

    if let Some(entry) = METADATA.get(Key::new(ADDR_BITS, target))
        && (entry.exempt_port == 0 || entry.exempt_port != dst.port)
    {
        return Outcome::Deny(reason::METADATA);
    }

    let exact = ExactKey {
        runner,
        addr: target,
    };
    // SAFETY: the agent may rewrite the entry while we read it; a torn read
    // can only mix two values the agent wrote for this same key, both valid.
    if let Some(learned) = unsafe { LEARNED.get(exact) }
        && now < learned.expires_ns
        && learned.rules.permits_with(dst.port, dst.proto, forge_only)
    {
        return Outcome::Allow;
    }
    let guarded = LATERAL.get(Key::new(ADDR_BITS, target));
    let lateral = guarded.is_some();
    if let Some(rules) = CIDRS.get(Key::new(CIDR_KEY_BITS, CidrKey::new(runner, target)))
        && (!lateral || rules.flags & rules_flags::LATERAL_OK != 0)
        && rules.permits_with(dst.port, dst.proto, forge_only)
    {
        return Outcome::Allow;
    }
    if forge_only {
        return Outcome::Deny(reason::LOCKDOWN);
    }

    let mut lateral = lateral;
    if addr::is_loopback(&target) {
        let own = || {
            let key = owned_key(dst.netns, dst.port, dst.proto);
            // SAFETY: a plain read of a value the program itself wrote.
            OWNED
                .get_ptr(key)
                .is_some_and(|o| unsafe { (*o).runner } == runner)
        };
        if state.has(flags::LOOPBACK_ALLOW) || (!state.has(flags::LOOPBACK_DENY) && own()) {
            return Outcome::Allow;
        }
        // A host service on loopback is a neighbour like any other.
        lateral = true;
    }

    let doh = guarded.is_some_and(|e| e.kind == baseline_kind::DOH);
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

#[inline(always)]
const fn denial_counter(why: u8) -> u32 {
    match why {
        reason::METADATA => counter::DENIED_METADATA,
        reason::LATERAL => counter::DENIED_LATERAL,
        reason::LOCKDOWN => counter::DENIED_LOCKDOWN,
        reason::DNS_REFUSED => counter::DENIED_DNS,
        _ => counter::DENIED_NOT_ALLOWED,
    }
}

#[inline(always)]
fn count(runner: u32, kind: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(runner, kind)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Never blocks: a full ring buffer costs an event, counted, not a verdict.
#[inline(always)]
fn emit(
    runner: u32,
    dst: &Destination,
    why: u8,
    act: u8,
    sock_type: u8,
    now: u64,
    origin: &Origin,
) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        count(runner, counter::EVENTS_DROPPED);
        return;
    };
    slot.write(Event {
        time_ns: now,
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

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
