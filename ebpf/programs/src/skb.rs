//! The packet-level backstop (`cgroup_skb/egress`).

use aya_ebpf::{
    helpers::{bpf_sk_fullsock, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use egret_common::{
    addr,
    event::hook,
    rules::proto,
    verdict::{DENY, Destination, Lock, lock_of},
};

use crate::{
    maps::{Kernel, runner_id},
    report::{Origin, judge, verdict_clock},
    sock::SOCK_RAW,
};

/// TCP and UDP were judged at connect or sendmsg; every other packet
/// leaving a job's socket (ICMP from ping sockets, raw sockets a runner
/// opted into) is judged here by its IP header, whatever the socket's
/// family. Anything unreadable is dropped.
#[cgroup_skb(egress)]
pub fn egret_egress(ctx: SkBuffContext) -> i32 {
    backstop(&ctx).unwrap_or(DENY)
}

/// `T` at `offset` from the IP header: read straight from the packet when
/// the headers are in its linear part (as they are for what a local socket
/// sends), through the copying helper otherwise.
#[inline(always)]
fn read<T: Copy>(ctx: &SkBuffContext, offset: usize) -> Result<T, i64> {
    // SAFETY: the context's own packet bounds; the verifier checks the
    // access against them.
    let (start, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if start + offset + core::mem::size_of::<T>() <= end {
        // SAFETY: within [data, data_end), just checked.
        Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
    } else {
        ctx.load(offset)
    }
}

/// One byte at `offset`, read as the first of two: for a one-byte read the
/// compiler turns the bounds check into a form the verifier learns no range
/// from (`end > p`). Every byte read here has another header byte after it.
#[inline(always)]
fn read_byte(ctx: &SkBuffContext, offset: usize) -> Result<u8, i64> {
    read::<[u8; 2]>(ctx, offset).map(|b| b[0])
}

#[inline(always)]
fn backstop(ctx: &SkBuffContext) -> Result<i32, i64> {
    let first = read_byte(ctx, 0)?;
    // The fast path reads only what it needs: version, protocol, socket type.
    let (family, ip_proto, l4) = match first >> 4 {
        4 => (4, read_byte(ctx, 9)?, usize::from(first & 0x0f) * 4),
        6 => (6, read_byte(ctx, 6)?, 40),
        _ => return Ok(DENY),
    };
    let tcp_or_udp = ip_proto == proto::IPPROTO_TCP || ip_proto == proto::IPPROTO_UDP;
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
    // A SYN-ACK answers a peer that connected in to one of the job's
    // listeners: that peer is judged as if the job had connected to it, so
    // a listener on 0.0.0.0 is no command channel for whoever reaches it.
    let passive_open = ip_proto == proto::IPPROTO_TCP
        && sock_type != SOCK_RAW
        && read_byte(ctx, l4 + 13)? & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
    // Established flows pass without lookups, except under lockdown, which
    // must cut connections opened before it too.
    if tcp_or_udp && sock_type != SOCK_RAW && !passive_open && !locked_down() {
        return Ok(egret_common::verdict::ALLOW);
    }
    let given = if family == 4 {
        addr::mapped_v4(read::<[u8; 4]>(ctx, 16)?)
    } else {
        read::<[u8; 16]>(ctx, 24)?
    };
    let icmp = ip_proto == proto::IPPROTO_ICMP || ip_proto == proto::IPPROTO_ICMPV6;
    // Pinging the host itself reaches no service; a client on loopback
    // connecting in is local, and was judged by its own hooks if a job.
    // (Under lockdown even that is refused, as every loopback connect is.)
    if (icmp || (passive_open && !locked_down())) && addr::is_loopback(&addr::normalize(given)) {
        return Ok(egret_common::verdict::ALLOW);
    }
    let port = if tcp_or_udp {
        u16::from_be(read::<u16>(ctx, l4 + 2)?)
    } else {
        0
    };
    // SAFETY: the skb the kernel passed in, which this helper accepts. The
    // socket's cgroup, not the current task's: a reply may be sent from
    // softirq, on behalf of no task at all.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let dst = Destination {
        given,
        port,
        proto: ip_proto,
        family,
        hook: hook::EGRESS,
        cgroup: cgroup_id,
    };
    Ok(judge(&Kernel::MAPS, &dst, || Origin {
        pid: 0,
        comm: [0; 16],
        cgroup_id,
    }))
}

/// TCP header flags.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether a lockdown of this runner, or of every runner, is in force.
#[inline(always)]
fn locked_down() -> bool {
    let clock = verdict_clock();
    lock_of(&Kernel::MAPS, runner_id(), || clock.now()) != Some(Lock::Open)
}
