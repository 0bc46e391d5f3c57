//! `cargo xtask bench connect`: connect() rate with no filter, with egret,
//! with what an operator would use instead (nftables rulesets matching the
//! job's cgroup, stateful and stateless), and with empty programs.

use std::io::Write as _;

use egret_tests::netns::Netns;

use super::*;

const CIDRS: u32 = 10_000;
const EXACT: u32 = 10_000;

/// The 10,000 CIDRs both filters hold, as (second, third) octets of
/// 11.x.y.0/24.
fn cidr_octets() -> impl Iterator<Item = (u32, u32)> {
    (0..CIDRS).map(|i| (i / 256, i % 256))
}

pub(crate) fn bench_connect(
    runs: u32,
    rounds: u32,
    connects: u32,
    raw: Option<std::path::PathBuf>,
) -> ExitCode {
    let mut raw = raw.map(|path| {
        let mut file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        let _ = writeln!(
            file,
            "run,round,side,wall_ns_per_connect,cpu_ns_per_connect"
        );
        file
    });
    let world = World::new();
    // nftables goes on twin hosts: its rules and conntrack act on a whole
    // namespace, and would tax every other side in the host's.
    let stateful_host = world.twin_host(1);
    let stateless_host = world.twin_host(2);
    for ns in [&world.host, &stateful_host, &stateless_host] {
        widen_port_range(ns);
    }
    let mut cgroup = TestCgroup::new("egret-bench");
    for side in ["bare", "egret", "nft", "nft-stateless", "hooks"] {
        cgroup.child(side);
    }
    // What the kernel's calls alone cost: a program that only allows, on
    // each hook a short connection passes through in egret.
    let _empty: Vec<_> = [
        egret_tests::bpf::SOCK_CREATE,
        egret_tests::bpf::CONNECT4,
        egret_tests::bpf::SETSOCKOPT,
        egret_tests::bpf::EGRESS,
    ]
    .into_iter()
    .map(|hook| egret_tests::bpf::attach_returning(hook, 1, "egret_empty", &cgroup.dir("hooks")))
    .collect();

    let mut allow =
        String::from("      - cidr: 203.0.113.0/24\n        ports: [9000]\n        proto: tcp\n");
    for (b, c) in cidr_octets() {
        allow.push_str(&format!(
            "      - cidr: 11.{b}.{c}.0/24\n        ports: [443]\n"
        ));
    }
    let (pins, _agent) = guard(
        &world,
        "bench",
        &cgroup.policy_path("egret"),
        &format!("    allow:\n{allow}"),
    );
    let loaded = load_exact_ips(&pins, EXACT);
    println!(
        "egret bench connect: {CIDRS} CIDRs in every filter, {loaded} learned addresses in egret's map"
    );
    println!(
        "  nftables: `socket cgroupv2 level N` on the job's cgroup, metadata and lateral ranges rejected, the same {CIDRS} CIDRs as an interval set, then reject; stateful with established flows accepted first (as hardening guides write it, which turns conntrack on), stateless without"
    );
    println!(
        "  each nftables ruleset is on a twin host: a namespace and veth of its own, wired as the host is"
    );
    println!(
        "  empty programs: one that only allows on each of the hooks a short connection passes in egret (sock_create, connect4, setsockopt, egress)"
    );
    println!(
        "  target {} (a listener that accepts and closes); {runs} runs of {rounds} rounds of {connects} connects per side, the sides in turn, each side a warm process of its own",
        world::BENCH_SINK
    );

    let action = format!("connect-rounds:{}:{connects}", world::BENCH_SINK);
    // Jobs (which inherit this process's affinity) on one CPU, the sink on
    // the others: a job and the sink then never take turns on one CPU,
    // which is most of the noise on a small machine.
    pin_to_last_cpu();
    let worker = |ns: &Netns, rel: &str| job::Worker::start(ns, Some(&cgroup.procs(rel)), &action);
    // Before any ruleset, every host unfiltered: the twins' paths equal the
    // host's, so what a ruleset costs is not a difference of wiring.
    let mut calibration = [
        worker(&world.host, "bare"),
        worker(&stateful_host, "bare"),
        worker(&stateless_host, "bare"),
    ];
    let calibrated = measure(
        &mut calibration,
        rounds.div_ceil(4),
        raw.as_mut(),
        "calibration",
    );
    println!(
        "  calibration, every host unfiltered: the twins at {:.1}% and {:.1}% of the host (median of paired rounds)",
        paired(&calibrated, 1, Clock::Wall),
        paired(&calibrated, 2, Clock::Wall),
    );
    drop(calibration);

    nftables_guard(&world, &stateful_host, &cgroup, "nft", true);
    nftables_guard(&world, &stateless_host, &cgroup, "nft-stateless", false);
    // Each filtered side: its name, where its job runs, its cgroup, and how
    // its filter refuses the attacker (EPERM from egret, a reject from
    // nftables; empty programs refuse nothing).
    let sides = [
        ("egret", &world.host, "egret", Some(libc::EPERM)),
        ("nftables", &stateful_host, "nft", Some(libc::ECONNREFUSED)),
        (
            "nft stateless",
            &stateless_host,
            "nft-stateless",
            Some(libc::ECONNREFUSED),
        ),
        ("empty programs", &world.host, "hooks", None),
    ];
    // Every filter holds: the attacker is refused from each filtered job
    // cgroup and reached from the bare one.
    let attacker = format!("tcp:{}:443", world::ATTACKER);
    let tried = |ns: &Netns, rel: &str| job::one(ns, Some(&cgroup.procs(rel)), &attacker);
    let bare = tried(&world.host, "bare");
    assert!(bare.ok(), "the attacker is reachable unfiltered: {bare:?}");
    for (name, ns, rel, refusal) in &sides {
        if let Some(refusal) = refusal {
            let o = tried(ns, rel);
            assert_eq!(
                o.errno,
                Some(*refusal),
                "{name} refuses the attacker: {o:?}"
            );
        }
    }

    let mut workers: Vec<_> = std::iter::once(worker(&world.host, "bare"))
        .chain(sides.iter().map(|(_, ns, rel, _)| worker(ns, rel)))
        .collect();
    // Rounds to warm caches, the sink and nftables' conntrack table, not
    // counted.
    measure(&mut workers, rounds.div_ceil(10), None, "");
    // [clock][filtered side]: each run's figure.
    let mut figures: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); sides.len()]; 2];
    let mut bare_rates = Vec::new();
    for run in 0..runs {
        let measured = measure(
            &mut workers,
            rounds,
            raw.as_mut(),
            &format!("run {}", run + 1),
        );
        bare_rates.extend(measured.iter().map(|r| 1e9 / r[0][Clock::Wall as usize]));
        for clock in [Clock::Wall, Clock::Cpu] {
            for (side, of_side) in figures[clock as usize].iter_mut().enumerate() {
                of_side.push(paired(&measured, side + 1, clock));
            }
        }
        let of_run = |clock: Clock| {
            sides
                .iter()
                .enumerate()
                .map(|(side, (name, ..))| {
                    format!(
                        "{name} {:>5.1}%",
                        figures[clock as usize][side][run as usize]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("  run {}: wall {}", run + 1, of_run(Clock::Wall));
        println!("         CPU  {}", of_run(Clock::Cpu));
        let _ = std::io::stdout().flush();
    }
    let spread = |v: &[f64]| {
        v.iter().copied().fold(f64::MIN, f64::max) - v.iter().copied().fold(f64::MAX, f64::min)
    };
    println!(
        "  bare rate: {:.0} connects/s (median of every round)",
        median(&mut bare_rates)
    );
    for (clock, what) in ["wall time", "the job's CPU time"].iter().enumerate() {
        println!(
            "  connects per second of {what}, as a share of bare's in the same round (median over rounds, then of {runs} runs; spread: best minus worst run):"
        );
        for (side, (name, ..)) in sides.iter().enumerate() {
            let target = if side == 0 {
                "; target >= 98%, spread < 2"
            } else {
                ""
            };
            let of_runs = &mut figures[clock][side];
            let spread = spread(of_runs);
            println!(
                "    {name:<15}{:>6.1}% of bare, spread {spread:.1} points{target}",
                median(of_runs)
            );
        }
    }
    ExitCode::SUCCESS
}

#[derive(Clone, Copy)]
enum Clock {
    Wall,
    Cpu,
}

/// Nanoseconds per connect of one side in one round, by wall clock and by
/// the job's CPU clock.
type PerConnect = [f64; 2];

/// `rounds` rounds; in each, every worker does its connects once, each
/// going first as often as the others. Rows are written to `raw` as CSV.
fn measure(
    workers: &mut [job::Worker],
    rounds: u32,
    mut raw: Option<&mut std::fs::File>,
    label: &str,
) -> Vec<Vec<PerConnect>> {
    let n = workers.len();
    (0..rounds)
        .map(|round| {
            let mut row = vec![[0.0; 2]; n];
            for k in 0..n {
                let side = (round as usize + k) % n;
                let o = workers[side].round();
                assert!(o.ok(), "side {side}: {o:?}");
                let count = o.count.expect("count") as f64;
                row[side] = [
                    o.elapsed_ns.expect("elapsed") as f64 / count,
                    o.cpu_ns.expect("cpu time") as f64 / count,
                ];
            }
            if let Some(raw) = raw.as_deref_mut() {
                for (side, [wall, cpu]) in row.iter().enumerate() {
                    let _ = writeln!(raw, "{label},{round},{side},{wall:.0},{cpu:.0}");
                }
            }
            row
        })
        .collect()
}

/// A side's rate as a percentage of side 0's, round by round, and the
/// median of that: each round's pair shares the machine's state of the
/// moment.
fn paired(rows: &[Vec<PerConnect>], side: usize, clock: Clock) -> f64 {
    let mut ratios: Vec<f64> = rows
        .iter()
        .map(|r| 100.0 * r[0][clock as usize] / r[side][clock as usize])
        .collect();
    median(&mut ratios)
}

/// What a runner hardening guide has an operator write: in the job's
/// cgroup, metadata and neighbours are rejected and only the allowed CIDRs
/// get through; `stateful`, established flows pass first, which turns
/// conntrack on for the namespace. Loaded in `ns`; nft resolves the cgroup
/// below /sys/fs/cgroup, so where the cgroup2 mount is elsewhere (a hybrid
/// host) it runs in a mount namespace of its own with the mount bound
/// there.
fn nftables_guard(world: &World, ns: &Netns, cgroup: &TestCgroup, rel: &str, stateful: bool) {
    let cgroup_path = cgroup.policy_path(rel);
    let cgroup_path = cgroup_path.trim_start_matches('/');
    let level = cgroup_path.split('/').count();
    let mut allowed = String::from("203.0.113.0/24");
    for (b, c) in cidr_octets() {
        allowed.push_str(&format!(", 11.{b}.{c}.0/24"));
    }
    let established = if stateful {
        "ct state established,related accept"
    } else {
        ""
    };
    let ruleset = format!(
        "table inet egret_bench {{
  set blocked {{ type ipv4_addr; flags interval; elements = {{ 169.254.0.0/16, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 }} }}
  set allowed {{ type ipv4_addr; flags interval; elements = {{ {allowed} }} }}
  chain output {{
    type filter hook output priority filter; policy accept;
    socket cgroupv2 level {level} \"{cgroup_path}\" jump job
  }}
  chain job {{
    {established}
    ip daddr @blocked reject
    ip daddr @allowed tcp dport {{ 443, 9000 }} accept
    reject
  }}
}}
"
    );
    let file = world.path(&format!("nft-{rel}.conf"));
    world::write_file(&file, &ruleset);
    let load = if cgroup.root == std::path::Path::new("/sys/fs/cgroup") {
        format!("nft -f {}", file.display())
    } else {
        format!(
            "mount --make-rprivate / && mount --bind {} /sys/fs/cgroup && nft -f {}",
            cgroup.root.display(),
            file.display()
        )
    };
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &load]);
    let status = ns.spawn(&mut cmd, None).wait().expect("nft");
    assert!(
        status.success(),
        "loading the nftables ruleset in {}",
        ns.name
    );
}

/// Keeps this process (and the jobs it starts) on the last CPU, when there
/// is more than one.
fn pin_to_last_cpu() {
    use nix::sched::{CpuSet, sched_setaffinity};
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return;
    }
    let mut set = CpuSet::new();
    if set.set(cpus - 1).is_ok() {
        let _ = sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}
