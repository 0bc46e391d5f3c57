//! Addresses a runner may reach because DNS said so: the policy's exact
//! hostnames, refreshed when their TTL (clamped to a floor and a cap) runs
//! out, and every answer the DNS proxy handed a job. An address that drops
//! out of the answers stays allowed for a grace period so a connection in
//! progress does not lose it mid-flight.
//!
//! The agent keeps one [`Learning`] behind its own lock
//! ([`SharedLearning`]): the DNS proxy takes it for each answer it
//! releases, so nothing slow ever runs under it.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use egret_common::{maps::ExactKey, rules::PortRule};

use crate::{clock::monotonic_ns, compile, policy::HostRule, resolver::Answer};

/// The one [`Learning`] the agent loop, the DNS proxy and event enrichment
/// share. Held only for map bookkeeping, never across I/O.
pub type SharedLearning = Arc<Mutex<Learning>>;

#[derive(Clone, Copy, Debug)]
pub struct TtlSettings {
    pub floor: Duration,
    pub cap: Duration,
    pub grace: Duration,
    /// Wait before retrying a name whose lookup failed.
    pub retry: Duration,
    /// Most addresses the DNS proxy keeps for one name of one runner; the
    /// ones closest to expiry make room for new answers.
    pub max_ips_per_name: usize,
    /// Most addresses the DNS proxy holds for one runner; `None`: an equal
    /// share of the map (see [`Learning::set_runner_count`]).
    pub max_ips_per_runner: Option<usize>,
}

impl Default for TtlSettings {
    fn default() -> Self {
        Self {
            floor: Duration::from_secs(30),
            cap: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
            retry: Duration::from_secs(5),
            max_ips_per_name: 1000,
            max_ips_per_runner: None,
        }
    }
}

impl TtlSettings {
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.floor, self.cap.max(self.floor))
    }
}

/// What is known about one (runner, host).
#[derive(Debug)]
pub struct Tracked {
    pub runner: u32,
    pub runner_name: String,
    pub host: String,
    pub ports: Vec<PortRule>,
    /// Keep answers in private ranges (see [`crate::baseline::answer_usable`]).
    pub private_answers: bool,
    pub upstream: Vec<IpAddr>,
    /// Address → when it stops being allowed (TTL + grace).
    pub ips: HashMap<IpAddr, Instant>,
    pub next_refresh: Instant,
    pub answered: bool,
    pub failures: u32,
}

/// What the DNS proxy handed a runner's jobs for one address: the union of
/// the ports of every name that produced it, until the latest expiry.
#[derive(Debug)]
pub struct ProxiedAddress {
    pub ports: Vec<PortRule>,
    pub until: Instant,
    /// The most recent names that produced it, for event attribution.
    pub names: Vec<String>,
}

/// A runner asked for more learned addresses than its share of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverQuota {
    pub held: usize,
    pub quota: usize,
}

/// Names kept per address for attribution: a CDN address shared by
/// thousands of names would otherwise make every lookup slow.
const NAMES_PER_ADDRESS: usize = 8;
/// Names whose addresses are counted against `max_ips_per_name`; beyond
/// it, the least recently answered are forgotten (their addresses stay
/// allowed until they expire).
const COUNTED_NAMES: usize = 16_384;

/// Every host the policy names, per runner, with what was learned for it,
/// and every answer the DNS proxy handed to a job.
#[derive(Default)]
pub struct Learning {
    pub settings: TtlSettings,
    pub tracked: Vec<Tracked>,
    /// (runner, address) → what the proxy handed out for it. Entries a
    /// previous agent left in the pinned map are restored here, nameless.
    pub proxied: HashMap<(u32, IpAddr), ProxiedAddress>,
    /// The policy's NAT64 prefixes: a DNS64 answer is learned as the IPv4
    /// address the programs judge it as.
    pub nat64: Vec<ipnet::Ipv6Net>,
    /// How many proxied addresses each runner may hold (see
    /// [`Learning::set_runner_count`]), and how many it holds.
    quota: usize,
    held: HashMap<u32, usize>,
    /// (runner, queried name) → its addresses with their expiry, to cap how
    /// many one name may hold.
    per_name: HashMap<(u32, String), HashMap<IpAddr, Instant>>,
    /// (runner, address) → names an audit-mode runner's jobs resolved to it
    /// outside the policy. Never in the map (the job's connects stay
    /// audited); only to name those connects in events.
    audited: HashMap<(u32, IpAddr), Vec<String>>,
}

/// Addresses remembered for audit attribution; past this many the memory
/// starts over, so a job resolving names without end cannot grow the agent.
const AUDITED_KEPT: usize = 16_384;

/// How much a repeated answer may extend an address's expiry before the
/// map entry is rewritten: well inside every grace period.
const REWRITE_SLACK: Duration = Duration::from_secs(1);

impl Learning {
    pub fn new(settings: TtlSettings) -> Self {
        Self {
            settings,
            quota: Self::SHARED,
            ..Default::default()
        }
    }

    /// Credits an answer the proxy is about to release to `name`: every
    /// address is allowed on `ports` for the clamped TTL plus the grace
    /// period. Returns the map entries to write before the job sees it:
    /// none when the map already holds what the answer needs.
    pub fn learn_answer(
        &mut self,
        runner: u32,
        name: &str,
        ports: &[PortRule],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<Vec<(ExactKey, egret_common::maps::Learned)>, OverQuota> {
        let now = Instant::now();
        let until = now + self.settings.clamp(ttl) + self.settings.grace;
        let new = ips
            .iter()
            .filter(|ip| !self.proxied.contains_key(&(runner, **ip)))
            .count();
        let held = self.held.get(&runner).copied().unwrap_or(0);
        if new > 0 && held + new > self.quota {
            return Err(OverQuota {
                held,
                quota: self.quota,
            });
        }
        *self.held.entry(runner).or_default() += new;
        self.count_against_cap(runner, name, ips, until, now);
        let mut touched = Vec::new();
        for ip in ips {
            let mut changed = false;
            let credit = self.proxied.entry((runner, *ip)).or_insert_with(|| {
                changed = true;
                ProxiedAddress {
                    ports: Vec::new(),
                    until,
                    names: Vec::new(),
                }
            });
            // Within a second of what the map holds: no write needed, the
            // entry outlives what the job will cache.
            if credit.until + REWRITE_SLACK < until {
                credit.until = until;
                changed = true;
            }
            if !ports.iter().all(|p| credit.ports.contains(p)) {
                credit.ports.extend_from_slice(ports);
                credit.ports = compile::merge_rules(std::mem::take(&mut credit.ports));
                changed = true;
            }
            if !credit.names.iter().any(|n| n == name) {
                if credit.names.len() == NAMES_PER_ADDRESS {
                    credit.names.remove(0);
                }
                credit.names.push(name.to_owned());
            }
            if changed {
                touched.push(*ip);
            }
        }
        let mono_now = monotonic_ns();
        Ok(touched
            .into_iter()
            .filter_map(|ip| {
                let key = ExactKey {
                    runner,
                    addr: compile::judged_addr(ip, &self.nat64),
                };
                Some((key, self.value_for(runner, ip, now, mono_now)?))
            })
            .collect())
    }

    /// Keeps at most `max_ips_per_name` addresses per name: the ones closest
    /// to expiry stop counting, and, unless another answer renews them, lapse
    /// at their expiry.
    fn count_against_cap(
        &mut self,
        runner: u32,
        name: &str,
        ips: &[IpAddr],
        until: Instant,
        now: Instant,
    ) {
        let cap = self.settings.max_ips_per_name.max(1);
        if self.per_name.capacity() < COUNTED_NAMES {
            // All at once: growing it step by step would stall an answer
            // now and then for the rehash.
            self.per_name.reserve(COUNTED_NAMES - self.per_name.len());
        }
        if self.per_name.len() >= COUNTED_NAMES {
            self.per_name
                .retain(|_, ips| ips.values().any(|u| *u > now));
            if self.per_name.len() >= COUNTED_NAMES {
                self.per_name.clear();
            }
        }
        let entry = self.per_name.entry((runner, name.to_owned())).or_default();
        for ip in ips {
            entry.insert(*ip, until);
        }
        if entry.len() <= cap {
            return;
        }
        let mut by_expiry: Vec<(Instant, IpAddr)> = entry
            .iter()
            .filter(|(ip, _)| !ips.contains(ip))
            .map(|(ip, t)| (*t, *ip))
            .collect();
        by_expiry.sort_unstable();
        let excess = entry.len() - cap;
        for (_, ip) in by_expiry.into_iter().take(excess) {
            entry.remove(&ip);
            // The address keeps what it was granted, no longer renewed
            // through this name.
            if let Some(credit) = self.proxied.get_mut(&(runner, ip)) {
                credit.names.retain(|n| n != name);
            }
        }
    }

    /// Takes over the learned entries a previous agent left in the pinned
    /// map, so they stay until they expire instead of being swept as
    /// unknown.
    pub fn restore(
        &mut self,
        entries: impl IntoIterator<Item = (ExactKey, egret_common::maps::Learned)>,
    ) {
        let now = Instant::now();
        let mono_now = monotonic_ns();
        for (key, value) in entries {
            if value.expires_ns <= mono_now {
                continue;
            }
            let ip = compile::ip_of(key.addr);
            let until = now + Duration::from_nanos(value.expires_ns - mono_now);
            let count = (value.rules.count as usize).min(egret_common::rules::MAX_PORT_RULES);
            let credit = self
                .proxied
                .entry((key.runner, ip))
                .or_insert_with(|| ProxiedAddress {
                    ports: Vec::new(),
                    until,
                    names: Vec::new(),
                });
            credit.ports.extend_from_slice(&value.rules.rules[..count]);
            credit.ports = compile::merge_rules(std::mem::take(&mut credit.ports));
            credit.until = credit.until.max(until);
        }
        self.recount();
    }

    /// Forgets proxied answers that lapsed, and those of runners no longer
    /// in the policy.
    pub fn prune(&mut self, now: Instant, runners: &std::collections::HashSet<u32>) {
        self.proxied
            .retain(|(runner, _), credit| runners.contains(runner) && credit.until > now);
        self.recount();
        self.per_name.retain(|(runner, _), ips| {
            ips.retain(|_, u| *u > now);
            runners.contains(runner) && !ips.is_empty()
        });
        self.audited
            .retain(|(runner, _), _| runners.contains(runner));
    }

    /// After a policy change: an address the DNS proxy handed out keeps
    /// only what the names that produced it still get from `rules` (each
    /// runner's host entries and patterns), and goes when none is allowed
    /// any more, so a name taken out of the policy is refused as soon as
    /// the maps are synced, not when its TTL runs out. Addresses restored
    /// nameless from a previous agent are kept: the agent restores them
    /// only when the policy is the one that agent applied.
    ///
    /// Returns the map entries to remove now; narrowed ones are rewritten
    /// by the next sync.
    pub fn reconcile(&mut self, rules: &HashMap<u32, Vec<HostRule>>) -> Vec<ExactKey> {
        let none: Vec<HostRule> = Vec::new();
        let mut gone = Vec::new();
        self.proxied.retain(|(runner, ip), credit| {
            if credit.names.is_empty() {
                return true;
            }
            let rules = rules.get(runner).unwrap_or(&none);
            let mut ports: Vec<PortRule> = Vec::new();
            credit.names.retain(|n| {
                let matched = crate::policy::rules_for(rules, n);
                ports.extend(matched.iter().flat_map(|r| r.ports.iter().copied()));
                !matched.is_empty()
            });
            credit.ports = compile::merge_rules(ports);
            let keep = !credit.names.is_empty();
            if !keep
                && !self
                    .tracked
                    .iter()
                    .any(|t| t.runner == *runner && t.ips.contains_key(ip))
            {
                gone.push(ExactKey {
                    runner: *runner,
                    addr: compile::judged_addr(*ip, &self.nat64),
                });
            }
            keep
        });
        self.per_name.retain(|(runner, name), _| {
            rules
                .get(runner)
                .is_some_and(|r| !crate::policy::rules_for(r, name).is_empty())
        });
        self.recount();
        gone
    }

    /// Each runner's share of the learned-address map, so that no runner
    /// can fill it for the others: seven eighths of its capacity (the rest
    /// is for the policy's exact hostnames) over the number of runners.
    pub fn set_runner_count(&mut self, runners: usize) {
        let share = Self::SHARED / runners.max(1);
        self.quota = self
            .settings
            .max_ips_per_runner
            .map_or(share, |n| n.min(share));
    }

    const SHARED: usize = egret_common::maps::LEARNED_CAPACITY as usize / 8 * 7;

    fn recount(&mut self) {
        self.held.clear();
        for (runner, _) in self.proxied.keys() {
            *self.held.entry(*runner).or_default() += 1;
        }
    }

    /// The learned-map value for one address: the union of the ports of
    /// every host and answer that produced it, until the latest expiry.
    fn value_for(
        &self,
        runner: u32,
        ip: IpAddr,
        now: Instant,
        mono_now: u64,
    ) -> Option<egret_common::maps::Learned> {
        let mut ports = Vec::new();
        let mut latest: Option<Instant> = None;
        let mut credit = |p: &[PortRule], until: Instant| {
            if until > now {
                ports.extend_from_slice(p);
                latest = Some(latest.map_or(until, |l: Instant| l.max(until)));
            }
        };
        for t in self.tracked.iter().filter(|t| t.runner == runner) {
            if let Some(until) = t.ips.get(&ip) {
                credit(&t.ports, *until);
            }
        }
        if let Some(p) = self.proxied.get(&(runner, ip)) {
            credit(&p.ports, p.until);
        }
        let until = latest?;
        Some(learned_value(runner, ports, until, now, mono_now))
    }

    /// The learned-IP map contents the tracked answers justify.
    pub fn desired(&self, now: Instant) -> HashMap<ExactKey, egret_common::maps::Learned> {
        let mono_now = monotonic_ns();
        let mut rules: HashMap<ExactKey, (Vec<PortRule>, Instant)> = HashMap::new();
        let tracked = self.tracked.iter().flat_map(|t| {
            t.ips
                .iter()
                .map(move |(ip, until)| (t.runner, *ip, &t.ports, *until))
        });
        let proxied = self
            .proxied
            .iter()
            .map(|((runner, ip), p)| (*runner, *ip, &p.ports, p.until));
        for (runner, ip, ports, until) in tracked.chain(proxied) {
            if until <= now {
                continue;
            }
            let key = ExactKey {
                runner,
                addr: compile::judged_addr(ip, &self.nat64),
            };
            let slot = rules.entry(key).or_insert_with(|| (Vec::new(), until));
            slot.0.extend(ports.iter().copied());
            slot.1 = slot.1.max(until);
        }
        rules
            .into_iter()
            .map(|(key, (ports, until))| {
                (key, learned_value(key.runner, ports, until, now, mono_now))
            })
            .collect()
    }
}

/// One learned-map value. Expiries are rounded up to whole milliseconds so
/// that recomputing an unchanged entry gives the same value and no write.
fn learned_value(
    runner: u32,
    ports: Vec<PortRule>,
    until: Instant,
    now: Instant,
    mono_now: u64,
) -> egret_common::maps::Learned {
    let expires = mono_now + until.saturating_duration_since(now).as_nanos() as u64;
    egret_common::maps::Learned {
        expires_ns: expires.div_ceil(1_000_000) * 1_000_000,
        rules: port_rules(runner, ports),
    }
}

/// The ports of every host entry that answered with an address, merged as
/// the learned map holds them.
pub fn port_rules(runner: u32, ports: Vec<PortRule>) -> egret_common::rules::PortRules {
    let merged = compile::merge_rules(ports);
    if merged.len() > egret_common::rules::MAX_PORT_RULES {
        // Fails closed: the ports that do not fit stay denied.
        tracing::warn!(
            runner,
            "an address shared by several hosts collects more port ranges than fit; the extra ones stay denied"
        );
    }
    let n = merged.len().min(egret_common::rules::MAX_PORT_RULES);
    let mut rules = egret_common::rules::PortRules {
        count: n as u32,
        ..Default::default()
    };
    rules.rules[..n].copy_from_slice(&merged[..n]);
    rules
}

mod attribution;
mod tracked;

#[cfg(test)]
mod tests;
