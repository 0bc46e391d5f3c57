use egret_common::rules::proto;

use super::*;
use crate::policy::CidrRule;

fn rule(net: &str, ports: &[(u16, u16)]) -> CidrRule {
    CidrRule {
        net: net.parse().unwrap(),
        ports: ports
            .iter()
            .map(|(a, b)| PortRule::new(*a, *b, proto::TCP))
            .collect(),
    }
}

fn lateral() -> Vec<IpNet> {
    crate::baseline::lateral_nets().collect()
}

/// Compiles the entries of a single runner, id 1.
fn compile_one(rules: &[CidrRule]) -> CidrEntries {
    compile_cidrs(
        &[RunnerCidrs {
            id: 1,
            name: "ci",
            cidrs: rules,
        }],
        &lateral(),
    )
    .unwrap()
}

fn entry<'a>(out: &'a CidrEntries, runner: u32, net: &str) -> &'a PortRules {
    let (prefix, addr) = trie_prefix(&net.parse().unwrap());
    &out[&(32 + prefix, CidrKey::new(runner, addr))]
}

#[test]
fn v4_entries_use_the_mapped_space() {
    let (prefix, addr) = trie_prefix(&"203.0.113.0/24".parse().unwrap());
    assert_eq!(prefix, 96 + 24);
    assert_eq!(addr, mapped_v4([203, 0, 113, 0]));
    let (prefix, _) = trie_prefix(&"2001:db8::/32".parse().unwrap());
    assert_eq!(prefix, 32);
}

#[test]
fn narrower_entries_inherit_the_ports_of_wider_ones() {
    let rules = [
        rule("203.0.0.0/8", &[(443, 443)]),
        rule("203.0.113.0/24", &[(22, 22)]),
    ];
    let out = compile_one(&rules);
    let narrow = entry(&out, 1, "203.0.113.0/24");
    assert!(narrow.permits(22, proto::IPPROTO_TCP));
    assert!(narrow.permits(443, proto::IPPROTO_TCP));
    let wide = entry(&out, 1, "203.0.0.0/8");
    assert!(!wide.permits(22, proto::IPPROTO_TCP));
}

#[test]
fn runners_never_share_entries() {
    let a = [rule("203.0.113.0/24", &[(443, 443)])];
    let b = [rule("203.0.113.0/24", &[(22, 22)])];
    let out = compile_cidrs(
        &[
            RunnerCidrs {
                id: 1,
                name: "a",
                cidrs: &a,
            },
            RunnerCidrs {
                id: 2,
                name: "b",
                cidrs: &b,
            },
        ],
        &lateral(),
    )
    .unwrap();
    assert!(!entry(&out, 1, "203.0.113.0/24").permits(22, proto::IPPROTO_TCP));
    assert!(!entry(&out, 2, "203.0.113.0/24").permits(443, proto::IPPROTO_TCP));
}

#[test]
fn only_entries_that_name_a_neighbour_may_open_it() {
    let rules = [
        rule("0.0.0.0/0", &[(443, 443)]),
        rule("10.0.0.5/32", &[(22, 22)]),
    ];
    let out = compile_one(&rules);
    let everything = entry(&out, 1, "0.0.0.0/0");
    assert_eq!(everything.flags & rules_flags::LATERAL_OK, 0);
    let neighbour = entry(&out, 1, "10.0.0.5/32");
    assert_ne!(neighbour.flags & rules_flags::LATERAL_OK, 0);
    assert!(neighbour.permits(22, proto::IPPROTO_TCP));
    // 0.0.0.0/0 on 443 must not leak into the neighbour entry.
    assert!(!neighbour.permits(443, proto::IPPROTO_TCP));
}

#[test]
fn too_many_ranges_after_the_union_is_an_error() {
    let rules: Vec<CidrRule> = (0..(MAX_PORT_RULES as u16 + 1))
        .map(|i| {
            rule(
                &format!("203.0.113.0/{}", 8 + i.min(16)),
                &[(1000 + 2 * i, 1000 + 2 * i)],
            )
        })
        .collect();
    let deepest = [rules, vec![rule("203.0.113.0/25", &[(5, 5)])]].concat();
    let err = compile_cidrs(
        &[RunnerCidrs {
            id: 1,
            name: "ci",
            cidrs: &deepest,
        }],
        &lateral(),
    )
    .unwrap_err();
    assert!(
        matches!(err, CompileError::TooManyPortRules { .. }),
        "{err}"
    );
}

#[test]
fn merge_rules_keeps_protocols_apart() {
    let merged = merge_rules(vec![
        PortRule::new(1, 2, proto::TCP),
        PortRule::new(3, 4, proto::TCP),
        PortRule::new(3, 4, proto::UDP),
    ]);
    assert_eq!(
        merged,
        vec![
            PortRule::new(1, 4, proto::TCP),
            PortRule::new(3, 4, proto::UDP)
        ]
    );
}

#[test]
fn merge_rules_keeps_the_forge_mark_apart() {
    use egret_common::rules::rule_flags::FORGE;
    let merged = merge_rules(vec![
        PortRule::new(443, 443, proto::TCP).with_flags(FORGE),
        PortRule::new(444, 444, proto::TCP),
    ]);
    assert_eq!(
        merged,
        vec![
            PortRule::new(443, 443, proto::TCP).with_flags(FORGE),
            PortRule::new(444, 444, proto::TCP)
        ]
    );
}

/// A whole policy through `plan`: what every map and each runner's state
/// will hold, with no kernel involved.
#[test]
fn a_policy_plans_every_map_and_each_runners_state() {
    let text = "version: 1
runners:
  - name: ci
    cgroup: /egret.slice/ci
    mode: audit
    loopback: allow
    sockets: [raw]
    dns:
      listen: 172.17.0.1
    allow:
      - cidr: 203.0.113.0/24
        ports: [443]
      - cidr: 10.0.0.5/32
  - name: other
    cgroup: /egret.slice/other
    allow:
      - cidr: 0.0.0.0/0
        ports: [8443]
";
    let (policy, diags) =
        crate::policy::validate(&[(std::path::PathBuf::from("p.yaml"), text.as_bytes().to_vec())]);
    let policy = policy.unwrap_or_else(|| panic!("{diags:?}"));
    let ids = HashMap::from([("ci".to_owned(), 3), ("other".to_owned(), 4)]);
    let host = Host {
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        subnets: vec!["192.0.2.0/24".parse().unwrap()],
        netns: 4026531840,
    };
    let plan = plan(&policy, &ids, &host).expect("plan");

    let ci = &plan.runners[0];
    assert_eq!((ci.name.as_str(), ci.id), ("ci", 3));
    assert_eq!(
        ci.cgroup_dir,
        PathBuf::from("/sys/fs/cgroup/egret.slice/ci")
    );
    assert_eq!(
        ci.state.flags,
        flags::CONFIGURED | flags::AUDIT | flags::LOOPBACK_ALLOW | flags::SOCK_RAW
    );
    assert_eq!(ci.state.host_netns, 4026531840);
    assert_eq!(ci.state.dns_listen, mapped_v4([172, 17, 0, 1]));
    assert_eq!(
        ci.state.dns_proxy_port, 0,
        "filled in once the proxy listens"
    );
    assert_eq!(plan.runners[1].state.flags, flags::CONFIGURED);
    assert_eq!(plan.ids(), [3, 4].into_iter().collect());

    // Metadata never opens; the host's own subnet is lateral like RFC 1918;
    // DoH resolvers are kept apart from neighbours.
    assert!(
        plan.metadata
            .contains_key(&trie_prefix(&"169.254.169.254/32".parse().unwrap()))
    );
    assert!(
        plan.lateral
            .contains_key(&trie_prefix(&"192.0.2.0/24".parse().unwrap()))
    );
    assert_eq!(
        plan.lateral[&trie_prefix(&"1.1.1.1/32".parse().unwrap())].kind,
        baseline_kind::DOH
    );
    // Each runner's CIDRs under its own id; the neighbour it names may be
    // opened, the broad entry of the other runner may not.
    assert!(entry(&plan.cidrs, 3, "203.0.113.0/24").permits(443, proto::IPPROTO_TCP));
    assert_ne!(
        entry(&plan.cidrs, 3, "10.0.0.5/32").flags & rules_flags::LATERAL_OK,
        0
    );
    assert_eq!(
        entry(&plan.cidrs, 4, "0.0.0.0/0").flags & rules_flags::LATERAL_OK,
        0
    );
    assert_eq!(plan.cidrs.len(), 3);
}

#[test]
fn a_runner_without_an_id_is_an_error_not_a_guess() {
    let (policy, _) = crate::policy::validate(&[(
        std::path::PathBuf::from("p.yaml"),
        b"version: 1\nrunners:\n  - name: ci\n    cgroup: /ci\n".to_vec(),
    )]);
    let err = plan(&policy.unwrap(), &HashMap::new(), &Host::default()).unwrap_err();
    assert!(matches!(err, CompileError::NoId(name) if name == "ci"));
}

/// A runner compiled from the cache is the runner compiled afresh, and an
/// edit to its entries (or to the lateral ranges) is compiled again.
#[test]
fn the_cidr_cache_answers_as_a_fresh_compile() {
    let mut cache = CidrCache::default();
    let mut rules = vec![
        rule("0.0.0.0/0", &[(8443, 8443)]),
        rule("11.0.0.0/24", &[(443, 443)]),
    ];
    let input = |cache: &mut CidrCache, rules: &[CidrRule]| {
        let runners = [RunnerCidrs {
            id: 1,
            name: "ci",
            cidrs: rules,
        }];
        cache.compile(&runners, &lateral()).unwrap()
    };
    assert_eq!(input(&mut cache, &rules), compile_one(&rules));
    assert_eq!(
        input(&mut cache, &rules),
        compile_one(&rules),
        "from the cache"
    );
    rules.push(rule("11.0.0.7/32", &[(22, 22)]));
    assert_eq!(
        input(&mut cache, &rules),
        compile_one(&rules),
        "an entry added"
    );
    let other_lateral = vec!["11.0.0.0/8".parse().unwrap()];
    let runners = [RunnerCidrs {
        id: 1,
        name: "ci",
        cidrs: &rules,
    }];
    assert_eq!(
        cache.compile(&runners, &other_lateral).unwrap(),
        compile_cidrs(&runners, &other_lateral).unwrap(),
        "other lateral ranges"
    );
}

/// After any sequence of edits (entries added, removed, their ports
/// changed, a containing prefix added or taken away, a lateral range named)
/// the cache answers exactly as a fresh compile of the same rules.
#[test]
fn the_cidr_cache_recompiles_exactly_what_an_edit_touches() {
    use proptest::prelude::*;
    let nets = [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "11.0.0.0/8",
        "11.0.0.0/24",
        "11.0.1.0/24",
        "11.0.0.7/32",
        "11.0.1.9/32",
        "::/0",
        "2001:db8::/32",
        "2001:db8::1/128",
    ];
    let edit = (0..nets.len(), proptest::option::of(1u16..6));
    proptest!(|(edits in proptest::collection::vec(proptest::collection::vec(edit.clone(), 1..4), 1..12))| {
        let mut cache = CidrCache::default();
        let mut rules: Vec<CidrRule> = Vec::new();
        for step in edits {
            for (n, port) in step {
                // A port sets (or adds to) the prefix's rules; none takes
                // the prefix away.
                match port {
                    Some(p) => rules.push(rule(nets[n], &[(p * 100, p * 100 + 10)])),
                    None => rules.retain(|r| r.net != nets[n].parse::<IpNet>().unwrap()),
                }
            }
            let runners = [RunnerCidrs { id: 1, name: "ci", cidrs: &rules }];
            prop_assert_eq!(cache.compile(&runners, &lateral()).unwrap(), compile_one(&rules));
        }
    });
}
