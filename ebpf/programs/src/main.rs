//! egret's kernel programs.
//!
//! One copy of this object is loaded per runner, with `RUNNER_ID` set at
//! load time, and attached to that runner's cgroup. The maps are pinned by
//! name, so every copy shares them and they outlive the agent.
//!
//! Every program fails closed: a missing map entry or a helper error
//! denies. The verdict itself lives in `egret_common::verdict`, shared with
//! the host tests; here are the hooks that feed it and act on it:
//! - `maps`: the map statics and the verdict's view of them;
//! - `sock_addr`: connect, sendmsg, bind, recvmsg and getpeername, and the
//!   DNS redirect to the runner's proxy;
//! - `sock`: socket creation and options, and which loopback listeners are
//!   the runner's;
//! - `skb`: the packet-level backstop;
//! - `report`: counters and events.
#![no_std]
#![no_main]

mod maps;
mod report;
mod skb;
mod sock;
mod sock_addr;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
