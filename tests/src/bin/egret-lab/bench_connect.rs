//! `cargo xtask bench connect`: connect() rate with no filter, with egret,
//! and with what an operator would use instead: an nftables ruleset
//! matching the job's cgroup.

use std::io::Write as _;

use super::*;

const CIDRS: u32 = 10_000;
const EXACT: u32 = 10_000;

/// The 10,000 CIDRs both filters hold, as (second, third) octets of
/// 11.x.y.0/24.
fn cidr_octets() -> impl Iterator<Item = (u32, u32)> {
    (0..CIDRS).map(|i| (i / 256, i % 256))
}

pub(crate) fn bench_connect(runs: u32, rounds: u32, connects: u32) -> ExitCode {
    let world = World::new();
    // Benchmarks open many short connections; give the host namespace the
    // whole ephemeral range.
    world_sysctl(&world, "net.ipv4.ip_local_port_range", "1024 65535");
    let mut cgroup = TestCgroup::new("egret-bench");
    cgroup.child("bare");
    let guarded = cgroup.child("egret");
    let nft_cgroup = cgroup.child("nft");
    cgroup.child("hooks");
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
    let (pins, _agent) = guard(&world, "bench", &guarded, &format!("    allow:\n{allow}"));
    let loaded = load_exact_ips(&pins, EXACT);
    nftables_guard(&world, &cgroup, &nft_cgroup);
    // Both filters hold: the attacker is refused from either job cgroup
    // (EPERM from egret, a reject from nftables) and reached from the bare one.
    let attacker = format!("tcp:{}:443", world::ATTACKER);
    let tried = |rel: &str| job::one(&world.host, Some(&cgroup.procs(rel)), &attacker);
    assert!(tried("bare").ok(), "the attacker is reachable unfiltered");
    assert_eq!(
        tried("egret").errno,
        Some(libc::EPERM),
        "egret refuses the attacker"
    );
    let nft = tried("nft");
    assert_eq!(
        nft.errno,
        Some(libc::ECONNREFUSED),
        "nftables rejects the attacker: {nft:?}"
    );
    println!(
        "egret bench connect: {CIDRS} CIDRs in both filters, {loaded} learned addresses in egret's map"
    );
    println!(
        "  nftables: `socket cgroupv2 level N` on the job's cgroup, established flows first, metadata and lateral ranges rejected, the same {CIDRS} CIDRs as an interval set, then reject"
    );
    println!(
        "  empty programs: one that only allows on each of the hooks a short connection passes in egret (sock_create, connect4, setsockopt, egress)"
    );
    println!(
        "  target {} (a listener that accepts and closes); {runs} runs of {rounds} rounds of {connects} connects per side, the sides in turn",
        world::BENCH_SINK
    );

    let action = format!("connect-loop:{}:{connects}", world::BENCH_SINK);
    // Jobs (which inherit this process's affinity) on one CPU, the sink on
    // the others: a job and the sink then never take turns on one CPU,
    // which is most of the noise on a small machine.
    pin_to_last_cpu();
    // Each side's connects per second of wall time, and per second of the
    // job's own CPU time (where every hook runs, so it is what a filter
    // costs the job, however busy the rest of the machine is).
    let measure = |rel: &str| -> [f64; 2] {
        let o = job::one(&world.host, Some(&cgroup.procs(rel)), &action);
        assert!(o.ok(), "{rel}: {o:?}");
        let per = |ns: u64| f64::from(connects) / (ns as f64 / 1e9);
        [
            per(o.elapsed_ns.expect("elapsed")),
            per(o.cpu_ns.expect("cpu time")),
        ]
    };
    let sides = ["bare", "egret", "nft", "hooks"];
    // A round to warm caches and the sink, not counted.
    for side in sides {
        measure(side);
    }
    // [measure][filtered side][run]: each run's median ratio to bare.
    let mut per_run = [[const { Vec::new() }; 3], [const { Vec::new() }; 3]];
    let mut bare_rates = Vec::new();
    for run in 0..runs {
        let mut ratios = [[const { Vec::new() }; 3], [const { Vec::new() }; 3]];
        for round in 0..rounds {
            // Each side goes first as often as the others.
            let mut measured = [[0.0; 2]; 4];
            for k in 0..sides.len() {
                let side = (round as usize + k) % sides.len();
                measured[side] = measure(sides[side]);
            }
            bare_rates.push(measured[0][0]);
            for (m, ratios) in ratios.iter_mut().enumerate() {
                for (side, r) in ratios.iter_mut().enumerate() {
                    r.push(100.0 * measured[side + 1][m] / measured[0][m]);
                }
            }
        }
        for m in 0..2 {
            for side in 0..3 {
                per_run[m][side].push(median(&mut ratios[m][side]));
            }
        }
        println!(
            "  run {}: wall  egret {:>6.1}% of bare, nftables {:>6.1}%, empty programs {:>6.1}%\n         CPU   egret {:>6.1}% of bare, nftables {:>6.1}%, empty programs {:>6.1}%",
            run + 1,
            per_run[0][0][run as usize],
            per_run[0][1][run as usize],
            per_run[0][2][run as usize],
            per_run[1][0][run as usize],
            per_run[1][1][run as usize],
            per_run[1][2][run as usize],
        );
        let _ = std::io::stdout().flush();
    }
    let spread = |v: &[f64]| {
        v.iter().copied().fold(f64::MIN, f64::max) - v.iter().copied().fold(f64::MAX, f64::min)
    };
    println!(
        "  bare rate: {:.0} connects/s (median of every round)",
        median(&mut bare_rates)
    );
    let names = ["egret", "nftables", "empty programs"];
    for (m, what) in [
        "connects per second of wall time",
        "connects per second of the job's CPU time",
    ]
    .iter()
    .enumerate()
    {
        println!("  {what} (median of {runs} runs; spread: best minus worst run):");
        for (side, name) in names.iter().enumerate() {
            let target = if side == 0 { "; target >= 98%" } else { "" };
            let runs_of = &mut per_run[m][side];
            let spread = spread(runs_of);
            println!(
                "    {name:<15}{:>6.1}% of bare, spread {spread:.1} points{target}",
                median(runs_of)
            );
        }
    }
    ExitCode::SUCCESS
}

/// What a runner hardening guide has an operator write: in the job's
/// cgroup, established flows pass, metadata and neighbours are rejected,
/// and only the allowed CIDRs get through. Loaded in the world's host
/// namespace; nft resolves the cgroup below /sys/fs/cgroup, so where the
/// cgroup2 mount is elsewhere (a hybrid host) it runs in a mount namespace
/// of its own with the mount bound there.
fn nftables_guard(world: &World, cgroup: &TestCgroup, policy_path: &str) {
    let rel = policy_path.trim_start_matches('/');
    let level = rel.split('/').count();
    let mut allowed = String::from("203.0.113.0/24");
    for (b, c) in cidr_octets() {
        allowed.push_str(&format!(", 11.{b}.{c}.0/24"));
    }
    let ruleset = format!(
        "table inet egret_bench {{
  set blocked {{ type ipv4_addr; flags interval; elements = {{ 169.254.0.0/16, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 }} }}
  set allowed {{ type ipv4_addr; flags interval; elements = {{ {allowed} }} }}
  chain output {{
    type filter hook output priority filter; policy accept;
    socket cgroupv2 level {level} \"{rel}\" jump job
  }}
  chain job {{
    ct state established,related accept
    ip daddr @blocked reject
    ip daddr @allowed tcp dport {{ 443, 9000 }} accept
    reject
  }}
}}
"
    );
    let file = world.path("nft-bench.conf");
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
    let status = world.host.spawn(&mut cmd, None).wait().expect("nft");
    assert!(status.success(), "loading the nftables ruleset");
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
