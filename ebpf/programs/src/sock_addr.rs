//! The `cgroup/*4` and `cgroup/*6` sock_addr hooks: the verdict at
//! `connect()` and `sendmsg()`, and DNS, which goes to the runner's proxy
//! whatever resolver the job aimed at and comes back looking as if that
//! resolver had answered.

use aya_ebpf::{
    EbpfContext as _, bindings::bpf_sock_addr, helpers::bpf_get_netns_cookie,
    macros::cgroup_sock_addr, programs::SockAddrContext,
};
use egret_common::{
    addr::{self, Addr},
    event::{action, hook, reason},
    maps::{DnsOrigin, counter, sock_note},
    probe,
    rules::proto,
    state::flags,
    verdict::{ALLOW, DENY, Destination, Lock, is_dns, lock_of},
};

use crate::{
    maps::{Kernel, SOCKS, STATE, runner_id},
    report::{count, emit, judge, task_origin, verdict_clock},
    sock::AF_INET,
};

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
fn judge_v4(ctx: &SockAddrContext, hook: u8) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context; the
    // verifier checks the field accesses.
    let (ip, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    let mut dst = Destination {
        given: addr::mapped_v4(ip.to_ne_bytes()),
        port: u16::from_be(port as u16),
        proto: proto as u8,
        family: 4,
        hook,
        cgroup: 0,
    };
    if hook == hook::SENDMSG4 && ip == 0 && dst.port == 0 {
        return judge_connected_peer(ctx, &mut dst);
    }
    if ip.to_ne_bytes() == probe::ADDR_V4 && dst.proto == proto::IPPROTO_UDP {
        return answer_probe(ctx, dst.port);
    }
    if is_dns(&dst) {
        return redirect_dns(ctx, &dst, |proxy, port| write_v4(ctx, proxy, port));
    }
    judge_sent(ctx, &dst)
}

/// Judges a destination the job named, with the listeners its socket can
/// reach for `loopback: own`.
#[inline(always)]
fn judge_sent(ctx: &SockAddrContext, dst: &Destination) -> i32 {
    judge(&Kernel::for_socket(ctx.sock_addr), dst, task_origin)
}

/// `egret verify`'s probe (`egret_common::probe`): the answer is where the
/// datagram goes, by this runner's mode, or EPERM when the runner is locked
/// down or has no policy. Out of line, so the verifier checks it once.
#[inline(never)]
fn answer_probe(ctx: &SockAddrContext, port: u16) -> i32 {
    let runner = runner_id();
    let Some(state) = STATE.get(runner) else {
        return DENY;
    };
    let clock = verdict_clock();
    if !state.has(flags::CONFIGURED)
        || lock_of(&Kernel::MAPS, runner, || clock.now()) != Some(Lock::Open)
    {
        return DENY;
    }
    let answer = if state.has(flags::AUDIT) {
        probe::AUDITING_V4
    } else {
        probe::ENFORCING_V4
    };
    write_v4(ctx, &addr::mapped_v4(answer), port);
    ALLOW
}

/// A `sendmsg` with control messages (IP_TOS for ECN, say) on a connected
/// UDP socket reaches the hook with no address at all: the datagram goes to
/// the socket's connected peer, so that is what is judged. Nothing is
/// redirected here: without an address the kernel would ignore a rewrite,
/// so a peer on port 53 is judged like any other (a socket connected to a
/// resolver was sent to the proxy at connect, and its peer is the proxy).
#[inline(always)]
fn judge_connected_peer(ctx: &SockAddrContext, dst: &mut Destination) -> i32 {
    // SAFETY: a valid context; `sk` is the socket the call is made on,
    // never null in sock_addr programs, and the verifier checks the field
    // accesses.
    // Each field is read with a load of its own: the verifier refuses
    // arithmetic on a socket pointer, which the compiler would otherwise
    // emit for reads it moves into branches.
    let (family, ip4, ip6, port) = unsafe {
        let sk = (*ctx.sock_addr).__bindgen_anon_1.sk;
        (
            core::ptr::read_volatile(&raw const (*sk).family),
            core::ptr::read_volatile(&raw const (*sk).dst_ip4),
            [
                core::ptr::read_volatile(&raw const (*sk).dst_ip6[0]),
                core::ptr::read_volatile(&raw const (*sk).dst_ip6[1]),
                core::ptr::read_volatile(&raw const (*sk).dst_ip6[2]),
                core::ptr::read_volatile(&raw const (*sk).dst_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*sk).dst_port),
        )
    };
    dst.given = if family == AF_INET {
        addr::mapped_v4(ip4.to_ne_bytes())
    } else {
        addr::from_words(ip6)
    };
    dst.port = u16::from_be(port);
    judge_sent(ctx, dst)
}

#[inline(always)]
fn judge_v6(ctx: &SockAddrContext, hook: u8) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as in judge_v4.
    let (port, proto) = unsafe { ((*sa).user_port, (*sa).protocol) };
    let mut dst = Destination {
        given: user_ip6(ctx),
        port: u16::from_be(port as u16),
        proto: proto as u8,
        family: 6,
        hook,
        cgroup: 0,
    };
    if hook == hook::SENDMSG6 && dst.given == [0; 16] && dst.port == 0 {
        return judge_connected_peer(ctx, &mut dst);
    }
    if is_dns(&dst) {
        return redirect_dns(ctx, &dst, |proxy, port| write_v6(ctx, proxy, port));
    }
    judge_sent(ctx, &dst)
}

/// A job may bind a loopback or wildcard address only where no one else
/// listens: joining another runner's or a host service's listener
/// (`SO_REUSEPORT`) would take a share of its connections and make its
/// address look like the job's own to `loopback: own`.
#[cgroup_sock_addr(bind4)]
pub fn egret_bind4(ctx: SockAddrContext) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as in judge_v4.
    let (ip, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    check_bind(&ctx, addr::mapped_v4(ip.to_ne_bytes()), port, proto, 4)
}

#[cgroup_sock_addr(bind6)]
pub fn egret_bind6(ctx: SockAddrContext) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as in judge_v4.
    let (port, proto) = unsafe { ((*sa).user_port, (*sa).protocol) };
    check_bind(&ctx, user_ip6(&ctx), port, proto, 6)
}

#[inline(always)]
fn check_bind(ctx: &SockAddrContext, local: Addr, port_be: u32, proto: u32, family: u8) -> i32 {
    let local = addr::normalize(local);
    let port = u16::from_be(port_be as u16);
    // Port 0 takes a free port: nothing listens there.
    if port == 0 || !addr::is_loopback(&local) {
        return ALLOW;
    }
    let dst = Destination {
        given: local,
        port,
        proto: proto as u8,
        family,
        hook: hook::BIND,
        cgroup: 0,
    };
    let runner = runner_id();
    // Whoever a connect to this address reaches now.
    let reached = addr::reached_by_connect(&local);
    match Kernel::for_socket(ctx.sock_addr).listener(&dst, &reached) {
        None => return ALLOW,
        Some(owner) if owner == Some(runner) => return ALLOW,
        Some(_) => {}
    }
    count(runner, counter::DENIED_LATERAL);
    emit(
        runner,
        &dst,
        reason::LATERAL,
        action::DENY,
        0,
        &task_origin(),
    );
    DENY
}

#[inline(always)]
fn netns_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the context pointer is the one the kernel passed in, which
    // this helper accepts in sock_addr programs.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// The socket a sock_addr program runs for, as `bpf_sk_storage_get`
/// takes it.
#[inline(always)]
fn socket(ctx: &SockAddrContext) -> *mut core::ffi::c_void {
    // SAFETY: a valid context; `sk` is never null in sock_addr programs.
    unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk.cast() }
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

#[inline(always)]
fn write_v4(ctx: &SockAddrContext, a: &Addr, port: u16) {
    // SAFETY: the v4 hooks that call this may rewrite the address.
    unsafe {
        (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        (*ctx.sock_addr).user_port = u32::from(port.to_be());
    }
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

#[inline(always)]
fn restore_peer_v6(ctx: &SockAddrContext) {
    // SAFETY: a valid context; the verifier checks the field access.
    let port = unsafe { (*ctx.sock_addr).user_port };
    if let Some(origin) = proxied_origin(ctx, user_ip6(ctx), port) {
        write_v6(ctx, &origin.addr, origin.port);
    }
}

/// The resolver a socket's DNS query was redirected from, when `peer` is
/// this runner's proxy.
#[inline(always)]
fn proxied_origin(ctx: &SockAddrContext, peer: Addr, port_be: u32) -> Option<DnsOrigin> {
    let state = STATE.get(runner_id())?;
    if !state.is_dns_proxy(&addr::normalize(peer), u16::from_be(port_be as u16)) {
        return None;
    }
    // SAFETY: the context's own socket; the note is copied out at once.
    let note = unsafe { *SOCKS.note(socket(ctx), false)? };
    (note.flags & sock_note::DNS_ORIGIN != 0).then_some(note.dns_origin)
}

/// Sends a DNS query, whatever resolver the job aimed it at, to the
/// runner's proxy, which answers only names the policy allows. Without a
/// proxy, or under a lockdown that keeps nothing, the query is refused.
#[inline(always)]
fn redirect_dns(ctx: &SockAddrContext, dst: &Destination, rewrite: impl FnOnce(&Addr, u16)) -> i32 {
    let runner = runner_id();
    let clock = verdict_clock();
    let refuse = |why: u8| {
        count(runner, counter::DENIED_DNS);
        emit(runner, dst, why, action::DENY, 0, &task_origin());
        DENY
    };
    let Some(state) = STATE.get(runner) else {
        count(runner, counter::ERRORS);
        return refuse(reason::DNS_REFUSED);
    };
    // `--keep-forge` keeps DNS: the forge is reached by name.
    match lock_of(&Kernel::MAPS, runner, || clock.now()) {
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
    let proxy: Addr = if netns_cookie(ctx) == state.host_netns {
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
    let origin = DnsOrigin {
        addr: dst.given,
        port: dst.port,
        _pad: [0; 6],
    };
    // SAFETY: the context's own socket.
    match unsafe { SOCKS.note(socket(ctx), true) } {
        // SAFETY: this socket's own note, from a successful lookup.
        Some(note) => unsafe {
            (*note).dns_origin = origin;
            (*note).flags |= sock_note::DNS_ORIGIN;
        },
        // The reply will show the proxy's address, which stub resolvers
        // reject: the lookup fails, closed.
        None => count(runner, counter::ERRORS),
    }
    rewrite(&proxy, state.dns_proxy_port);
    count(runner, counter::ALLOWED);
    ALLOW
}
