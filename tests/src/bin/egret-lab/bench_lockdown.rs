//! `cargo xtask bench lockdown`: from `egret lockdown` to the first EPERM.

use super::*;

pub(crate) fn bench_lockdown(runs: u32) -> ExitCode {
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
        let start = egret::clock::monotonic_ns();
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
