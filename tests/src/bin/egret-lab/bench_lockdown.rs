//! `cargo xtask bench lockdown`: from `egret lockdown` starting to the job
//! seeing an error on every socket: a connection it holds open and its
//! next connect.

use super::*;

pub(crate) fn bench_lockdown(runs: u32) -> ExitCode {
    let world = World::new();
    widen_port_range(&world.host);
    let mut cgroup = TestCgroup::new("egret-bench");
    let guarded = cgroup.child("ci");
    let (_pins, _agent) = guard(
        &world,
        "ci",
        &guarded,
        "    allow:\n      - cidr: 203.0.113.10/32\n        ports: [9000, 9001]\n",
    );
    let action = format!(
        "lockdown-probe:{},{}:5000",
        world::BENCH_DISCARD,
        world::BENCH_SINK
    );
    let mut latencies = Vec::new();
    let (mut cut_runs, mut aborted) = (0, 0);
    for _ in 0..runs {
        let running = job::start(&world.host, Some(&cgroup.procs("ci")), &[&action]);
        // The job holds its connection and loops; wait until the sink has
        // seen it connect, so the lockdown lands mid-loop.
        world.wait_established(world::BENCH_DISCARD);
        let start = egret::clock::monotonic_ns();
        let out = egret_tests::agent::cli(&world, &["lockdown", "--runner", "ci"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let o = running.wait().remove(0);
        assert!(o.ok(), "{o:?}");
        if o.others.unwrap_or(0) > 0 {
            cut_runs += 1;
        }
        if o.errno == Some(libc::ECONNABORTED) {
            aborted += 1;
        }
        latencies.push(
            o.elapsed_ns
                .expect("time of the last error")
                .saturating_sub(start),
        );
        assert_eq!(egret_tests::agent::cli(&world, &["unlock"]).code, 0);
    }
    latencies.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "egret bench lockdown: {runs} runs, from `egret lockdown` starting to the job seeing an error on every socket (a connection held open, and its next connect)"
    );
    println!(
        "  median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, worst {:.2} ms (target: p99 < 10 ms)",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(*latencies.last().expect("runs > 0"))
    );
    println!(
        "  held connections ended with ECONNABORTED: {aborted} of {runs}; runs where a connect in flight timed out instead of failing: {cut_runs}"
    );
    ExitCode::SUCCESS
}
