//! Per-runner enforcement in a real kernel, inside the test world.

use std::time::Duration;

use egret_tests::{
    privileged,
    scenario::{self, Scenario},
    world,
};

/// The forge on 443 by address, a registry by name.
const ALLOW: &str = scenario::FORGE_AND_REGISTRY;

#[test]
fn allowed_cidr_and_port_connect() {
    if !privileged("allowed_cidr_and_port_connect") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let o = &s.job(&["tcp:203.0.113.10:443"])[0];
    assert!(o.ok(), "{o:?}");
    assert_eq!(o.banner.as_deref(), Some("fixture 203.0.113.10:443"));
}

#[test]
fn everything_else_gets_eperm() {
    if !privileged("everything_else_gets_eperm") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    for action in [
        "tcp:203.0.113.10:80",                   // wrong port
        "tcp:198.51.100.66:443",                 // not in the policy
        "tcp:169.254.169.254:80",                // metadata
        "tcp:[fd00:ec2::254]:80",                // metadata over IPv6
        "tcp:[::ffff:169.254.169.254]:80",       // metadata, v4-mapped on an AF_INET6 socket
        "tcp:10.0.0.5:22",                       // the neighbour VM
        "udp-sendto:198.51.100.66:443",          // unconnected UDP
        "udp-connect:198.51.100.66:443",         // connected UDP
        "udp-sendto:[::ffff:198.51.100.66]:443", // unconnected UDP, v4-mapped
    ] {
        s.assert_egret_refuses(action);
    }
}

#[test]
fn metadata_stays_closed_when_the_policy_allows_everything() {
    if !privileged("metadata_stays_closed_when_the_policy_allows_everything") {
        return;
    }
    let s = Scenario::start("enforce", "- cidr: 0.0.0.0/0\n- cidr: ::/0\n");
    assert!(
        s.job(&["tcp:198.51.100.66:443"])[0].ok(),
        "0.0.0.0/0 opens the internet"
    );
    for action in [
        "tcp:169.254.169.254:80",
        "tcp:[::ffff:169.254.169.254]:80",
        "tcp:[fd00:ec2::254]:80",
        "tcp:[64:ff9b::a9fe:a9fe]:80", // NAT64 form of 169.254.169.254
        "udp-sendto:169.254.169.254:80",
        "udp-sendto:[::ffff:169.254.169.254]:80", // sendmsg6 to a mapped address
    ] {
        let o = &s.job(&[action])[0];
        assert!(o.eperm(), "{action}: {o:?}");
    }
    // A broad CIDR does not name the neighbour, so lateral stays closed too.
    s.assert_egret_refuses("tcp:10.0.0.5:22");
}

#[test]
fn a_policy_can_name_a_neighbour_explicitly() {
    if !privileged("a_policy_can_name_a_neighbour_explicitly") {
        return;
    }
    let s = Scenario::start("enforce", "- cidr: 10.0.0.5/32\n  ports: [22]\n");
    assert!(s.job(&["tcp:10.0.0.5:22"])[0].ok());
    assert!(s.job(&["tcp:10.0.0.5:80"])[0].eperm());
}

#[test]
fn allowed_hostname_becomes_reachable() {
    if !privileged("allowed_hostname_becomes_reachable") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    // registry.test has two A records in the fixture zone: both allowed.
    for action in ["tcp:203.0.113.20:443", "tcp:203.0.113.21:443"] {
        let o = &s.job(&[action])[0];
        assert!(o.ok(), "{action}: {o:?}");
    }
    assert!(
        s.job(&["tcp:203.0.113.22:443"])[0].eperm(),
        "an address the name does not have"
    );
    assert!(
        s.world
            .dns_queries()
            .iter()
            .any(|q| q.starts_with("registry.test")),
        "the agent resolved through the fixture: {:?}",
        s.world.dns_queries()
    );
}

#[test]
fn a_process_outside_the_runner_is_unaffected() {
    if !privileged("a_process_outside_the_runner_is_unaffected") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    for o in s.outsider(&[
        "tcp:169.254.169.254:80",
        "tcp:10.0.0.5:22",
        "tcp:198.51.100.66:443",
    ]) {
        assert!(o.ok(), "{o:?}");
    }
    assert!(
        s.agent().events().is_empty(),
        "no events for outsiders: {:?}",
        s.agent().events()
    );
}

#[test]
fn cgroups_created_below_the_runner_later_are_covered() {
    if !privileged("cgroups_created_below_the_runner_later_are_covered") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    s.cgroup.child("ci/docker/container-1");
    let o = s.job_in(
        "ci/docker/container-1",
        &["tcp:169.254.169.254:80", "tcp:203.0.113.10:443"],
    );
    assert!(o[0].eperm(), "{:?}", o[0]);
    assert!(o[1].ok(), "{:?}", o[1]);
    let ev = s
        .wait_event(|e| e["dst"] == "169.254.169.254")
        .expect("event for the container's denial");
    assert_eq!(
        ev["cgroup"],
        format!("{}/docker/container-1", s.runner_cgroup)
    );
    assert_eq!(ev["runner"], "ci");
}

#[test]
fn a_denial_is_reported_with_full_attribution() {
    if !privileged("a_denial_is_reported_with_full_attribution") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let o = &s.job(&["tcp:169.254.169.254:80"])[0];
    assert!(o.eperm());
    let ev = s
        .wait_event(|e| e["dst"] == "169.254.169.254")
        .expect("metadata event");
    assert_eq!(ev["runner"], "ci");
    assert_eq!(ev["pid"], o.pid);
    assert_eq!(ev["comm"], "egret-testkit");
    assert_eq!(ev["port"], 80);
    assert_eq!(ev["proto"], "tcp");
    assert_eq!(ev["family"], "ipv4");
    assert_eq!(ev["reason"], "metadata");
    assert_eq!(ev["action"], "deny");
    assert_eq!(ev["cgroup"], s.runner_cgroup);
    assert!(
        ev["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{ev}"
    );

    let o = &s.job(&["tcp:10.0.0.5:22"])[0];
    let ev = s
        .wait_event(|e| e["dst"] == "10.0.0.5")
        .expect("lateral event");
    assert_eq!(
        (ev["reason"].as_str(), ev["pid"].as_u64()),
        (Some("lateral"), Some(u64::from(o.pid)))
    );

    let o = &s.job(&["udp-sendto:198.51.100.66:443"])[0];
    let ev = s
        .wait_event(|e| e["dst"] == "198.51.100.66" && e["proto"] == "udp")
        .expect("udp event");
    assert_eq!(
        (ev["reason"].as_str(), ev["port"].as_u64()),
        (Some("not_allowed"), Some(443))
    );
    assert_eq!(ev["pid"], o.pid);
}

#[test]
fn the_hostname_is_named_in_events_for_its_addresses() {
    if !privileged("the_hostname_is_named_in_events_for_its_addresses") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    assert!(
        s.job(&["tcp:203.0.113.20:80"])[0].eperm(),
        "registry.test is allowed on 443 only"
    );
    let ev = s.wait_event(|e| e["dst"] == "203.0.113.20").expect("event");
    assert_eq!(ev["host"], "registry.test");
}

#[test]
fn audit_mode_lets_traffic_through_and_reports_it() {
    if !privileged("audit_mode_lets_traffic_through_and_reports_it") {
        return;
    }
    let s = Scenario::start("audit", ALLOW);
    let o = &s.job(&["tcp:198.51.100.66:443"])[0];
    assert!(o.ok(), "audit mode allows: {o:?}");
    let ev = s
        .wait_event(|e| e["dst"] == "198.51.100.66")
        .expect("audit event");
    assert_eq!(ev["action"], "audit");
    assert_eq!(ev["reason"], "not_allowed");
    // Metadata is denied even in audit mode.
    assert!(s.job(&["tcp:169.254.169.254:80"])[0].eperm());
    let ev = s
        .wait_event(|e| e["dst"] == "169.254.169.254")
        .expect("metadata event");
    assert_eq!(ev["action"], "deny");
    // An allowed connection produces no event at all.
    assert!(s.job(&["tcp:203.0.113.10:443"])[0].ok());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!s.agent().events().iter().any(|e| e["dst"] == world::GITLAB));
}
