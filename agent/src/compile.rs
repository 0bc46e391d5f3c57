//! Policy → plan: everything the kernel maps must hold for a validated
//! policy, worked out on the host with no kernel involved. The agent builds
//! a [`Plan`] and hands it to `Datapath::sync`; tests check plans directly.

mod cidrs;
pub use cidrs::CidrCache;
#[cfg(test)]
use cidrs::compile_cidrs;

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use egret_common::{
    addr::{Addr, MAPPED_PREFIX_LEN, mapped_v4},
    maps::{
        Baseline, BaselineEntry, CIDR_KEY_BITS, CidrKey, Nat64Entry, baseline_kind, merged_baseline,
    },
    rules::{MAX_PORT_RULES, PortRule, PortRules, rules_flags},
    state::{RunnerState, flags},
};
use ipnet::IpNet;

use crate::{
    baseline,
    policy::{self, Loopback, Mode, Policy, SocketKind},
    runners,
};

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "runner '{runner}': {net} collects {count} port ranges from the entries that cover it; \
         at most {MAX_PORT_RULES} fit"
    )]
    TooManyPortRules {
        runner: String,
        net: IpNet,
        count: usize,
    },
    #[error("runner '{0}' has no id: it was not registered before compiling")]
    NoId(String),
}

/// A key of the baseline tries: prefix length over 128 bits, and the
/// address (v4 mapped).
pub type TrieKey = (u32, Addr);
/// A CIDR trie key: prefix length plus (runner, address).
pub type CidrEntryKey = (u32, CidrKey);

/// Every runner's CIDR trie entries. The keys come from the policy, not
/// from a job, so a fast hash needs no defence against chosen collisions;
/// reloads of tens of thousands of entries hash them several times.
pub type CidrEntries = HashMap<CidrEntryKey, PortRules, foldhash::fast::RandomState>;

/// What the host contributes to a plan besides the policy.
#[derive(Clone, Debug, Default)]
pub struct Host {
    /// The cgroup2 mount point.
    pub cgroup_root: PathBuf,
    /// The subnets of the host's own interfaces: lateral, like RFC 1918.
    pub subnets: Vec<IpNet>,
    /// The agent's network namespace cookie: jobs there reach their DNS
    /// proxy on loopback.
    pub netns: u64,
}

/// The contents of every map the policy decides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub metadata: HashMap<TrieKey, BaselineEntry>,
    /// NAT64 prefixes and their layouts: the local-use block (any layout)
    /// and the policy's own.
    pub nat64: HashMap<TrieKey, Nat64Entry>,
    /// Neighbours (private ranges, host subnets) and DoH resolvers.
    pub lateral: HashMap<TrieKey, BaselineEntry>,
    pub cidrs: CidrEntries,
    pub runners: Vec<RunnerPlan>,
}

/// One runner as the datapath sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunnerPlan {
    pub name: String,
    pub id: u32,
    /// As the policy names it, relative to the cgroup2 root.
    pub cgroup: String,
    pub cgroup_dir: PathBuf,
    /// The state the programs read; `dns_proxy_port` is filled in once the
    /// runner's proxy listens.
    pub state: RunnerState,
}

impl Plan {
    /// Every runner id the plan configures.
    pub fn ids(&self) -> std::collections::HashSet<u32> {
        self.runners.iter().map(|r| r.id).collect()
    }

    /// The metadata and lateral sets as the one trie the kernel asks
    /// (`egret_common::maps::merged_baseline`).
    pub fn baseline(&self) -> HashMap<TrieKey, Baseline> {
        let metadata = || self.metadata.iter().map(|((l, a), v)| (*l, a, v));
        let lateral = || self.lateral.iter().map(|((l, a), v)| (*l, a, v));
        metadata()
            .chain(lateral())
            .map(|(len, net, _)| {
                let value = merged_baseline(len, net, metadata(), lateral());
                ((len, *net), value)
            })
            .collect()
    }
}

/// Compiles `policy` for runners already given ids (`ids`: name → id).
pub fn plan(
    policy: &Policy,
    ids: &HashMap<String, u32>,
    host: &Host,
) -> Result<Plan, CompileError> {
    plan_with(policy, ids, host, &mut CidrCache::default())
}

/// [`plan`], compiling again only the CIDR entries an edit can change
/// since `cache` saw the runner (those at or below a prefix whose rules
/// changed; every entry of a runner whose lateral ranges changed): what
/// the agent's reloads use.
pub fn plan_with(
    policy: &Policy,
    ids: &HashMap<String, u32>,
    host: &Host,
    cache: &mut CidrCache,
) -> Result<Plan, CompileError> {
    let id_of = |name: &str| {
        ids.get(name)
            .copied()
            .ok_or_else(|| CompileError::NoId(name.to_owned()))
    };
    let mut lateral_nets: Vec<IpNet> = baseline::lateral_nets().collect();
    lateral_nets.extend(host.subnets.iter().copied());
    let doh: Vec<IpNet> = baseline::doh_nets().collect();
    let metadata = baseline::metadata_nets()
        .map(|(net, port)| {
            (
                trie_prefix(&net),
                BaselineEntry {
                    exempt_port: port,
                    ..Default::default()
                },
            )
        })
        .collect();
    let doh_entry = BaselineEntry {
        kind: baseline_kind::DOH,
        ..Default::default()
    };
    let lateral = doh
        .iter()
        .map(|net| (trie_prefix(net), doh_entry))
        .chain(
            lateral_nets
                .iter()
                .map(|net| (trie_prefix(net), BaselineEntry::default())),
        )
        .collect();
    // An allow entry opens a DoH resolver only by naming it, as it opens a
    // neighbour.
    lateral_nets.extend(doh);

    let mut cidr_input = Vec::with_capacity(policy.runners.len());
    let mut runners = Vec::with_capacity(policy.runners.len());
    for runner in &policy.runners {
        let id = id_of(&runner.name)?;
        cidr_input.push(RunnerCidrs {
            id,
            name: &runner.name,
            cidrs: &runner.cidrs,
        });
        runners.push(RunnerPlan {
            name: runner.name.clone(),
            id,
            cgroup: runner.cgroup.clone(),
            cgroup_dir: runners::cgroup_dir(&host.cgroup_root, &runner.cgroup),
            state: runner_state(runner, host.netns),
        });
    }
    Ok(Plan {
        metadata,
        nat64: nat64_entries(&policy.nat64_prefixes),
        lateral,
        cidrs: cache.compile(&cidr_input, &lateral_nets)?,
        runners,
    })
}

/// The NAT64 trie: the policy's prefixes, whose length is their layout.
/// (The local-use block is a lateral range until declared: see
/// `baseline::LATERAL`.)
fn nat64_entries(prefixes: &[ipnet::Ipv6Net]) -> HashMap<TrieKey, Nat64Entry> {
    prefixes
        .iter()
        .map(|net| {
            (
                (u32::from(net.prefix_len()), net.network().octets()),
                Nat64Entry {
                    layout: net.prefix_len(),
                    _pad: [0; 7],
                },
            )
        })
        .collect()
}

/// The state the programs read for a runner, before its proxy has a port.
pub fn runner_state(runner: &policy::Runner, host_netns: u64) -> RunnerState {
    let mut state = RunnerState {
        flags: flags::CONFIGURED,
        dns_proxy_port: 0,
        _pad: 0,
        host_netns,
        dns_listen: runner.dns_listen.map_or([0; 16], addr_of),
    };
    for kind in &runner.sockets {
        state.flags |= match kind {
            SocketKind::Raw => flags::SOCK_RAW,
            SocketKind::Sctp => flags::SOCK_SCTP,
        };
    }
    state.flags |= match runner.loopback {
        Loopback::Own => 0,
        Loopback::Allow => flags::LOOPBACK_ALLOW,
        Loopback::Deny => flags::LOOPBACK_DENY,
    };
    if runner.mode == Mode::Audit {
        state.flags |= flags::AUDIT;
    }
    if runner.multicast {
        state.flags |= flags::MULTICAST;
    }
    state
}

/// A CIDR as the tries store it: prefix length over 128 bits, v4 mapped.
pub fn trie_prefix(net: &IpNet) -> (u32, Addr) {
    match net.trunc() {
        IpNet::V4(n) => (
            MAPPED_PREFIX_LEN + u32::from(n.prefix_len()),
            mapped_v4(n.network().octets()),
        ),
        IpNet::V6(n) => (u32::from(n.prefix_len()), n.network().octets()),
    }
}

/// An address as the maps store it.
pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => mapped_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address the programs judge `ip` as, and so the key of a learned
/// entry for it: IPv4 mapped, and NAT64 addresses of the well-known or a
/// policy prefix as the IPv4 address they carry (a DNS64 answer).
pub fn judged_addr(ip: IpAddr, nat64_prefixes: &[ipnet::Ipv6Net]) -> Addr {
    let a = egret_common::addr::normalize(addr_of(ip));
    match ip {
        IpAddr::V6(v6) => nat64_prefixes
            .iter()
            .find(|net| net.contains(&v6))
            .and_then(|net| egret_common::addr::nat64_embedded(&a, net.prefix_len()))
            .map_or(a, mapped_v4),
        IpAddr::V4(_) => a,
    }
}

/// The address a map entry stands for; IPv4-mapped entries are IPv4.
pub fn ip_of(addr: Addr) -> IpAddr {
    if egret_common::addr::is_mapped_v4(&addr) {
        IpAddr::V4(std::net::Ipv4Addr::new(
            addr[12], addr[13], addr[14], addr[15],
        ))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(addr))
    }
}

/// One runner's static CIDR entries, as policy gave them.
struct RunnerCidrs<'a> {
    pub id: u32,
    pub name: &'a str,
    pub cidrs: &'a [crate::policy::CidrRule],
}

/// Joins rules with the same protocols and flags whose ranges touch, and
/// drops exact duplicates, so unions stay within the per-entry limit where
/// possible.
pub fn merge_rules(rules: Vec<PortRule>) -> Vec<PortRule> {
    // Most entries carry one rule: nothing to merge.
    if rules.len() <= 1 {
        return rules;
    }
    let mut groups: HashMap<(u8, u8), Vec<(u16, u16)>> = HashMap::new();
    for r in rules {
        groups
            .entry((r.protos, r.flags))
            .or_default()
            .push((r.first, r.last));
    }
    let mut out: Vec<PortRule> = groups
        .into_iter()
        .flat_map(|((protos, flags), ranges)| {
            crate::policy::merge_ranges(ranges)
                .into_iter()
                .map(move |(a, b)| PortRule::new(a, b, protos).with_flags(flags))
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests;
