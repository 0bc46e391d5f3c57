//! `cargo xtask bench reload`: applying 10,000 CIDRs, and a one-line edit.

use super::*;

pub(crate) fn bench_reload(runs: u32) -> ExitCode {
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
