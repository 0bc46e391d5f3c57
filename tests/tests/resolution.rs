//! Hostnames in the policy follow DNS: re-resolved when the TTL runs out,
//! with a grace period for addresses that drop out of the answers.
//! The agent runs with --ttl-floor 1s and --grace 2s (see the harness).

use std::time::{Duration, Instant};

use egret_tests::{poll_until, privileged, scenario::Scenario};

const ALLOW: &str = "- host: registry.test\n  ports: [443]\n";

#[test]
fn a_changed_answer_is_followed_and_the_old_address_lapses_after_grace() {
    if !privileged("a_changed_answer_is_followed_and_the_old_address_lapses_after_grace") {
        return;
    }
    let mut s = Scenario::prepare("enforce", ALLOW);
    s.world.write_zone("registry.test A 203.0.113.20 1\n");
    s.start_agent();
    assert!(s.job(&["tcp:203.0.113.20:443"])[0].ok());
    assert!(s.job(&["tcp:203.0.113.22:443"])[0].eperm());

    // A connection opened now must survive the address lapsing.
    let held = s.start_job(&["tcp-hold:203.0.113.20:443:6000"]);

    // The last answer with the old address came at most one TTL (1 s)
    // before the change; it stays allowed TTL + grace (3 s) after that
    // answer, so at least 2 s after the change.
    let changed = Instant::now();
    s.world.write_zone("registry.test A 203.0.113.22 1\n");
    poll_until(
        "the new address becoming reachable",
        Duration::from_secs(6),
        || s.job(&["tcp:203.0.113.22:443"])[0].ok(),
    );
    // Still allowed during the grace period right after the change: only
    // checked while the 2 s surely remain.
    let old = &s.job(&["tcp:203.0.113.20:443"])[0];
    if changed.elapsed() < Duration::from_millis(1500) {
        assert!(old.ok(), "old address cut before its grace period: {old:?}");
    }
    // ...and refused once TTL + grace have passed.
    poll_until("the old address lapsing", Duration::from_secs(8), || {
        s.job(&["tcp:203.0.113.20:443"])[0].eperm()
    });
    let held = &held.wait()[0];
    assert!(
        held.ok(),
        "a connection opened before the address lapsed stays up: {held:?}"
    );
    assert_eq!(held.banner.as_deref(), Some("still here"));
}

#[test]
fn an_unresolvable_name_fails_closed_without_stopping_the_agent() {
    if !privileged("an_unresolvable_name_fails_closed_without_stopping_the_agent") {
        return;
    }
    let s = Scenario::start(
        "enforce",
        "- host: nowhere.test\n  ports: [443]\n- cidr: 203.0.113.10/32\n",
    );
    assert!(
        s.job(&["tcp:203.0.113.10:443"])[0].ok(),
        "the rest of the policy is in force"
    );
    assert!(s.job(&["tcp:203.0.113.11:443"])[0].eperm());
    assert!(
        s.world
            .dns_queries()
            .iter()
            .any(|q| q.starts_with("nowhere.test"))
    );
}
