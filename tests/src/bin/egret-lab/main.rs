//! `cargo xtask demo` and `cargo xtask bench`: the demo job and the
//! benchmarks, run in the test world (fresh network namespaces).

mod bench;
mod bench_connect;
mod bench_dns;
mod bench_hooks;
mod bench_lockdown;
mod bench_reload;
mod bench_stream;
mod demo;
mod demo_learn;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use egret_common::{
    maps::{ExactKey, Learned},
    rules::{PortRule, PortRules, proto},
};
use egret_tests::{
    agent::{Agent, Pins},
    cgroup::TestCgroup,
    job,
    world::{self, World},
};

#[derive(Parser)]
#[command(about = "egret demo and benchmarks, inside network namespaces of their own")]
struct Lab {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A scripted job against the demo policy: one allowed connection and
    /// each kind of denial, then the events the agent emitted.
    Demo {
        #[arg(long)]
        policy: PathBuf,
    },
    /// Time from the start of `egret lockdown` to the first EPERM seen by a
    /// job that connects in a tight loop.
    BenchLockdown {
        #[arg(long, default_value_t = 50)]
        runs: u32,
    },
    /// Time to apply a policy of 10,000 CIDRs from scratch, and a one-line
    /// change to it, through `egret reload`.
    BenchReload {
        #[arg(long, default_value_t = 10)]
        runs: u32,
    },
    /// TCP bulk throughput from a job cgroup without egret and with egret,
    /// whose egress backstop sees every packet.
    BenchStream {
        #[arg(long, default_value_t = 6)]
        rounds: u32,
        /// Megabytes per round.
        #[arg(long, default_value_t = 400)]
        megabytes: u32,
    },
    /// Kernel time of each egret program per call and per operation (BPF
    /// run-time statistics), for short connections, UDP datagrams and a
    /// bulk stream, under a small policy and under 10,000 CIDRs plus
    /// 10,000 learned addresses.
    BenchHooks {
        /// Short connections of the connect workload; at least 1,000, as
        /// the floor per call is read from the sockets they create.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1_000..))]
        connects: u32,
        /// Datagrams of the UDP workload.
        #[arg(long, default_value_t = 100_000)]
        datagrams: u32,
        /// Megabytes of the bulk stream.
        #[arg(long, default_value_t = 200)]
        megabytes: u32,
    },
    /// DNS through the runner's proxy: latency at a fixed rate and
    /// throughput, against the resolver asked directly.
    BenchDns {
        /// Queries per second of the latency runs.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// Milliseconds per run.
        #[arg(long, default_value_t = 3000)]
        ms: u64,
        /// Clients of the throughput runs, each asking again once answered.
        #[arg(long, default_value_t = 16)]
        clients: u32,
        /// Rounds; each runs every path once, in turn.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Ask the same name every time (lets dnsmasq merge identical
        /// queries in flight).
        #[arg(long)]
        one_name: bool,
    },
    /// TCP connects/s from a job cgroup with no filter, with egret holding
    /// 10,000 CIDRs and 10,000 learned addresses, and with an nftables
    /// ruleset matching the cgroup against the same CIDRs, side by side.
    BenchConnect {
        /// Runs, each giving one figure per side; their spread says how
        /// stable the figure is.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Rounds per run; a round measures every side once, in turn, and
        /// a run's figure is the median of its rounds' ratios. Many short
        /// rounds track the machine's drift better than a few long ones:
        /// this VM's speed wanders by a third within seconds, and sides
        /// measured a millisecond apart see the same machine.
        #[arg(long, default_value_t = 3001)]
        rounds: u32,
        /// Connects per side and round.
        #[arg(long, default_value_t = 50)]
        connects: u32,
        /// Also write every round's figures to this CSV file (run, round,
        /// side, ns per connect by wall clock and by the job's CPU clock).
        #[arg(long, value_name = "FILE")]
        raw: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "egret-lab needs root: it creates network namespaces and cgroups and loads BPF programs"
        );
        return ExitCode::from(2);
    }
    match Lab::parse().command {
        Command::Demo { policy } => demo(&policy),
        Command::BenchConnect {
            runs,
            rounds,
            connects,
            raw,
        } => bench_connect(runs, rounds, connects, raw),
        Command::BenchLockdown { runs } => bench_lockdown(runs),
        Command::BenchReload { runs } => bench_reload(runs),
        Command::BenchStream { rounds, megabytes } => bench_stream(rounds, megabytes),
        Command::BenchHooks {
            connects,
            datagrams,
            megabytes,
        } => bench_hooks(connects, datagrams, megabytes),
        Command::BenchDns {
            rate,
            ms,
            clients,
            rounds,
            one_name,
        } => bench_dns(rate, ms, clients, rounds, one_name),
    }
}

use bench::*;
use bench_connect::*;
use bench_dns::*;
use bench_hooks::*;
use bench_lockdown::*;
use bench_reload::*;
use bench_stream::*;
use demo::*;
