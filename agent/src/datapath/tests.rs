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
fn compile_one(rules: &[CidrRule]) -> HashMap<CidrEntryKey, PortRules> {
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

fn entry<'a>(out: &'a HashMap<CidrEntryKey, PortRules>, runner: u32, net: &str) -> &'a PortRules {
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
        matches!(err, DatapathError::TooManyPortRules { .. }),
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

#[test]
fn diff_sync_writes_before_it_removes_and_retries_failed_removals() {
    let mut ops: Vec<String> = Vec::new();
    let mut mirror: HashMap<u32, u32> = [(1, 10), (2, 20), (3, 30)].into();
    let desired: HashMap<u32, u32> = [(1, 11), (4, 40)].into();
    let failing_remove = |ops: &mut Vec<String>, k: &u32| {
        ops.push(format!("remove {k}"));
        if *k == 3 {
            Err(MapError::KeyNotFound)
        } else {
            Ok(())
        }
    };
    let result = diff_sync(
        &mut ops,
        &mut mirror,
        &desired,
        |k| *k != 99,
        |ops, k, v| {
            ops.push(format!("write {k}={v}"));
            Ok(())
        },
        failing_remove,
    );
    assert!(result.is_err(), "the failed removal is reported");
    let first_remove = ops
        .iter()
        .position(|o| o.starts_with("remove"))
        .expect("removes");
    assert!(
        ops[..first_remove].iter().all(|o| o.starts_with("write")),
        "{ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|o| o.starts_with("write")).count(),
        2,
        "{ops:?}"
    );
    assert!(
        mirror.contains_key(&3),
        "a key the kernel did not drop stays in the mirror: {mirror:?}"
    );

    let mut ops = Vec::new();
    let changes = diff_sync(
        &mut ops,
        &mut mirror,
        &desired,
        |_| true,
        |_, _, _| Ok(()),
        |ops: &mut Vec<String>, k| {
            ops.push(format!("remove {k}"));
            Ok(())
        },
    )
    .expect("second sync");
    assert!(ops.contains(&"remove 3".to_owned()), "retried: {ops:?}");
    assert_eq!(mirror, desired);
    assert!(changes >= 1);
}
