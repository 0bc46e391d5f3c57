//! `cargo xtask bench connect`: connect() rate with and without egret.

use super::*;

pub(crate) fn bench_connect(rounds: u32, connects: u32) -> ExitCode {
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
