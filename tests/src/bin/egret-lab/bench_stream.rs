//! `cargo xtask bench stream`: bulk throughput with the egress backstop.

use super::*;

pub(crate) fn bench_stream(rounds: u32, megabytes: u32) -> ExitCode {
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
