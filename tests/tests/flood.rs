//! A job flooding the agent with denials: the rare ones still reach the
//! stream, the flood is summarised, the agent stays small, and another
//! runner's DNS goes on.

use std::time::Duration;

use egret_tests::{
    agent::{Agent, Pins},
    cgroup::TestCgroup,
    job, privileged,
    world::{self, DNS},
};

#[test]
fn a_flood_of_denials_loses_no_rare_one_and_starves_no_one() {
    if !privileged("a_flood_of_denials_loses_no_rare_one_and_starves_no_one") {
        return;
    }
    let w = world::World::new();
    let mut cg = TestCgroup::new("egret-test");
    let (a, b) = (cg.child("flooder"), cg.child("other"));
    let policy = w.path("policy.yaml");
    let runner = |name: &str, cgroup: &str| {
        format!(
            "  - name: {name}\n    cgroup: {cgroup}\n    dns:\n      upstream: [{DNS}]\n    allow:\n      - host: gitlab.test\n        ports: [443]\n"
        )
    };
    world::write_file(
        &policy,
        &format!(
            "version: 1\nrunners:\n{}{}",
            runner("flooder", &a),
            runner("other", &b)
        ),
    );
    let pins = Pins::new(&w);
    let agent = Agent::start(&w, &pins, &policy, &[]);
    let flooder = Some(cg.procs("flooder"));
    // Two flooding processes, a few seconds, as fast as they go.
    let floods: Vec<job::Running> = (0..2)
        .map(|_| {
            job::start(
                &w.host,
                flooder.as_deref(),
                &["deny-flood:198.51.100.66:443:3000"],
            )
        })
        .collect();
    agent
        .wait_events(Duration::from_secs(5), |events| {
            (events
                .iter()
                .filter(|e| e["runner"] == "flooder" && e["dst"] == "198.51.100.66")
                .count()
                >= 500)
                .then_some(())
        })
        .expect("the flood under way");
    // In the middle of it: one metadata attempt, and the other runner's
    // jobs resolving and connecting.
    let metadata = job::run(&w.host, flooder.as_deref(), &["tcp:169.254.169.254:80"]).remove(0);
    assert!(metadata.eperm(), "{metadata:?}");
    let other = job::run(
        &w.host,
        Some(&cg.procs("other")),
        &["dns-connect:gitlab.test:A:443:udp@203.0.113.53:53"],
    )
    .remove(0);
    assert!(
        other.ok(),
        "the other runner's DNS during the flood: {other:?}"
    );
    let denied: u64 = floods
        .into_iter()
        .map(|f| f.wait().remove(0).eperms.unwrap_or(0))
        .sum();
    assert!(denied > 500_000, "a flood: {denied} denials");

    let ev = agent
        .wait_event(Duration::from_secs(10), |e| {
            e["reason"] == "metadata" && e["pid"] == metadata.pid
        })
        .expect("the metadata denial reached the stream despite the flood");
    assert_eq!(ev["runner"], "flooder", "{ev}");
    let summary = agent
        .wait_event(Duration::from_secs(5), |e| {
            e["notice"] == "events_suppressed" && e["runner"] == "flooder"
        })
        .expect("the flood summarised");
    assert!(
        summary["suppressed"].as_u64().is_some_and(|n| n > 0),
        "{summary}"
    );

    // The agent never held the flood in memory.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid().expect("pid")))
        .expect("agent status");
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(peak_kb < 64 * 1024, "agent peak memory {peak_kb} kB");
}
