//! `egret agent`: the daemon.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use egret::{
    daemon::{self, AgentOptions},
    datapath::Pins,
    learned::TtlSettings,
};

use super::{Paths, chain};

#[derive(clap::Args)]
pub struct Args {
    /// Policy file, or a directory whose *.yaml files are merged.
    #[arg(long, value_name = "PATH")]
    pub policy: PathBuf,
    /// bpffs, state directory and control socket. A private bpffs is
    /// mounted at --bpffs when none is there.
    #[command(flatten)]
    pub paths: Paths,
    /// A group whose members may use the control socket besides root.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Resolver for runners whose policy names no `dns.upstream`; repeat
    /// for several. Default: the host's resolver configuration.
    #[arg(long = "dns-upstream", value_name = "IP")]
    pub dns_upstream: Vec<std::net::IpAddr>,
    /// Do not reload when the policy files change; only on SIGHUP or
    /// `egret reload`.
    #[arg(long)]
    pub no_watch: bool,
    /// Create runner cgroups that do not exist yet, instead of failing.
    /// Attaching to the cgroup before the runner places jobs in it means no
    /// job ever runs unguarded.
    #[arg(long)]
    pub create_cgroups: bool,
    /// Shortest time an address learned from DNS stays allowed, whatever TTL
    /// the answer carried (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::parse_duration)]
    pub ttl_floor: Duration,
    /// Longest time an answer is trusted before the name is resolved again.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = super::parse_duration)]
    pub ttl_cap: Duration,
    /// How long an address stays allowed after it dropped out of the answers,
    /// so connections opened just before are not cut.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::parse_duration)]
    pub grace: Duration,
    /// Most addresses one name keeps renewed through the DNS proxy (a CDN
    /// rotating through many); beyond it, the oldest lapse at their expiry.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub dns_max_ips_per_name: usize,
    /// Most addresses one runner's jobs may hold through the DNS proxy at
    /// once; past it their new names get SERVFAIL and a `quota` event, so
    /// no runner can fill the map every runner shares. Default: an equal
    /// share of the map for each runner of the policy.
    #[arg(long, value_name = "N")]
    pub dns_max_ips_per_runner: Option<usize>,
    /// The Docker Engine API socket. The agent follows its container and
    /// network events to let each CI job's containers (a build container
    /// and its services) reach each other and to name their job in events.
    /// When the socket is missing, the agent waits for it.
    #[arg(long, value_name = "PATH", default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,
    /// Do not watch Docker at all (shell executors, GitHub runners).
    #[arg(long)]
    pub no_docker: bool,
    /// Also append every event, one JSON object per line, to this file: a
    /// record that outlives the agent and needs no journald. At
    /// --events-file-max it becomes PATH.1 (replacing the one before).
    #[arg(long, value_name = "PATH")]
    pub events_file: Option<PathBuf>,
    /// Size at which the events file rotates (e.g. 64M, 1G).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub events_file_max: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics: per runner allowed,
    /// denied by reason, audited, DNS outcomes, map entries, lockdown; and
    /// reloads, lost events, build info. A bare port listens on loopback
    /// only (9464 is 127.0.0.1:9464). Off by default.
    #[arg(long, value_name = "ADDR", value_parser = egret::metrics::serve::parse_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `64M`, `1G`, `512K` or a plain number of bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with('K') => (t[..t.len() - 1].to_owned(), 1u64 << 10),
        t if t.ends_with('M') => (t[..t.len() - 1].to_owned(), 1 << 20),
        t if t.ends_with('G') => (t[..t.len() - 1].to_owned(), 1 << 30),
        t => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("'{s}' is not a size such as 64M, 1G or 4096"))
}

pub fn run(args: Args) -> ExitCode {
    // Held back, not lost: a SIGHUP before the agent's handler exists would
    // end it. The runtime's threads inherit the mask; the daemon lets it
    // through once its handler is in place, and a pending one is a reload.
    egret::daemon::hold_sighup();
    let socket_group = match args
        .socket_group
        .as_deref()
        .map(nix::unistd::Group::from_name)
    {
        None => None,
        Some(Ok(Some(group))) => Some(group.gid.as_raw()),
        Some(_) => {
            eprintln!(
                "egret agent: --socket-group {}: no such group",
                args.socket_group.unwrap_or_default()
            );
            return ExitCode::from(1);
        }
    };
    let opts = AgentOptions {
        policy: args.policy,
        pins: Pins::new(args.paths.bpffs),
        state_dir: args.paths.state_dir,
        socket: args.paths.socket,
        socket_group,
        create_cgroups: args.create_cgroups,
        watch: !args.no_watch,
        dns_upstream: args.dns_upstream,
        ttl: TtlSettings {
            floor: args.ttl_floor,
            cap: args.ttl_cap,
            grace: args.grace,
            max_ips_per_name: args.dns_max_ips_per_name,
            max_ips_per_runner: args.dns_max_ips_per_runner,
            ..TtlSettings::default()
        },
        docker_socket: (!args.no_docker).then_some(args.docker_socket),
        events_file: args.events_file.map(|p| (p, args.events_file_max)),
        metrics_listen: args.metrics_listen,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egret: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(daemon::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret agent: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
