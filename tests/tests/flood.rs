//! A job flooding the agent with denials: the rare ones still reach the
//! stream, the flood is summarised, the agent stays small, and another
//! runner's DNS goes on.

use std::time::Duration;

use egret_tests::{job, privileged, scenario::Runners};

#[test]
fn a_flood_of_denials_loses_no_rare_one_and_starves_no_one() {
    if !privileged("a_flood_of_denials_loses_no_rare_one_and_starves_no_one") {
        return;
    }
    let r = Runners::start(
        &["flooder", "other"],
        "- host: gitlab.test\n  ports: [443]",
        &[],
        |_| {},
    );
    let agent = &r.agent;
    // Two flooding processes, a few seconds, as fast as they go.
    let floods: Vec<job::Running> = (0..2)
        .map(|_| r.start_job("flooder", &["deny-flood:198.51.100.66:443:3000"]))
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
    let metadata = r.job("flooder", &["tcp:169.254.169.254:80"]).remove(0);
    assert!(metadata.eperm(), "{metadata:?}");
    let other = r
        .job(
            "other",
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

/// A job resolving name after name with large answers fills only its
/// runner's share of the learned-address map: past it, its new names get
/// SERVFAIL and a `quota` event, while another runner resolves as before.
#[test]
fn one_runner_cannot_fill_the_learned_map_for_the_others() {
    if !privileged("one_runner_cannot_fill_the_learned_map_for_the_others") {
        return;
    }
    // A share of 60 addresses per runner: two 40-address answers do not fit.
    let r = Runners::start(
        &["greedy", "other"],
        "- host: \"*.bulk.test\"\n  ports: [443]",
        &["--dns-max-ips-per-runner", "60"],
        |w| {
            w.write_zone(
                "one.bulk.test A 203.0.113.100+40 60\ntwo.bulk.test A 203.0.113.200+40 60\n",
            )
        },
    );
    let agent = &r.agent;
    let ask = |runner: &str, name: &str| {
        r.job(runner, &[&format!("dns:{name}:A:udp@203.0.113.53:53")])
            .remove(0)
    };
    let first = ask("greedy", "one.bulk.test");
    assert_eq!(first.rcode.as_deref(), Some("NoError"), "{first:?}");
    assert_eq!(first.answers.as_ref().map(Vec::len), Some(40));
    let over = ask("greedy", "two.bulk.test");
    assert_eq!(over.rcode.as_deref(), Some("ServFail"), "{over:?}");
    let ev = agent
        .wait_event(Duration::from_secs(5), |e| e["reason"] == "quota")
        .expect("a quota event");
    assert_eq!(
        (ev["runner"].as_str(), ev["host"].as_str()),
        (Some("greedy"), Some("two.bulk.test"))
    );
    // The other runner never notices.
    let theirs = ask("other", "two.bulk.test");
    assert_eq!(theirs.rcode.as_deref(), Some("NoError"), "{theirs:?}");
    assert_eq!(theirs.answers.as_ref().map(Vec::len), Some(40));
}
