//! The whole verdict order as a table, on plain maps.

extern crate std;

use std::{collections::HashMap, vec::Vec};

use crate::maps::{BaselineEntry, baseline_kind};

use super::*;
use crate::{
    addr::mapped_v4,
    event::hook,
    rules::{PortRule, proto, rule_flags},
};

/// Longest-prefix tries and hashes, as the kernel's maps behave.
#[derive(Default)]
struct World {
    states: HashMap<u32, RunnerState>,
    lockdowns: HashMap<u32, Lockdown>,
    metadata: Vec<(u32, Addr, BaselineEntry)>,
    lateral: Vec<(u32, Addr, BaselineEntry)>,
    cidrs: Vec<(u32, u32, Addr, PortRules)>,
    learned: HashMap<ExactKey, Learned>,
    /// Listeners as (network namespace, address, port, protocol, the
    /// runner whose job bound it or `None` for a host service's), and the
    /// namespace of the socket the hooks run for.
    listeners: Vec<(u64, Addr, u16, u8, Option<u32>)>,
    current_netns: u64,
    nat64: Vec<(u32, Addr, Nat64Entry)>,
    /// Container cgroup → its job's group; (group, address) of each
    /// container; the cgroup of the task the socket hooks run for.
    groups: HashMap<u64, u64>,
    peers: Vec<(u64, Addr)>,
    current_cgroup: u64,
}

use crate::addr::longest_match as longest;

impl Lookup for World {
    fn runner_state(&self, runner: u32) -> Option<&RunnerState> {
        self.states.get(&runner)
    }
    fn lockdown(&self, id: u32) -> Option<&Lockdown> {
        self.lockdowns.get(&id)
    }
    /// The merged trie the agent would write, built from both sets as
    /// the agent builds it, then asked as the kernel asks it.
    fn baseline(&self, t: &Addr) -> Option<Baseline> {
        let merged: Vec<(u32, Addr, Baseline)> = self
            .metadata
            .iter()
            .chain(&self.lateral)
            .map(|(l, a, _)| {
                let value = crate::maps::merged_baseline(
                    *l,
                    a,
                    self.metadata.iter().map(|(l, a, v)| (*l, a, v)),
                    self.lateral.iter().map(|(l, a, v)| (*l, a, v)),
                );
                (*l, *a, value)
            })
            .collect();
        longest(merged.iter().map(|(l, a, v)| (*l, a, v)), t).copied()
    }
    /// The hints the agent would write for these entries: a verdict with
    /// them must equal one that looks everything up.
    fn may_hold(&self, runner: u32, kind: u32, slot: u32) -> bool {
        use crate::maps::hint;
        let mut prefixes: Vec<(u32, Addr)> = Vec::new();
        match kind {
            hint::CIDRS if runner == GLOBAL_RUNNER => prefixes.extend(
                self.metadata
                    .iter()
                    .chain(&self.lateral)
                    .map(|(l, a, _)| (*l, *a)),
            ),
            hint::CIDRS => prefixes.extend(
                self.cidrs
                    .iter()
                    .filter(|(r, ..)| *r == runner)
                    .map(|(_, l, a, _)| (*l, *a)),
            ),
            _ => prefixes.extend(
                self.learned
                    .keys()
                    .filter(|k| k.runner == runner)
                    .map(|k| (128, k.addr)),
            ),
        }
        let mut held = false;
        for (len, net) in prefixes {
            hint::slots_of(len, &net, |s| held |= s == slot);
        }
        held
    }
    fn cidr(&self, runner: u32, t: &Addr) -> Option<&PortRules> {
        longest(
            self.cidrs
                .iter()
                .filter(|(r, ..)| *r == runner)
                .map(|(_, l, a, v)| (*l, a, v)),
            t,
        )
    }
    fn learned(&self, key: &ExactKey) -> Option<&Learned> {
        self.learned.get(key)
    }
    /// As the kernel picks a listener: the socket's namespace, the exact
    /// address first, then a wildcard of the family (a v6 one taking IPv4
    /// too).
    fn listener_runner(&self, dst: &Destination, t: &Addr) -> Option<u32> {
        let at = |a: &Addr| {
            self.listeners.iter().find(|(ns, la, port, proto, _)| {
                *ns == self.current_netns && la == a && *port == dst.port && *proto == dst.proto
            })
        };
        let wildcards: &[Addr] = if crate::addr::is_mapped_v4(t) {
            &[mapped_v4([0, 0, 0, 0]), [0; 16]]
        } else {
            &[[0; 16]]
        };
        at(t)
            .or_else(|| wildcards.iter().find_map(at))
            .and_then(|(.., runner)| *runner)
    }
    fn nat64(&self, t: &Addr) -> Option<&Nat64Entry> {
        longest(self.nat64.iter().map(|(l, a, v)| (*l, a, v)), t)
    }
    fn job_peer(&self, cgroup: u64, t: &Addr) -> bool {
        let cgroup = if cgroup == 0 {
            self.current_cgroup
        } else {
            cgroup
        };
        self.groups
            .get(&cgroup)
            .is_some_and(|g| self.peers.contains(&(*g, *t)))
    }
}

const RUNNER: u32 = 1;
const OTHER: u32 = 2;
const NETNS: u64 = 4096;
const NOW: u64 = 1_000_000_000;

fn v4(a: [u8; 4]) -> Addr {
    mapped_v4(a)
}

fn v6(s: &str) -> Addr {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fn rules(list: &[PortRule], lateral_ok: bool) -> PortRules {
    let mut r = PortRules {
        count: list.len() as u32,
        flags: if lateral_ok {
            rules_flags::LATERAL_OK
        } else {
            0
        },
        ..Default::default()
    };
    r.rules[..list.len()].copy_from_slice(list);
    r
}

/// A host like the test world's: one runner (and a second one) with a
/// forge entry, a registry CIDR, a broad 0.0.0.0/0 on port 8443, a learned
/// address, the metadata and lateral baselines and a DoH resolver.
fn world() -> World {
    let mut w = World::default();
    for id in [GLOBAL_RUNNER, RUNNER, OTHER] {
        w.lockdowns.insert(id, Lockdown::default());
    }
    let state = RunnerState {
        flags: flags::CONFIGURED,
        dns_proxy_port: 5353,
        host_netns: NETNS,
        ..Default::default()
    };
    w.states.insert(RUNNER, state);
    w.states.insert(OTHER, state);
    let meta = |a| (128, a, BaselineEntry::default());
    w.metadata.push(meta(v4([169, 254, 169, 254])));
    w.metadata.push(meta(v6("fd00:ec2::254")));
    w.metadata.push((
        128,
        v4([168, 63, 129, 16]),
        BaselineEntry {
            exempt_port: 53,
            ..Default::default()
        },
    ));
    w.lateral
        .push((96 + 8, v4([10, 0, 0, 0]), BaselineEntry::default()));
    w.lateral
        .push((96 + 16, v4([169, 254, 0, 0]), BaselineEntry::default()));
    w.lateral.push((
        128,
        v4([1, 1, 1, 1]),
        BaselineEntry {
            kind: baseline_kind::DOH,
            ..Default::default()
        },
    ));
    let forge = PortRule::new(443, 443, proto::TCP).with_flags(rule_flags::FORGE);
    w.cidrs
        .push((RUNNER, 128, v4([203, 0, 113, 10]), rules(&[forge], false)));
    w.cidrs.push((
        RUNNER,
        96 + 24,
        v4([203, 0, 113, 0]),
        rules(&[PortRule::new(80, 80, proto::TCP)], false),
    ));
    w.cidrs.push((
        RUNNER,
        96,
        v4([0, 0, 0, 0]),
        rules(&[PortRule::new(8443, 8443, proto::ANY)], false),
    ));
    w.cidrs.push((
        RUNNER,
        128,
        v4([10, 0, 0, 7]),
        rules(&[PortRule::all_ports(proto::TCP)], true),
    ));
    w.learned.insert(
        ExactKey {
            runner: RUNNER,
            addr: v4([203, 0, 113, 20]),
        },
        Learned {
            expires_ns: NOW + 1,
            rules: rules(&[PortRule::new(443, 443, proto::TCP)], false),
        },
    );
    w.learned.insert(
        ExactKey {
            runner: RUNNER,
            addr: v4([203, 0, 113, 21]),
        },
        Learned {
            expires_ns: NOW,
            rules: rules(&[PortRule::new(443, 443, proto::TCP)], false),
        },
    );
    w.current_netns = NETNS;
    let mut listen = |addr, port, runner| {
        w.listeners
            .push((NETNS, addr, port, proto::IPPROTO_TCP, runner));
    };
    // The runner's test server on 127.0.0.1:8080, a wildcard one on 7000,
    // one on [::1]:6000; another runner's on 127.0.0.1:9090.
    listen(v4([127, 0, 0, 1]), 8080, Some(RUNNER));
    listen(v4([0, 0, 0, 0]), 7000, Some(RUNNER));
    listen(v6("::1"), 6000, Some(RUNNER));
    listen(v4([127, 0, 0, 2]), 5000, Some(RUNNER));
    listen(v4([127, 0, 0, 1]), 9090, Some(OTHER));
    // The job's wildcard listener on 7100, and a host service on
    // 127.0.0.1:7100, which the kernel prefers for that address.
    listen(v4([0, 0, 0, 0]), 7100, Some(RUNNER));
    listen(v4([127, 0, 0, 1]), 7100, None);
    // The local-use NAT64 block is lateral until declared; an operator's
    // /96 is declared.
    w.lateral
        .push((48, v6("64:ff9b:1::"), BaselineEntry::default()));
    w.nat64.push((
        96,
        v6("2001:db8:64::"),
        Nat64Entry {
            layout: 96,
            _pad: [0; 7],
        },
    ));
    w
}

fn tcp(given: Addr, port: u16) -> Destination {
    Destination {
        given,
        port,
        proto: proto::IPPROTO_TCP,
        family: 4,
        hook: hook::CONNECT4,
        cgroup: 0,
    }
}

fn udp(given: Addr, port: u16) -> Destination {
    Destination {
        proto: proto::IPPROTO_UDP,
        hook: hook::SENDMSG4,
        ..tcp(given, port)
    }
}

fn lock(w: &mut World, id: u32, keep_forge: bool) {
    let mut flags = lockdown_flags::ACTIVE;
    if keep_forge {
        flags |= lockdown_flags::KEEP_FORGE;
    }
    w.lockdowns.insert(
        id,
        Lockdown {
            flags,
            ..Default::default()
        },
    );
}

use Outcome::{Allow, Audit, Deny, Fault};
use reason::{LATERAL, LOCKDOWN, METADATA, NOT_ALLOWED};

#[test]
fn the_verdict_order_on_an_ordinary_runner() {
    let w = world();
    let nat64 = |a: [u8; 4]| {
        let mut n = v6("64:ff9b::");
        n[12..].copy_from_slice(&a);
        n
    };
    let table: &[(&str, Destination, Outcome)] = &[
        ("forge on its port", tcp(v4([203, 0, 113, 10]), 443), Allow),
        (
            "forge host inherits nothing from the /24: the trie answers the longest prefix only",
            tcp(v4([203, 0, 113, 10]), 80),
            Deny(NOT_ALLOWED),
        ),
        ("registry /24 on 80", tcp(v4([203, 0, 113, 99]), 80), Allow),
        (
            "registry /24, wrong port",
            tcp(v4([203, 0, 113, 99]), 81),
            Deny(NOT_ALLOWED),
        ),
        (
            "0.0.0.0/0 on 8443",
            tcp(v4([198, 51, 100, 66]), 8443),
            Allow,
        ),
        (
            "0.0.0.0/0 over UDP",
            udp(v4([198, 51, 100, 66]), 8443),
            Allow,
        ),
        (
            "attacker",
            tcp(v4([198, 51, 100, 66]), 443),
            Deny(NOT_ALLOWED),
        ),
        ("learned, in time", tcp(v4([203, 0, 113, 20]), 443), Allow),
        (
            "learned, expired exactly now",
            tcp(v4([203, 0, 113, 21]), 443),
            Deny(NOT_ALLOWED),
        ),
        (
            "learned, wrong protocol",
            udp(v4([203, 0, 113, 20]), 443),
            Deny(NOT_ALLOWED),
        ),
        (
            "metadata",
            tcp(v4([169, 254, 169, 254]), 80),
            Deny(METADATA),
        ),
        ("metadata v6", tcp(v6("fd00:ec2::254"), 80), Deny(METADATA)),
        (
            "metadata beats 0.0.0.0/0",
            tcp(v4([169, 254, 169, 254]), 8443),
            Deny(METADATA),
        ),
        (
            "metadata exemption: Azure DNS",
            udp(v4([168, 63, 129, 16]), 53),
            Deny(NOT_ALLOWED),
        ),
        (
            "Azure WireServer",
            tcp(v4([168, 63, 129, 16]), 80),
            Deny(METADATA),
        ),
        ("neighbour", tcp(v4([10, 0, 0, 5]), 22), Deny(LATERAL)),
        (
            "neighbour under 0.0.0.0/0 stays lateral",
            tcp(v4([10, 0, 0, 5]), 8443),
            Deny(LATERAL),
        ),
        (
            "neighbour named explicitly",
            tcp(v4([10, 0, 0, 7]), 22),
            Allow,
        ),
        ("link-local", tcp(v4([169, 254, 1, 1]), 80), Deny(LATERAL)),
        (
            "DoH resolver under 0.0.0.0/0",
            tcp(v4([1, 1, 1, 1]), 8443),
            Deny(NOT_ALLOWED),
        ),
        (
            "own loopback listener",
            tcp(v4([127, 0, 0, 1]), 8080),
            Allow,
        ),
        (
            "own listener through 0.0.0.0",
            tcp(v4([0, 0, 0, 0]), 8080),
            Allow,
        ),
        (
            "another runner's listener",
            tcp(v4([127, 0, 0, 1]), 9090),
            Deny(LATERAL),
        ),
        (
            "host service on loopback",
            tcp(v4([127, 0, 0, 1]), 22),
            Deny(LATERAL),
        ),
        (
            "a host service on the address the job's wildcard covers",
            tcp(v4([127, 0, 0, 1]), 7100),
            Deny(LATERAL),
        ),
        ("own DNS proxy", udp(v4([127, 0, 0, 1]), 5353), Allow),
        (
            "v4-mapped on a v6 socket",
            Destination {
                family: 6,
                ..tcp(v4([169, 254, 169, 254]), 80)
            },
            Deny(METADATA),
        ),
        (
            "NAT64 metadata",
            tcp(nat64([169, 254, 169, 254]), 80),
            Deny(METADATA),
        ),
        (
            "NAT64 neighbour",
            tcp(nat64([10, 0, 0, 5]), 22),
            Deny(LATERAL),
        ),
        ("NAT64 forge", tcp(nat64([203, 0, 113, 10]), 443), Allow),
        (
            "own wildcard listener",
            tcp(v4([127, 0, 0, 1]), 7000),
            Allow,
        ),
        (
            "own wildcard listener, another loopback address",
            tcp(v4([127, 9, 9, 9]), 7000),
            Allow,
        ),
        ("own [::1] listener", tcp(v6("::1"), 6000), Allow),
        (
            "owning [::1]:6000 is not owning 127.0.0.1:6000",
            tcp(v4([127, 0, 0, 1]), 6000),
            Deny(LATERAL),
        ),
        (
            "owning 127.0.0.2:5000 is not owning 127.0.0.1:5000",
            tcp(v4([127, 0, 0, 1]), 5000),
            Deny(LATERAL),
        ),
        (
            "a v4 wildcard is not a v6 one",
            tcp(v6("::1"), 7000),
            Deny(LATERAL),
        ),
        (
            "undeclared local-use NAT64 to metadata",
            tcp(v6("64:ff9b:1::a9fe:a9fe"), 80),
            Deny(LATERAL),
        ),
        (
            "undeclared local-use NAT64, another layout",
            tcp(v6("64:ff9b:1:0:a9:fea9:fe00:0"), 80),
            Deny(LATERAL),
        ),
        (
            "undeclared local-use NAT64 to a public address",
            tcp(v6("64:ff9b:1::cb00:710a"), 443),
            Deny(LATERAL),
        ),
        (
            "declared NAT64 /96: judged as the v4 it carries",
            tcp(v6("2001:db8:64::cb00:710a"), 443),
            Allow,
        ),
        (
            "declared NAT64 /96 to metadata",
            tcp(v6("2001:db8:64::a9fe:a9fe"), 80),
            Deny(METADATA),
        ),
        (
            "declared NAT64 /96 to a neighbour",
            tcp(v6("2001:db8:64::a00:5"), 22),
            Deny(LATERAL),
        ),
        (
            "ordinary v6",
            tcp(v6("2001:db8::1"), 443),
            Deny(NOT_ALLOWED),
        ),
    ];
    for (what, dst, want) in table {
        assert_eq!(decide(&w, RUNNER, dst, NOW), *want, "{what}");
    }
}

#[test]
fn a_listener_counts_only_in_the_network_namespace_it_was_bound_in() {
    let mut w = world();
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([127, 0, 0, 1]), 8080), NOW),
        Allow
    );
    // The same job's socket in another namespace (a container's) reaches
    // that namespace's loopback, where the listener is not.
    w.current_netns = NETNS + 1;
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([127, 0, 0, 1]), 8080), NOW),
        Deny(LATERAL)
    );
}

#[test]
fn runners_never_share_entries() {
    let w = world();
    assert_eq!(
        decide(&w, OTHER, &tcp(v4([203, 0, 113, 10]), 443), NOW),
        Deny(NOT_ALLOWED)
    );
    assert_eq!(
        decide(&w, OTHER, &tcp(v4([203, 0, 113, 20]), 443), NOW),
        Deny(NOT_ALLOWED),
        "learned by runner 1 only"
    );
    assert_eq!(
        decide(&w, OTHER, &tcp(v4([127, 0, 0, 1]), 9090), NOW),
        Allow,
        "its own listener"
    );
}

#[test]
fn lockdown_denies_first_and_keep_forge_keeps_only_forge_rules() {
    let mut w = world();
    lock(&mut w, RUNNER, false);
    for dst in [
        tcp(v4([203, 0, 113, 10]), 443),
        tcp(v4([127, 0, 0, 1]), 8080),
        tcp(v4([169, 254, 169, 254]), 80),
        udp(v4([127, 0, 0, 1]), 5353),
    ] {
        assert_eq!(decide(&w, RUNNER, &dst, NOW), Deny(LOCKDOWN), "{dst:?}");
    }
    assert_eq!(
        decide(&w, OTHER, &tcp(v4([127, 0, 0, 1]), 9090), NOW),
        Allow,
        "another runner is not locked"
    );

    lock(&mut w, RUNNER, true);
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([203, 0, 113, 10]), 443), NOW),
        Allow
    );
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([203, 0, 113, 20]), 443), NOW),
        Deny(LOCKDOWN),
        "a learned address without the forge flag"
    );
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([127, 0, 0, 1]), 8080), NOW),
        Deny(LOCKDOWN),
        "loopback is closed too"
    );
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([169, 254, 169, 254]), 80), NOW),
        Deny(METADATA)
    );

    // The host-wide entry covers every runner; keep-forge must hold on
    // both entries for the forge to stay open.
    let mut w = world();
    lock(&mut w, GLOBAL_RUNNER, true);
    assert_eq!(
        decide(&w, OTHER, &tcp(v4([127, 0, 0, 1]), 9090), NOW),
        Deny(LOCKDOWN)
    );
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([203, 0, 113, 10]), 443), NOW),
        Allow
    );
    lock(&mut w, RUNNER, false);
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([203, 0, 113, 10]), 443), NOW),
        Deny(LOCKDOWN)
    );
}

#[test]
fn a_lockdown_lapses_at_its_deadline() {
    let mut w = world();
    w.lockdowns.insert(
        RUNNER,
        Lockdown {
            flags: lockdown_flags::ACTIVE,
            until_ns: NOW,
            ..Default::default()
        },
    );
    let forge = tcp(v4([203, 0, 113, 10]), 443);
    assert_eq!(decide(&w, RUNNER, &forge, NOW - 1), Deny(LOCKDOWN));
    assert_eq!(decide(&w, RUNNER, &forge, NOW), Allow);
}

#[test]
fn audit_lets_lateral_and_default_through_but_not_metadata_or_lockdown() {
    let mut w = world();
    w.states.get_mut(&RUNNER).unwrap().flags |= flags::AUDIT;
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([198, 51, 100, 66]), 443), NOW),
        Audit(NOT_ALLOWED)
    );
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([10, 0, 0, 5]), 22), NOW),
        Audit(LATERAL)
    );
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([169, 254, 169, 254]), 80), NOW),
        Deny(METADATA)
    );
    lock(&mut w, RUNNER, false);
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([198, 51, 100, 66]), 443), NOW),
        Deny(LOCKDOWN)
    );
}

/// A job container and its service container (group 1), another job's
/// service (group 2), on the docker bridge: peers reach each other on any
/// port, whatever else the policy says; nothing else changes.
#[test]
fn containers_of_one_job_reach_each_other_and_no_one_else() {
    const JOB: u64 = 100;
    const SERVICE: u64 = 101;
    const OTHER_SERVICE: u64 = 200;
    let mut w = world();
    w.lateral
        .push((96 + 12, v4([172, 16, 0, 0]), BaselineEntry::default()));
    for (cgroup, group, addr) in [
        (JOB, 1, [172, 17, 0, 2]),
        (SERVICE, 1, [172, 17, 0, 3]),
        (OTHER_SERVICE, 2, [172, 17, 0, 4]),
    ] {
        w.groups.insert(cgroup, group);
        w.peers.push((group, v4(addr)));
    }
    // A service container at the metadata address (it cannot be one, but
    // the order must hold): metadata still wins.
    w.peers.push((1, v4([169, 254, 169, 254])));
    w.current_cgroup = JOB;
    let service = tcp(v4([172, 17, 0, 3]), 5432);
    assert_eq!(decide(&w, RUNNER, &service, NOW), Allow, "its own service");
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([172, 17, 0, 3]), 6379), NOW),
        Allow,
        "on any port"
    );
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([172, 17, 0, 4]), 5432), NOW),
        Deny(LATERAL),
        "another job's service"
    );
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([169, 254, 169, 254]), 80), NOW),
        Deny(METADATA)
    );
    // The service's reply, judged by the backstop with the service's cgroup.
    let reply = Destination {
        hook: hook::EGRESS,
        cgroup: SERVICE,
        ..tcp(v4([172, 17, 0, 2]), 40000)
    };
    assert_eq!(decide(&w, RUNNER, &reply, NOW), Allow);
    let stranger = Destination {
        cgroup: OTHER_SERVICE,
        ..reply
    };
    assert_eq!(decide(&w, RUNNER, &stranger, NOW), Deny(LATERAL));
    // A container the agent does not know: as before, lateral.
    w.current_cgroup = 999;
    assert_eq!(decide(&w, RUNNER, &service, NOW), Deny(LATERAL));
    // Lockdown closes the way between them too.
    w.current_cgroup = JOB;
    lock(&mut w, RUNNER, false);
    assert_eq!(decide(&w, RUNNER, &service, NOW), Deny(LOCKDOWN));
}

#[test]
fn loopback_settings() {
    let mut w = world();
    let host_service = tcp(v4([127, 0, 0, 1]), 22);
    w.states.get_mut(&RUNNER).unwrap().flags |= flags::LOOPBACK_ALLOW;
    assert_eq!(decide(&w, RUNNER, &host_service, NOW), Allow);
    let state = w.states.get_mut(&RUNNER).unwrap();
    state.flags = flags::CONFIGURED | flags::LOOPBACK_DENY;
    assert_eq!(
        decide(&w, RUNNER, &tcp(v4([127, 0, 0, 1]), 8080), NOW),
        Deny(LATERAL),
        "deny refuses even the job's own listener"
    );
    assert_eq!(
        decide(&w, RUNNER, &udp(v4([127, 0, 0, 1]), 5353), NOW),
        Allow,
        "but never the runner's own DNS proxy"
    );
}

#[test]
fn unconfigured_or_unreadable_state_fails_closed() {
    let mut w = world();
    let forge = tcp(v4([203, 0, 113, 10]), 443);
    w.states.get_mut(&RUNNER).unwrap().flags = 0;
    assert_eq!(decide(&w, RUNNER, &forge, NOW), Deny(NOT_ALLOWED));
    w.states.remove(&RUNNER);
    assert_eq!(decide(&w, RUNNER, &forge, NOW), Fault);
    let mut w = world();
    w.lockdowns.remove(&GLOBAL_RUNNER);
    assert_eq!(decide(&w, RUNNER, &forge, NOW), Fault);
}

#[test]
fn lock_of_reads_the_clock_only_under_an_active_lockdown() {
    let mut w = world();
    let clock = |_: ()| -> u64 { panic!("clock read without a lockdown") };
    assert_eq!(lock_of(&w, RUNNER, || clock(())), Some(Lock::Open));
    lock(&mut w, GLOBAL_RUNNER, false);
    assert_eq!(lock_of(&w, RUNNER, || NOW), Some(Lock::Closed));
}

#[test]
fn dns_is_port_53_over_tcp_or_udp() {
    assert!(is_dns(&udp(v4([1, 2, 3, 4]), 53)));
    assert!(is_dns(&tcp(v4([1, 2, 3, 4]), 53)));
    assert!(!is_dns(&tcp(v4([1, 2, 3, 4]), 853)));
    assert!(!is_dns(&Destination {
        proto: proto::IPPROTO_ICMP,
        ..udp(v4([1, 2, 3, 4]), 53)
    }));
}

/// The kernel asks one merged baseline trie where the verdict once asked a
/// metadata and a lateral trie; every nesting of the two sets must answer
/// as the two tries did.
#[test]
fn one_merged_baseline_answers_as_the_metadata_and_lateral_sets_did() {
    let mut w = world();
    // A metadata range with a neighbour range inside it, and a neighbour
    // range holding a metadata address exempt on one port.
    w.metadata
        .push((96 + 16, v4([100, 100, 0, 0]), BaselineEntry::default()));
    w.lateral
        .push((96 + 24, v4([100, 100, 7, 0]), BaselineEntry::default()));
    w.lateral
        .push((96 + 16, v4([172, 31, 0, 0]), BaselineEntry::default()));
    w.metadata.push((
        128,
        v4([172, 31, 0, 2]),
        BaselineEntry {
            exempt_port: 53,
            ..Default::default()
        },
    ));
    // A DoH resolver inside a neighbour range, and the same prefix in both
    // sets.
    w.lateral.push((
        128,
        v4([10, 9, 9, 9]),
        BaselineEntry {
            kind: baseline_kind::DOH,
            ..Default::default()
        },
    ));
    w.metadata
        .push((96 + 24, v4([192, 0, 0, 0]), BaselineEntry::default()));
    w.lateral
        .push((96 + 24, v4([192, 0, 0, 0]), BaselineEntry::default()));
    let table: &[(&str, Destination, Outcome)] = &[
        (
            "metadata range, outside its neighbour range",
            tcp(v4([100, 100, 1, 1]), 80),
            Deny(METADATA),
        ),
        (
            "metadata range, inside its neighbour range: metadata still wins",
            tcp(v4([100, 100, 7, 7]), 80),
            Deny(METADATA),
        ),
        (
            "metadata inside a neighbour range, off its exempt port",
            tcp(v4([172, 31, 0, 2]), 80),
            Deny(METADATA),
        ),
        (
            "metadata inside a neighbour range, on its exempt port: a neighbour",
            udp(v4([172, 31, 0, 2]), 53),
            Deny(LATERAL),
        ),
        (
            "the neighbour range around it",
            tcp(v4([172, 31, 0, 3]), 80),
            Deny(LATERAL),
        ),
        (
            "a DoH resolver inside a neighbour range is refused as DoH",
            tcp(v4([10, 9, 9, 9]), 443),
            Deny(NOT_ALLOWED),
        ),
        (
            "a prefix in both sets is metadata",
            tcp(v4([192, 0, 0, 9]), 80),
            Deny(METADATA),
        ),
    ];
    for (what, dst, want) in table {
        assert_eq!(decide(&w, RUNNER, dst, NOW), *want, "{what}");
    }
}

/// The clock is the one read a verdict may skip: a static entry needs none,
/// a learned entry one, and a lockdown with a learned entry still one.
#[test]
fn a_verdict_reads_the_clock_at_most_once_and_only_when_it_must() {
    let reads = core::cell::Cell::new(0);
    let clock = Clock::new(|| {
        reads.set(reads.get() + 1);
        NOW
    });
    let mut w = world();
    assert_eq!(
        decide_at(&w, RUNNER, &tcp(v4([203, 0, 113, 10]), 443), &clock),
        Allow
    );
    assert_eq!(reads.get(), 0, "a static CIDR needs no clock");
    let clock = Clock::new(|| {
        reads.set(reads.get() + 1);
        NOW
    });
    assert_eq!(
        decide_at(&w, RUNNER, &tcp(v4([203, 0, 113, 20]), 443), &clock),
        Allow
    );
    assert_eq!(reads.get(), 1, "a learned entry's expiry");
    lock(&mut w, RUNNER, true);
    w.learned
        .get_mut(&ExactKey {
            runner: RUNNER,
            addr: v4([203, 0, 113, 20]),
        })
        .unwrap()
        .rules = rules(
        &[PortRule::new(443, 443, proto::TCP).with_flags(rule_flags::FORGE)],
        false,
    );
    reads.set(0);
    let clock = Clock::new(|| {
        reads.set(reads.get() + 1);
        NOW
    });
    assert_eq!(
        decide_at(&w, RUNNER, &tcp(v4([203, 0, 113, 20]), 443), &clock),
        Allow
    );
    assert_eq!(
        reads.get(),
        1,
        "the lockdown's deadline and the expiry share one read"
    );
}

/// Every address a prefix holds lies in one of the slots its hint marks,
/// whatever the prefix: a missing slot would skip a lookup that matches.
#[test]
fn a_prefix_hint_marks_every_slot_its_addresses_fall_in() {
    use crate::{addr::prefix_match, maps::hint};
    let nets = [
        v4([0, 0, 0, 0]),
        v4([10, 0, 0, 0]),
        v4([172, 16, 0, 0]),
        v4([169, 254, 169, 254]),
        v6("::"),
        v6("::1"),
        v6("fd00:ec2::254"),
        v6("64:ff9b::"),
        v6("2001:db8::"),
        v6("fc00::"),
    ];
    // Addresses around every slot edge, in both families.
    let mut targets: Vec<Addr> = Vec::new();
    for b in [0u8, 1, 9, 10, 11, 127, 128, 169, 172, 203, 254, 255] {
        targets.push(v4([b, 0, 0, 1]));
        targets.push(v4([b, 255, 255, 255]));
        let mut a = [0u8; 16];
        a[0] = b;
        a[15] = 1;
        targets.push(a);
    }
    targets.extend(nets.iter().copied());
    for net in nets {
        for len in 0..=128 {
            let mut slots = Vec::new();
            hint::slots_of(len, &net, |s| slots.push(s));
            assert!(!slots.is_empty(), "/{len} of {net:?} marks no slot");
            for t in &targets {
                if prefix_match(len, &net, t) {
                    assert!(
                        slots.contains(&hint::slot(t)),
                        "{t:?} in /{len} of {net:?}, slot {} unmarked",
                        hint::slot(t)
                    );
                }
            }
        }
    }
}
