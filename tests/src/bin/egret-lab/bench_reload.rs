//! `cargo xtask bench reload`: applying 10,000 CIDRs, and one-line edits,
//! in a policy directory where a generated preset of 10,000 CIDRs sits
//! beside the small hand-written policy that uses it.

use super::*;

pub(crate) fn bench_reload(runs: u32) -> ExitCode {
    const ENTRIES: u32 = 10_000;
    let world = World::new();
    let mut cgroup = TestCgroup::new("egret-bench");
    let guarded = cgroup.child("ci");
    let dir = world.path("policy.d");
    std::fs::create_dir_all(&dir).expect("policy dir");
    let generated_path = dir.join("generated.preset.yaml");
    let small_path = dir.join("policy.yaml");

    let mut generated = String::from(
        "preset: partner-ranges\nversion: 1\ndescription: generated, 10,000 CIDRs\nallow:\n",
    );
    for i in 0..ENTRIES {
        generated.push_str(&format!(
            "  - cidr: 11.{}.{}.0/24\n    ports: [443]\n",
            i / 256,
            i % 256
        ));
    }
    let generated_edited = format!("{generated}  - cidr: 12.0.0.0/24\n    ports: [443]\n");
    let small = |with_preset: bool, extra: bool| {
        let mut text = format!(
            "version: 1\nrunners:\n  - name: ci\n    cgroup: {guarded}\n    allow:\n      - cidr: 203.0.113.10/32\n        ports: [443]\n"
        );
        if with_preset {
            text.push_str("      - preset: partner-ranges\n");
        }
        if extra {
            text.push_str("      - cidr: 203.0.113.20/32\n        ports: [443]\n");
        }
        text
    };
    world::write_file(&generated_path, &generated);
    world::write_file(&small_path, &small(false, false));
    let pins = Pins::new(&world);
    // Reloads only on request: a watcher's own reload of the same edit
    // would queue ahead of the one measured.
    let agent = Agent::start(&world, &pins, &dir, &["--no-watch"]);
    let reload = |path: &std::path::Path, text: &str| -> Duration {
        world::write_file(path, text);
        let start = std::time::Instant::now();
        let out = egret_tests::agent::cli(&world, &["reload"]);
        let took = start.elapsed();
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        took
    };
    let (mut scratch, mut small_edit, mut large_edit) = (Vec::new(), Vec::new(), Vec::new());
    let mut status = Vec::new();
    for _ in 0..10 {
        let start = std::time::Instant::now();
        let out = egret_tests::agent::cli(&world, &["status"]);
        status.push(start.elapsed());
        assert_eq!(out.code, 0);
    }
    for _ in 0..runs {
        reload(&small_path, &small(false, false));
        scratch.push(reload(&small_path, &small(true, false)));
        small_edit.push(reload(&small_path, &small(true, true)));
        small_edit.push(reload(&small_path, &small(true, false)));
        large_edit.push(reload(&generated_path, &generated_edited));
        large_edit.push(reload(&generated_path, &generated));
    }
    // The agent's own split of the last reloads: reading, parsing and
    // validating the files against compiling and applying the result.
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
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let report = |what: &str, v: &mut Vec<Duration>, target: &str| {
        v.sort_unstable();
        println!(
            "  {what:<42} median {:>6.1} ms, worst {:>6.1} ms (target < {target})",
            ms(&v[v.len() / 2]),
            ms(v.last().expect("runs"))
        );
    };
    println!(
        "egret bench reload: `egret reload` round trips (read, parse, validate, compile, diff-sync), {runs} runs"
    );
    println!(
        "  a policy directory: generated.preset.yaml ({ENTRIES} CIDRs) beside policy.yaml, whose runner uses it"
    );
    report(
        "the preset's 10,000 CIDRs taken into use",
        &mut scratch,
        "1000 ms",
    );
    report("egret status (the round trip alone)", &mut status, "-");
    report("a one-line edit to policy.yaml", &mut small_edit, "20 ms");
    report(
        "a one-line edit to the generated preset",
        &mut large_edit,
        "50 ms",
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
