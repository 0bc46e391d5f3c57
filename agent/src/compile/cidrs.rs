//! Static CIDR rules into trie entries, and the cache that lets a reload
//! compile again only the entries an edit can change.
//!
//! The trie answers with the longest matching prefix only, so each entry's
//! value carries the union of its own rules and those of every entry of the
//! same runner that contains it. An entry that names a lateral range
//! explicitly is marked LATERAL_OK and inherits only from entries that do
//! too, so `0.0.0.0/0` never opens a neighbour through a narrower entry.
//!
//! An entry's value therefore depends only on the rules of its own prefix
//! and of the prefixes containing it: after an edit, only the prefixes at
//! or below one whose rules changed are compiled again.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash as _, Hasher as _},
};

use super::*;

/// Maps keyed by prefix. Their keys come from the policy, not from a
/// job, so a fast hash needs no defence against chosen collisions.
type ByNet<V> = HashMap<IpNet, V, foldhash::fast::RandomState>;

/// One runner's rules by prefix, with whether the prefix names a lateral
/// range.
type Own = ByNet<(Vec<PortRule>, bool)>;

/// One runner's compiled entries and what they came from.
struct Compiled {
    /// Of the runner's name (which an error names) and the lateral ranges:
    /// when either changes, everything is compiled again.
    fingerprint: u64,
    own: Own,
    entries: ByNet<PortRules>,
}

/// Per runner id: its entries as last compiled.
#[derive(Default)]
pub struct CidrCache {
    runners: HashMap<u32, Compiled>,
}

fn fingerprint(name: &str, lateral: &[IpNet]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    lateral.hash(&mut h);
    h.finish()
}

/// Compiles every runner's rules afresh.
#[cfg(test)]
pub(super) fn compile_cidrs(
    runners: &[RunnerCidrs<'_>],
    lateral: &[IpNet],
) -> Result<CidrEntries, CompileError> {
    CidrCache::default().compile(runners, lateral)
}

impl CidrCache {
    pub(super) fn compile(
        &mut self,
        runners: &[RunnerCidrs<'_>],
        lateral: &[IpNet],
    ) -> Result<CidrEntries, CompileError> {
        self.runners
            .retain(|id, _| runners.iter().any(|r| r.id == *id));
        let mut out = CidrEntries::with_capacity_and_hasher(
            runners.iter().map(|r| r.cidrs.len()).sum(),
            Default::default(),
        );
        for runner in runners {
            let fingerprint = fingerprint(runner.name, lateral);
            let before = self
                .runners
                .remove(&runner.id)
                .filter(|c| c.fingerprint == fingerprint);
            let own = own_rules(runner, lateral, before.as_ref().map(|c| &c.own));
            let entries = match before {
                Some(before) => recompile(runner, &own, before)?,
                None => {
                    let lengths = lengths(&own);
                    own.keys()
                        .map(|net| Ok((*net, compile_net(runner, &own, &lengths, net)?)))
                        .collect::<Result<_, CompileError>>()?
                }
            };
            out.extend(entries.iter().map(|(net, value)| {
                let (prefix, addr) = trie_prefix(net);
                ((32 + prefix, CidrKey::new(runner.id, addr)), *value)
            }));
            self.runners.insert(
                runner.id,
                Compiled {
                    fingerprint,
                    own,
                    entries,
                },
            );
        }
        debug_assert!(out.keys().all(|(p, _)| *p <= CIDR_KEY_BITS));
        Ok(out)
    }
}

/// The runner's rules by prefix. Whether a prefix names a lateral range is
/// taken from `before` where it had the prefix (the lateral ranges are the
/// same whenever `before` is given).
fn own_rules(runner: &RunnerCidrs<'_>, lateral: &[IpNet], before: Option<&Own>) -> Own {
    let mut own = Own::with_capacity_and_hasher(runner.cidrs.len(), Default::default());
    for rule in runner.cidrs {
        let net = rule.net.trunc();
        own.entry(net)
            .or_insert_with(|| {
                let lateral_ok = before
                    .and_then(|b| b.get(&net))
                    .map_or_else(|| crate::baseline::names_lateral(&net, lateral), |b| b.1);
                (Vec::new(), lateral_ok)
            })
            .0
            .extend(rule.ports.iter().copied());
    }
    own
}

/// `before`'s entries where nothing at or above their prefix changed, the
/// rest compiled again.
fn recompile(
    runner: &RunnerCidrs<'_>,
    own: &Own,
    before: Compiled,
) -> Result<ByNet<PortRules>, CompileError> {
    let changed: HashSet<IpNet, foldhash::fast::RandomState> = own
        .iter()
        .filter(|(net, v)| before.own.get(net) != Some(*v))
        .map(|(net, _)| *net)
        .chain(
            before
                .own
                .keys()
                .filter(|net| !own.contains_key(net))
                .copied(),
        )
        .collect();
    if changed.is_empty() {
        return Ok(before.entries);
    }
    let changed_lengths = lengths_of(changed.iter());
    let lengths = lengths(own);
    let mut entries = before.entries;
    entries.retain(|net, _| own.contains_key(net));
    for net in own.keys() {
        if within(net, &changed_lengths).any(|above| changed.contains(&above)) {
            entries.insert(*net, compile_net(runner, own, &lengths, net)?);
        }
    }
    Ok(entries)
}

/// The prefix lengths (by family) some entry has: only those can hold an
/// ancestor, so with the usual handful of lengths an entry costs a few
/// lookups, not 32.
fn lengths(own: &Own) -> Vec<(bool, u8)> {
    lengths_of(own.keys())
}

fn lengths_of<'a>(nets: impl Iterator<Item = &'a IpNet>) -> Vec<(bool, u8)> {
    let mut lengths: Vec<(bool, u8)> = nets.map(|n| (n.addr().is_ipv4(), n.prefix_len())).collect();
    lengths.sort_unstable();
    lengths.dedup();
    lengths
}

/// `net` and the prefixes containing it, at the given lengths.
fn within<'a>(net: &'a IpNet, lengths: &'a [(bool, u8)]) -> impl Iterator<Item = IpNet> + 'a {
    let v4 = net.addr().is_ipv4();
    lengths
        .iter()
        .filter(move |(is_v4, len)| *is_v4 == v4 && *len <= net.prefix_len())
        .filter_map(|(_, len)| IpNet::new(net.addr(), *len).ok().map(|n| n.trunc()))
}

/// One entry's value: its own rules and those of the entries containing it.
fn compile_net(
    runner: &RunnerCidrs<'_>,
    own: &Own,
    lengths: &[(bool, u8)],
    net: &IpNet,
) -> Result<PortRules, CompileError> {
    let (rules, lateral_ok) = &own[net];
    let mut merged = rules.clone();
    for ancestor in within(net, lengths).filter(|a| a != net) {
        if let Some((more, ancestor_lateral_ok)) = own.get(&ancestor)
            && (!*lateral_ok || *ancestor_lateral_ok)
        {
            merged.extend(more.iter().copied());
        }
    }
    let merged = merge_rules(merged);
    if merged.len() > MAX_PORT_RULES {
        return Err(CompileError::TooManyPortRules {
            runner: runner.name.to_owned(),
            net: *net,
            count: merged.len(),
        });
    }
    let mut value = PortRules {
        count: merged.len() as u32,
        flags: if *lateral_ok {
            rules_flags::LATERAL_OK
        } else {
            0
        },
        ..Default::default()
    };
    value.rules[..merged.len()].copy_from_slice(&merged);
    Ok(value)
}
