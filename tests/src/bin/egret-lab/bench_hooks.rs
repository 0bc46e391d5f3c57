//! `cargo xtask bench hooks`: what each of egret's programs costs, per call
//! and per operation, from the kernel's own BPF statistics (run_time_ns
//! and run_cnt), which a noisy machine skews far less than a rate.

use std::collections::{BTreeMap, HashSet};

use super::*;

/// One program's counters at a moment.
#[derive(Clone, Copy, Default)]
struct Counters {
    run_ns: u64,
    runs: u64,
}

impl Counters {
    fn of(p: &aya::programs::ProgramInfo) -> Self {
        Self {
            run_ns: p.run_time().as_nanos() as u64,
            runs: p.run_count(),
        }
    }
}

/// The kernel's counters of the programs that use the maps pinned under
/// `pins`, so copies loaded by anything else on the machine never count.
fn snapshot(maps: &HashSet<u32>) -> BTreeMap<u32, (String, Counters)> {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| {
            p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.iter().any(|id| maps.contains(id)))
        })
        .map(|p| {
            // The kernel keeps 15 bytes of a program's name.
            let short = p.name_as_str().unwrap_or("?");
            let name = egret_common::programs::ALL
                .iter()
                .find(|full| full.starts_with(short))
                .map_or(short, |full| *full)
                .to_owned();
            (p.id(), (name, Counters::of(&p)))
        })
        .collect()
}

fn pinned_map_ids(pins: &Pins) -> HashSet<u32> {
    let dir = egret::datapath::Pins::new(&pins.bpffs).maps_dir();
    std::fs::read_dir(&dir)
        .expect("read the pinned maps")
        .flatten()
        .filter_map(|e| aya::maps::MapData::from_pin(e.path()).ok())
        .filter_map(|m| m.info().ok().map(|i| i.id()))
        .collect()
}

/// Per program: calls and nanoseconds spent between two snapshots.
fn delta(
    before: &BTreeMap<u32, (String, Counters)>,
    after: &BTreeMap<u32, (String, Counters)>,
) -> BTreeMap<String, Counters> {
    let mut out: BTreeMap<String, Counters> = BTreeMap::new();
    for (id, (name, a)) in after {
        let b = before.get(id).map(|(_, c)| *c).unwrap_or_default();
        let d = out.entry(name.clone()).or_default();
        d.run_ns += a.run_ns - b.run_ns;
        d.runs += a.runs - b.runs;
    }
    out.retain(|_, c| c.runs > 0);
    out
}

/// The floor: an empty `cgroup/sock_create` program (`return 1`) attached
/// beside egret's, so the same run measures what any program costs here
/// before it does anything (the statistics' own clock reads, the call).
struct EmptyProgram(egret_tests::bpf::Attached);

impl EmptyProgram {
    fn attach(cgroup_dir: &std::path::Path) -> Self {
        Self(egret_tests::bpf::attach_returning(
            egret_tests::bpf::SOCK_CREATE,
            1,
            "egret_floor",
            cgroup_dir,
        ))
    }

    fn counters(&self) -> Counters {
        aya::programs::loaded_programs()
            .flatten()
            .find(|p| p.id() == self.0.id)
            .map(|p| Counters::of(&p))
            .unwrap_or_default()
    }
}

struct Workload {
    title: &'static str,
    unit: &'static str,
    action: String,
    /// Operations the action performs (connections, datagrams), or `None`
    /// when they are packets, counted by the backstop's own calls.
    ops: Option<u64>,
}

pub(crate) fn bench_hooks(connects: u32, datagrams: u32, megabytes: u32) -> ExitCode {
    const CIDRS: u32 = 10_000;
    const EXACT: u32 = 10_000;
    // The statistics stay on while this fd is open.
    let _stats =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time stats");
    let workloads = [
        Workload {
            title: "short TCP connections (connect, accept, close)",
            unit: "connection",
            action: format!("connect-loop:{}:{connects}", world::BENCH_SINK),
            ops: Some(u64::from(connects)),
        },
        Workload {
            title: "unconnected UDP sendto",
            unit: "datagram",
            action: format!("sendto-loop:{}:{datagrams}", world::BENCH_UDP),
            ops: Some(u64::from(datagrams)),
        },
        Workload {
            title: "one bulk TCP stream",
            unit: "packet",
            action: format!("bulk:{}:{megabytes}", world::BENCH_DISCARD),
            ops: None,
        },
    ];
    println!(
        "egret bench hooks: kernel time per call of each program (BPF run-time statistics), jobs as uid 65534"
    );
    println!(
        "  \"above the floor\" subtracts what an empty program attached beside them costs per call in the same run"
    );
    for large in [false, true] {
        let world = World::new();
        widen_port_range(&world.host);
        let mut cgroup = TestCgroup::new("egret-bench");
        let guarded = cgroup.child("egret");
        let mut allow = String::from(
            "      - cidr: 203.0.113.10/32\n        ports: [9000, 9001]\n        proto: tcp\n      - cidr: 203.0.113.10/32\n        ports: [9002]\n        proto: udp\n",
        );
        if large {
            for i in 0..CIDRS {
                allow.push_str(&format!(
                    "      - cidr: 11.{}.{}.0/24\n        ports: [443]\n",
                    i / 256,
                    i % 256
                ));
            }
        }
        let (pins, _agent) = guard(&world, "bench", &guarded, &format!("    allow:\n{allow}"));
        let size = if large {
            let learned = load_exact_ips(&pins, EXACT);
            format!("{CIDRS} CIDRs and {learned} learned addresses")
        } else {
            "a small policy (2 CIDR entries)".to_owned()
        };
        let maps = pinned_map_ids(&pins);
        let floor = EmptyProgram::attach(&cgroup.dir("egret"));
        // A round to warm caches, the sink and the maps, not counted.
        let warm = format!("connect-loop:{}:2000", world::BENCH_SINK);
        assert!(job::one(&world.host, Some(&cgroup.procs("egret")), &warm).ok());
        // The floor per call, from the workload that creates the most
        // sockets (the empty program runs at each socket's creation).
        let mut empty_ns = None;
        for w in &workloads {
            let before = snapshot(&maps);
            let floor_before = floor.counters();
            let o = job::one(&world.host, Some(&cgroup.procs("egret")), &w.action);
            assert!(o.ok(), "{}: {o:?}", w.title);
            let spent = delta(&before, &snapshot(&maps));
            let floor_after = floor.counters();
            let empty_runs = floor_after.runs - floor_before.runs;
            if empty_ns.is_none() && empty_runs >= 1_000 {
                empty_ns =
                    Some((floor_after.run_ns - floor_before.run_ns) as f64 / empty_runs as f64);
            }
            let ops = w
                .ops
                .unwrap_or_else(|| spent.get("egret_egress").map_or(1, |c| c.runs.max(1)));
            print_table(
                &format!("{} under {size}", w.title),
                w.unit,
                ops,
                &spent,
                empty_ns.expect("the connect workload runs first"),
            );
        }
    }
    ExitCode::SUCCESS
}

fn print_table(
    title: &str,
    unit: &str,
    ops: u64,
    spent: &BTreeMap<String, Counters>,
    empty_ns: f64,
) {
    println!("\n  {title}: {ops} {unit}s");
    println!(
        "    {:<20} {:>9} {:>12} {:>15} {:>16}",
        "program",
        "calls",
        "ns per call",
        "above the floor",
        format!("ns per {unit}")
    );
    let (mut total, mut runs) = (0.0, 0);
    for (name, c) in spent {
        let per_call = c.run_ns as f64 / c.runs as f64;
        let per_op = c.run_ns as f64 / ops as f64;
        total += per_op;
        runs += c.runs;
        println!(
            "    {name:<20} {:>9} {per_call:>12.1} {:>15.1} {per_op:>16.1}",
            c.runs,
            per_call - empty_ns
        );
    }
    let floor = empty_ns * runs as f64 / ops as f64;
    println!(
        "    {:<20} {:>9} {:>12} {:>15.1} {total:>16.1}",
        "total",
        "",
        "",
        total - floor
    );
}
