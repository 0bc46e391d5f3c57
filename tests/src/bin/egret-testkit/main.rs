//! Helper processes of the test world:
//! - `serve tcp:ADDR udp:ADDR ...`: fixture servers; TCP answers with a banner
//!   line naming the address, UDP echoes.
//! - `dns ADDR ZONE LOG`: an authoritative DNS fixture for the test zone that
//!   appends every query it sees to LOG and re-reads ZONE on each query. An
//!   A value `FIRST-LAST` rotates through that range, one address per
//!   answer (a CDN); `FIRST+N` answers N consecutive addresses at once (a
//!   large answer, truncated over UDP so the client retries over TCP).
//! - `job ACTION...`: what a CI job does; one JSON outcome per action.
//!
//! Every mode first checks it is not in the test's initial network namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

mod actions {
    pub mod connect;
    pub mod dns;
    pub mod frames;
    pub mod sockets;
}
mod fixtures;

use actions::sockets::*;
use fixtures::*;

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(why) = assert_isolated() {
        eprintln!("egret-testkit: {why}");
        return ExitCode::from(3);
    }
    let Some((mode, rest)) = args.split_first() else {
        eprintln!("usage: egret-testkit serve|dns|job ...");
        return ExitCode::from(2);
    };
    match mode.as_str() {
        "serve" => serve(rest),
        "dns" => dns(rest),
        "job" => job(rest),
        other => {
            eprintln!("unknown mode {other}");
            ExitCode::from(2)
        }
    }
}

fn assert_isolated() -> Result<(), String> {
    let initial: u64 = std::env::var("EGRET_TEST_INITIAL_NETNS")
        .map_err(|_| {
            "EGRET_TEST_INITIAL_NETNS not set; run me through the test harness".to_owned()
        })?
        .parse()
        .map_err(|_| "EGRET_TEST_INITIAL_NETNS is not a number".to_owned())?;
    let here = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| e.to_string())?
        .ino();
    if here == initial {
        return Err("refusing to touch the network from the initial network namespace".into());
    }
    Ok(())
}

#[derive(serde::Serialize, Default)]
struct Outcome {
    action: String,
    result: &'static str,
    errno: Option<i32>,
    error: Option<String>,
    banner: Option<String>,
    pid: u32,
    elapsed_ns: Option<u64>,
    count: Option<u64>,
    oks: Option<u64>,
    eperms: Option<u64>,
    others: Option<u64>,
    /// DNS actions: the response code, the addresses answered, and where
    /// the reply came from as the job's socket reports it.
    rcode: Option<String>,
    answers: Option<Vec<String>>,
    peer: Option<String>,
    /// Load actions: latency percentiles and replies per second.
    p50_ns: Option<u64>,
    p99_ns: Option<u64>,
    qps: Option<u64>,
    /// Loops: the CPU time the looping thread spent, kernel time included
    /// (what the kernel's hooks cost lands here, whoever else is busy).
    cpu_ns: Option<u64>,
}

fn failure(action: &str, e: &std::io::Error) -> Outcome {
    Outcome {
        action: action.to_owned(),
        result: "error",
        errno: e.raw_os_error(),
        error: Some(e.to_string()),
        pid: std::process::id(),
        ..Default::default()
    }
}

fn success(action: &str) -> Outcome {
    Outcome {
        action: action.to_owned(),
        result: "ok",
        pid: std::process::id(),
        ..Default::default()
    }
}

const TIMEOUT: Duration = Duration::from_secs(3);

fn unspecified_for(dst: &SocketAddr) -> SocketAddr {
    if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("v4")
    } else {
        "[::]:0".parse().expect("v6")
    }
}

fn run_action(action: &str) -> Outcome {
    let (kind, rest) = action.split_once(':').unwrap_or((action, ""));
    if let Some(outcome) = actions::dns::run(action, kind, rest)
        .or_else(|| actions::connect::run(action, kind, rest))
        .or_else(|| actions::sockets::run(action, kind, rest))
        .or_else(|| actions::frames::run(action, kind, rest))
    {
        return outcome;
    }
    match kind {
        "sleep" => {
            std::thread::sleep(Duration::from_millis(rest.parse().expect("ms")));
            success(action)
        }
        other => panic!("unknown action {other}"),
    }
}

/// An address from an action's arguments.
fn parse(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("address {s}: {e}"))
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn job(actions: &[String]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    for a in actions {
        let o = run_action(a);
        let _ = writeln!(out, "{}", serde_json::to_string(&o).expect("json"));
        let _ = out.flush();
    }
    ExitCode::SUCCESS
}
