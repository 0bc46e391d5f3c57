use super::*;

fn rule(name: &str, port: u16) -> HostRule {
    HostRule {
        name: name.into(),
        ports: vec![PortRule::new(port, port, egret_common::rules::proto::TCP)],
        private_answers: false,
    }
}

#[test]
fn ttl_is_clamped() {
    let s = TtlSettings::default();
    assert_eq!(s.clamp(Duration::from_secs(1)), s.floor);
    assert_eq!(s.clamp(Duration::from_secs(999_999)), s.cap);
    assert_eq!(s.clamp(Duration::from_secs(300)), Duration::from_secs(300));
}

#[test]
fn addresses_outlive_their_answer_by_the_grace_period() {
    let mut l = Learning::new(TtlSettings::default());
    l.set_hosts(vec![(1, "ci".into(), vec![], rule("gitlab.test", 443))]);
    let ip: IpAddr = "203.0.113.10".parse().unwrap();
    l.apply(
        0,
        Answer::Addresses {
            ips: vec![ip],
            ttl: Duration::from_secs(60),
        },
    );
    let until = l.tracked[0].ips[&ip];
    let expected = Instant::now() + Duration::from_secs(120);
    assert!(until <= expected && until + Duration::from_secs(2) > expected);
    // A later answer without the address does not take it away early.
    l.apply(
        0,
        Answer::Addresses {
            ips: vec!["203.0.113.11".parse().unwrap()],
            ttl: Duration::from_secs(60),
        },
    );
    assert!(l.tracked[0].ips.contains_key(&ip));
    assert_eq!(l.desired(Instant::now()).len(), 2);
    assert_eq!(l.hosts_for(1, ip).as_deref(), Some("gitlab.test"));
    assert_eq!(l.hosts_for(2, ip), None);
}

#[test]
fn failures_keep_what_was_learned_and_do_not_settle() {
    let mut l = Learning::new(TtlSettings::default());
    l.set_hosts(vec![(1, "ci".into(), vec![], rule("a.test", 443))]);
    assert!(!l.settled(1));
    l.apply(0, Answer::Failed("timeout".into()));
    assert!(!l.settled(1));
    l.apply(0, Answer::NoAddress);
    assert!(l.settled(1));
}

#[test]
fn shared_address_merges_ports_of_every_host() {
    let mut l = Learning::new(TtlSettings::default());
    l.set_hosts(vec![
        (1, "ci".into(), vec![], rule("a.test", 443)),
        (1, "ci".into(), vec![], rule("b.test", 22)),
    ]);
    let ip: IpAddr = "2001:db8::10".parse().unwrap();
    for i in 0..2 {
        l.apply(
            i,
            Answer::Addresses {
                ips: vec![ip],
                ttl: Duration::from_secs(60),
            },
        );
    }
    let desired = l.desired(Instant::now());
    let entry = desired.values().next().unwrap();
    assert_eq!(entry.rules.count, 2);
    assert_eq!(l.hosts_for(1, ip).as_deref(), Some("a.test,b.test"));
}

#[test]
fn proxied_answers_are_capped_per_name_and_merge_with_tracked_hosts() {
    let mut l = Learning::new(TtlSettings {
        max_ips_per_name: 2,
        ..TtlSettings::default()
    });
    l.set_hosts(vec![(1, "ci".into(), vec![], rule("a.test", 443))]);
    let shared: IpAddr = "203.0.113.1".parse().unwrap();
    l.apply(
        0,
        Answer::Addresses {
            ips: vec![shared],
            ttl: Duration::from_secs(60),
        },
    );
    let ssh = [PortRule::new(22, 22, egret_common::rules::proto::TCP)];
    let changes = l
        .learn_answer(1, "b.test", &ssh, &[shared], Duration::from_secs(120))
        .unwrap();
    let (_, value) = &changes[0];
    assert_eq!(value.rules.count, 2, "443 from a.test, 22 from b.test");
    assert_eq!(l.hosts_for(1, shared).as_deref(), Some("a.test,b.test"));
    // A third address for b.test pushes out the one closest to expiry.
    l.learn_answer(
        1,
        "b.test",
        &ssh,
        &["203.0.113.2".parse().unwrap()],
        Duration::from_secs(60),
    )
    .unwrap();
    let changes = l
        .learn_answer(
            1,
            "b.test",
            &ssh,
            &["203.0.113.3".parse().unwrap()],
            Duration::from_secs(600),
        )
        .unwrap();
    assert_eq!(l.per_name[&(1, "b.test".to_owned())].len(), 2);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        l.hosts_for(1, "203.0.113.2".parse().unwrap()),
        None,
        "no longer renewed through b.test"
    );
    // The same answer again a moment later needs no write.
    let again = l
        .learn_answer(
            1,
            "b.test",
            &ssh,
            &["203.0.113.3".parse().unwrap()],
            Duration::from_secs(600),
        )
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    // Another runner learned nothing.
    assert_eq!(l.hosts_for(2, shared), None);
}

#[test]
fn rebinding_answers_are_not_learned_by_the_agent_either() {
    let mut l = Learning::new(TtlSettings::default());
    l.set_hosts(vec![(1, "ci".into(), vec![], rule("a.test", 443))]);
    l.apply(
        0,
        Answer::Addresses {
            ips: vec![
                "10.0.0.5".parse().unwrap(),
                "169.254.169.254".parse().unwrap(),
            ],
            ttl: Duration::from_secs(60),
        },
    );
    assert!(l.desired(Instant::now()).is_empty());
}

#[test]
fn set_hosts_keeps_answers_of_unchanged_hosts() {
    let mut l = Learning::new(TtlSettings::default());
    l.set_hosts(vec![(1, "ci".into(), vec![], rule("a.test", 443))]);
    l.apply(
        0,
        Answer::Addresses {
            ips: vec!["203.0.113.1".parse().unwrap()],
            ttl: Duration::from_secs(60),
        },
    );
    l.set_hosts(vec![(1, "ci".into(), vec![], rule("a.test", 8443))]);
    assert!(l.tracked[0].answered);
    assert_eq!(l.tracked[0].ports[0].first, 8443);
}

#[test]
fn each_runner_holds_at_most_its_share() {
    let mut l = Learning::new(TtlSettings::default());
    l.set_runner_count(Learning::SHARED / 2);
    assert_eq!(l.quota, 2);
    let ssh = [PortRule::new(22, 22, egret_common::rules::proto::TCP)];
    let ip = |n: u8| -> IpAddr { std::net::Ipv4Addr::new(203, 0, 113, n).into() };
    let ttl = Duration::from_secs(60);
    assert!(
        l.learn_answer(1, "a.test", &ssh, &[ip(1), ip(2)], ttl)
            .is_ok()
    );
    // A third address is past runner 1's share; the ones it holds renew.
    let over = l
        .learn_answer(1, "b.test", &ssh, &[ip(3)], ttl)
        .unwrap_err();
    assert_eq!((over.held, over.quota), (2, 2));
    assert!(l.learn_answer(1, "a.test", &ssh, &[ip(1)], ttl).is_ok());
    // Runner 2 never notices.
    assert!(
        l.learn_answer(2, "b.test", &ssh, &[ip(3), ip(4)], ttl)
            .is_ok()
    );
    // Once runner 1's addresses lapse, it has room again.
    l.prune(
        Instant::now() + Duration::from_secs(3600),
        &[1, 2].into_iter().collect(),
    );
    assert!(l.learn_answer(1, "b.test", &ssh, &[ip(3)], ttl).is_ok());
}

/// Names an audit-mode runner's jobs resolved outside the policy name
/// their connects in events, and teach the map nothing.
#[test]
fn audited_answers_name_connects_without_learning() {
    let mut l = Learning::new(TtlSettings::default());
    let ip: IpAddr = "203.0.113.22".parse().unwrap();
    l.note_audited(1, "a.pkg.test", &[ip]);
    l.note_audited(1, "b.pkg.test", &[ip]);
    l.note_audited(1, "a.pkg.test", &[ip]);
    assert_eq!(l.hosts_for(1, ip).as_deref(), Some("a.pkg.test,b.pkg.test"));
    assert_eq!(l.hosts_for(2, ip), None, "another runner's");
    assert!(l.desired(Instant::now()).is_empty(), "nothing to learn");
    l.prune(Instant::now(), &std::collections::HashSet::from([2]));
    assert_eq!(l.hosts_for(1, ip), None, "gone with its runner");
}

/// A policy edit that takes a name out: the addresses jobs resolved for it
/// go at once; a narrowed entry narrows them; a name still allowed keeps
/// its addresses; what a previous agent left, nameless, stays.
#[test]
fn a_policy_change_keeps_only_what_the_names_still_get() {
    let mut l = Learning::new(TtlSettings::default());
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let tcp = |p: u16| PortRule::new(p, p, egret_common::rules::proto::TCP);
    l.learn_answer(
        1,
        "a.pkg.test",
        &[tcp(443), tcp(8443)],
        &[ip("203.0.113.22")],
        Duration::from_secs(60),
    )
    .unwrap();
    l.learn_answer(
        1,
        "gone.test",
        &[tcp(443)],
        &[ip("203.0.113.30")],
        Duration::from_secs(60),
    )
    .unwrap();
    l.restore([(
        ExactKey {
            runner: 1,
            addr: compile::addr_of(ip("203.0.113.40")),
        },
        egret_common::maps::Learned {
            expires_ns: monotonic_ns() + 60_000_000_000,
            rules: Default::default(),
        },
    )]);
    let rules = HashMap::from([(1, vec![rule("*.pkg.test", 443)])]);
    let gone = l.reconcile(&rules);
    let now = Instant::now();
    let desired = l.desired(now);
    let at = |s: &str| ExactKey {
        runner: 1,
        addr: compile::addr_of(ip(s)),
    };
    let kept = desired.get(&at("203.0.113.22")).expect("still allowed");
    assert_eq!(kept.rules.count, 1, "8443 went with the narrowed entry");
    assert_eq!(kept.rules.rules[0], tcp(443));
    assert!(
        !desired.contains_key(&at("203.0.113.30")),
        "the name left the policy"
    );
    assert!(
        desired.contains_key(&at("203.0.113.40")),
        "restored, nameless"
    );
    assert_eq!(gone, [at("203.0.113.30")], "removed from the map at once");
    assert_eq!(l.hosts_for(1, ip("203.0.113.30")), None);
}
