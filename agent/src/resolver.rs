//! Turns the policy's hostnames into learned-IP entries and keeps them fresh:
//! each name is re-resolved when its TTL (clamped to a floor and a cap) runs
//! out, and an address that drops out of the answers stays allowed for a
//! grace period so a connection in progress does not lose it mid-flight.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use egret_common::{maps::ExactKey, rules::PortRule};
use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};

use crate::{datapath, policy::HostRule};

#[derive(Clone, Copy, Debug)]
pub struct TtlSettings {
    pub floor: Duration,
    pub cap: Duration,
    pub grace: Duration,
    /// Wait before retrying a name whose lookup failed.
    pub retry: Duration,
}

impl Default for TtlSettings {
    fn default() -> Self {
        Self {
            floor: Duration::from_secs(30),
            cap: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
            retry: Duration::from_secs(5),
        }
    }
}

impl TtlSettings {
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.floor, self.cap.max(self.floor))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no resolver configuration: {0}")]
    Config(String),
}

/// The answer for one name.
#[derive(Debug)]
pub enum Answer {
    Addresses {
        ips: Vec<IpAddr>,
        ttl: Duration,
    },
    /// NXDOMAIN or no A/AAAA records: authoritative, the name has no address.
    NoAddress,
    /// Timeout, SERVFAIL, network error: nothing learned, keep what we had.
    Failed(String),
}

/// One hickory resolver per distinct upstream list.
#[derive(Default)]
pub struct Resolvers {
    by_upstream: HashMap<Vec<IpAddr>, TokioResolver>,
}

impl Resolvers {
    pub fn resolver(&mut self, upstream: &[IpAddr]) -> Result<TokioResolver, ResolveError> {
        if let Some(r) = self.by_upstream.get(upstream) {
            return Ok(r.clone());
        }
        let mut builder = if upstream.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| ResolveError::Config(e.to_string()))?
        } else {
            let servers = upstream
                .iter()
                .map(|ip| NameServerConfig::udp_and_tcp(*ip))
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        // We schedule refreshes ourselves; a cache would hand back stale TTLs.
        opts.cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| ResolveError::Config(e.to_string()))?;
        self.by_upstream.insert(upstream.to_vec(), resolver.clone());
        Ok(resolver)
    }
}

/// Looks up A and AAAA for `host`.
pub async fn lookup(resolver: &TokioResolver, host: &str) -> Answer {
    // A trailing dot: policy names are absolute, never search-listed.
    match resolver.lookup_ip(format!("{host}.")).await {
        Ok(lookup) => {
            let ips: Vec<IpAddr> = lookup.iter().collect();
            if ips.is_empty() {
                return Answer::NoAddress;
            }
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(Instant::now());
            Answer::Addresses { ips, ttl }
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Answer::NoAddress,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// What is known about one (runner, host).
#[derive(Debug)]
pub struct Tracked {
    pub runner: u32,
    pub runner_name: String,
    pub host: String,
    pub ports: Vec<PortRule>,
    pub upstream: Vec<IpAddr>,
    /// Address → when it stops being allowed (TTL + grace).
    pub ips: HashMap<IpAddr, Instant>,
    pub next_refresh: Instant,
    pub answered: bool,
    pub failures: u32,
}

/// Every host the policy names, per runner, with what was learned for it.
#[derive(Default)]
pub struct Learning {
    pub settings: TtlSettings,
    pub tracked: Vec<Tracked>,
}

impl Learning {
    pub fn new(settings: TtlSettings) -> Self {
        Self {
            settings,
            tracked: Vec::new(),
        }
    }

    /// Replaces the set of tracked hosts, keeping what was learned for hosts
    /// that remain (same runner, name and upstream).
    pub fn set_hosts(&mut self, hosts: Vec<(u32, String, Vec<IpAddr>, HostRule)>) {
        let mut old: HashMap<(u32, String, Vec<IpAddr>), Tracked> = self
            .tracked
            .drain(..)
            .map(|t| ((t.runner, t.host.clone(), t.upstream.clone()), t))
            .collect();
        let now = Instant::now();
        for (runner, runner_name, upstream, rule) in hosts {
            let key = (runner, rule.name.clone(), upstream.clone());
            let tracked = match old.remove(&key) {
                Some(mut t) => {
                    t.ports = rule.ports;
                    t.runner_name = runner_name;
                    t
                }
                None => Tracked {
                    runner,
                    runner_name,
                    host: rule.name,
                    ports: rule.ports,
                    upstream,
                    ips: HashMap::new(),
                    next_refresh: now,
                    answered: false,
                    failures: 0,
                },
            };
            // The same name listed twice for a runner (different ports) is
            // looked up once per entry; cheap, and keeps entries independent.
            self.tracked.push(tracked);
        }
    }

    /// Applies an answer to `tracked[index]`.
    pub fn apply(&mut self, index: usize, answer: Answer) {
        let settings = self.settings;
        let Some(t) = self.tracked.get_mut(index) else {
            return;
        };
        let now = Instant::now();
        match answer {
            Answer::Addresses { ips, ttl } => {
                let ttl = settings.clamp(ttl);
                for ip in ips {
                    let until = now + ttl + settings.grace;
                    let slot = t.ips.entry(ip).or_insert(until);
                    *slot = (*slot).max(until);
                }
                t.next_refresh = now + ttl;
                t.answered = true;
                t.failures = 0;
            }
            Answer::NoAddress => {
                t.next_refresh = now + settings.floor;
                t.answered = true;
                t.failures = 0;
            }
            Answer::Failed(why) => {
                t.failures += 1;
                let backoff = settings.retry * t.failures.min(12);
                t.next_refresh = now + backoff;
                tracing::warn!(runner = %t.runner_name, host = %t.host, error = %why, "lookup failed; keeping what was learned before");
            }
        }
        t.ips.retain(|_, until| *until > now);
    }

    pub fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.tracked.len())
            .filter(|i| self.tracked[*i].next_refresh <= now)
            .collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let refresh = self.tracked.iter().map(|t| t.next_refresh);
        let expiry = self.tracked.iter().flat_map(|t| t.ips.values().copied());
        refresh.chain(expiry).min()
    }

    /// Runners all of whose hosts have had an answer: for those, learned
    /// entries no longer backed by an answer can be removed.
    pub fn settled(&self, runner: u32) -> bool {
        self.tracked
            .iter()
            .filter(|t| t.runner == runner)
            .all(|t| t.answered)
    }

    /// The learned-IP map contents the tracked answers justify.
    pub fn desired(&self, now: Instant) -> HashMap<ExactKey, egret_common::maps::Learned> {
        let mono_now = monotonic_ns();
        let mut rules: HashMap<ExactKey, (Vec<PortRule>, Instant)> = HashMap::new();
        for t in &self.tracked {
            for (ip, until) in &t.ips {
                if *until <= now {
                    continue;
                }
                let key = ExactKey {
                    runner: t.runner,
                    addr: datapath::addr_of(*ip),
                };
                let slot = rules.entry(key).or_insert_with(|| (Vec::new(), *until));
                slot.0.extend(t.ports.iter().copied());
                slot.1 = slot.1.max(*until);
            }
        }
        rules
            .into_iter()
            .map(|(key, (ports, until))| {
                let merged = datapath::merge_rules(ports);
                if merged.len() > egret_common::rules::MAX_PORT_RULES {
                    // Fails closed: the ports that do not fit stay denied.
                    tracing::warn!(
                        runner = key.runner,
                        "an address shared by several hosts collects more port ranges than fit; the extra ones stay denied"
                    );
                }
                let n = merged.len().min(egret_common::rules::MAX_PORT_RULES);
                let mut value = egret_common::maps::Learned {
                    expires_ns: mono_now + until.saturating_duration_since(now).as_nanos() as u64,
                    rules: Default::default(),
                };
                value.rules.count = n as u32;
                value.rules.rules[..n].copy_from_slice(&merged[..n]);
                (key, value)
            })
            .collect()
    }

    /// Which host names this runner resolved to `ip`, for event attribution.
    pub fn hosts_for(&self, runner: u32, ip: IpAddr) -> Option<String> {
        let mut names: Vec<&str> = self
            .tracked
            .iter()
            .filter(|t| t.runner == runner && t.ips.contains_key(&ip))
            .map(|t| t.host.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        (!names.is_empty()).then(|| names.join(","))
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, port: u16) -> HostRule {
        HostRule {
            name: name.into(),
            ports: vec![PortRule::new(port, port, egret_common::rules::proto::TCP)],
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
}
