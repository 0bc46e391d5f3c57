//! `egret suggest`: the allow list a runner's recorded jobs needed, as a
//! policy `egret check` accepts. Presets first, then exact names, then
//! wildcards where a family of names shares a parent nobody else can
//! register under, then addresses reached with no name. Nothing metadata,
//! lateral or DNS-over-HTTPS is ever suggested.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use egret_common::rules::proto::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use ipnet::IpNet;

use super::recording::{Attempt, JobKey, Recording};
use crate::{
    baseline,
    policy::{self, CidrRule, HostRule},
};

/// Names sharing a parent that make a wildcard, by default.
pub const WILDCARD_MIN_NAMES: usize = 3;
/// The port a name is assumed to need when the recording shows it
/// resolved but no connection to its addresses.
pub const ASSUMED_PORT: u16 = 443;

/// What the runner's entry says besides its allow list.
#[derive(Clone, Debug)]
pub enum Base {
    /// The runner as the policy it was recorded under defines it: its
    /// cgroup, DNS and socket settings carry over.
    Runner(Box<policy::Runner>),
    /// Only a cgroup, relative to the cgroup2 root.
    Cgroup(String),
}

#[derive(Clone, Debug)]
pub struct Options {
    pub runner: String,
    pub base: Base,
    /// Entries fewer jobs needed are left out.
    pub min_jobs: usize,
    pub wildcard_min: usize,
}

/// How much of the recording needed an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// (IP protocol, port) of every connection seen.
    pub ports: BTreeSet<(u8, u16)>,
    pub jobs: BTreeSet<JobKey>,
    /// The recorded events, by their place among the runner's: an event
    /// that made several names needed counts once where they merge.
    pub events: BTreeSet<usize>,
}

impl Usage {
    fn add(&mut self, other: &Usage) {
        self.ports.extend(other.ports.iter().copied());
        self.jobs.extend(other.jobs.iter().cloned());
        self.events.extend(other.events.iter().copied());
    }

    fn count(&self) -> String {
        format!(
            "{}, {}",
            plural(self.jobs.len(), "job"),
            plural(self.events.len(), "event")
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// An embedded preset, and the names and addresses it covers.
    Preset {
        name: String,
        covers: Vec<String>,
    },
    Host(String),
    /// `*.parent`, for the names seen under it.
    Wildcard {
        parent: String,
        names: Vec<String>,
    },
    Cidr(IpNet),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub usage: Usage,
}

/// Something the recording shows that the suggestion does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    pub what: String,
    pub why: String,
}

#[derive(Debug)]
pub struct Suggestion {
    pub entries: Vec<Entry>,
    pub left_out: Vec<LeftOut>,
    pub jobs: usize,
    pub events: usize,
}

/// What the recorded jobs of `opts.runner` needed.
pub fn suggest(recording: &Recording, opts: &Options) -> Suggestion {
    let mut names: BTreeMap<String, Usage> = BTreeMap::new();
    let mut addrs: BTreeMap<IpAddr, Usage> = BTreeMap::new();
    let mut left_out: BTreeMap<String, String> = BTreeMap::new();
    let mut jobs = BTreeSet::new();
    let mut events = 0;
    // Which names each job (and the runner as a whole) resolved to an
    // address: a connect is credited to the name its own job looked up.
    let mut resolved_by_job: HashMap<(JobKey, IpAddr), BTreeSet<String>> = HashMap::new();
    let mut resolved: HashMap<IpAddr, BTreeSet<String>> = HashMap::new();
    let steps: Vec<_> = recording.steps(&opts.runner).collect();
    for step in &steps {
        if let Attempt::Resolve { name, answers } = &step.what {
            for ip in answers {
                resolved_by_job
                    .entry((step.job.clone(), *ip))
                    .or_default()
                    .insert(name.clone());
                resolved.entry(*ip).or_default().insert(name.clone());
            }
        }
    }
    for (index, step) in steps.iter().enumerate() {
        jobs.insert(step.job.clone());
        events += 1;
        let mut usage = Usage::default();
        usage.events.insert(index);
        usage.jobs.insert(step.job.clone());
        match &step.what {
            Attempt::Resolve { name, .. } => {
                let name = name.to_ascii_lowercase();
                if let Some(why) = unsuggestable_name(&name) {
                    left_out.insert(format!("the name {name}"), why);
                    continue;
                }
                names.entry(name).or_default().add(&usage);
            }
            Attempt::Reach {
                dst,
                port,
                proto,
                names: known,
                reason,
                ..
            } => {
                let target = format!("{}", SocketLike(*dst, *port));
                if let Some(why) = unsuggestable_addr(*dst, reason) {
                    left_out.insert(target, why);
                    continue;
                }
                if matches!(*proto, IPPROTO_ICMP | IPPROTO_ICMPV6) {
                    left_out.insert(
                        format!("ping to {dst}"),
                        "an entry with every port and `proto: any` admits ping; add one by hand if jobs need it".into(),
                    );
                    continue;
                }
                if !matches!(*proto, IPPROTO_TCP | IPPROTO_UDP) {
                    left_out.insert(target, format!("IP protocol {proto}: no entry names it"));
                    continue;
                }
                usage.ports.insert((*proto, *port));
                let mut known: BTreeSet<String> = known.iter().cloned().collect();
                if known.is_empty() {
                    known = resolved_by_job
                        .get(&(step.job.clone(), *dst))
                        .or_else(|| resolved.get(dst))
                        .cloned()
                        .unwrap_or_default();
                }
                known.retain(|n| unsuggestable_name(n).is_none());
                if known.is_empty() {
                    addrs.entry(*dst).or_default().add(&usage);
                }
                for name in known {
                    names
                        .entry(name.to_ascii_lowercase())
                        .or_default()
                        .add(&usage);
                }
            }
        }
    }

    let mut entries = presets_covering(&mut names, &mut addrs);
    entries.extend(wildcards(&mut names, opts.wildcard_min));
    entries.extend(names.into_iter().map(|(name, usage)| Entry {
        kind: EntryKind::Host(name),
        usage,
    }));
    entries.extend(addrs.into_iter().map(|(ip, usage)| Entry {
        kind: EntryKind::Cidr(IpNet::from(ip)),
        usage,
    }));
    entries.retain(|e| {
        let keep = e.usage.jobs.len() >= opts.min_jobs;
        if !keep {
            left_out.insert(
                describe(&e.kind),
                format!(
                    "{} needed it, fewer than --min-jobs {}",
                    e.usage.count(),
                    opts.min_jobs
                ),
            );
        }
        keep
    });
    Suggestion {
        entries,
        left_out: left_out
            .into_iter()
            .map(|(what, why)| LeftOut { what, why })
            .collect(),
        jobs: jobs.len(),
        events,
    }
}

/// `1 job`, `2 jobs`.
pub fn plural(n: usize, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

struct SocketLike(IpAddr, u16);

impl std::fmt::Display for SocketLike {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::net::SocketAddr::new(self.0, self.1).fmt(f)
    }
}

/// Why an address is never suggested, if it is not.
fn unsuggestable_addr(ip: IpAddr, reason: &str) -> Option<String> {
    let net = IpNet::from(ip);
    if reason == "metadata" || baseline::metadata_overlap(&net).is_some() {
        return Some("a cloud metadata endpoint: never allowed".into());
    }
    if reason == "lateral" || baseline::lateral_nets().any(|l| l.contains(&ip)) {
        return Some("the runner's own network (lateral): open it in the policy by hand if a job truly needs it".into());
    }
    if baseline::doh_nets().any(|l| l.contains(&ip)) {
        return Some("a DNS-over-HTTPS resolver: jobs resolve through egret".into());
    }
    None
}

/// Why a name is never suggested, if it is not.
fn unsuggestable_name(name: &str) -> Option<String> {
    if baseline::is_doh_name(name) {
        return Some("a DNS-over-HTTPS service: jobs resolve through egret".into());
    }
    if policy::validate_hostname(name).is_err() || name.starts_with("*.") {
        return Some("not a hostname a policy can name".into());
    }
    None
}

/// Each embedded preset's allow entries, expanded. Presets that need
/// parameters (a self-managed forge's host) cannot be matched and are not.
fn embedded_presets() -> Vec<(String, Vec<HostRule>, Vec<CidrRule>)> {
    policy::presets::EMBEDDED
        .iter()
        .filter_map(|(name, _)| {
            let text = format!(
                "version: 1\nrunners:\n  - name: preset\n    cgroup: /preset\n    allow:\n      - preset: {name}\n"
            );
            let (policy, diagnostics) =
                policy::validate(&[(PathBuf::from("<suggest>"), text.into_bytes())]);
            if diagnostics
                .iter()
                .any(|d| d.severity == policy::Severity::Error)
            {
                return None;
            }
            let runner = policy?.runners.into_iter().next()?;
            Some(((*name).to_owned(), runner.host_rules(), runner.cidrs))
        })
        .collect()
}

/// Whether `rules` let every connection of `usage` through (a name only
/// resolved needs no port).
fn ports_cover(rules: &[egret_common::rules::PortRule], usage: &Usage) -> bool {
    usage
        .ports
        .iter()
        .all(|(proto, port)| rules.iter().any(|r| r.permits(*port, *proto)))
}

/// Takes out of `names` and `addrs` what embedded presets cover, preset by
/// preset, the one covering most first.
fn presets_covering(
    names: &mut BTreeMap<String, Usage>,
    addrs: &mut BTreeMap<IpAddr, Usage>,
) -> Vec<Entry> {
    let presets = embedded_presets();
    let mut chosen = Vec::new();
    loop {
        let best = presets
            .iter()
            .map(|(preset, hosts, cidrs)| {
                let by_name: Vec<String> = names
                    .iter()
                    .filter(|(name, usage)| {
                        hosts
                            .iter()
                            .any(|h| h.matches(name) && ports_cover(&h.ports, usage))
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                let by_addr: Vec<IpAddr> = addrs
                    .iter()
                    .filter(|(ip, usage)| {
                        cidrs
                            .iter()
                            .any(|c| c.net.contains(*ip) && ports_cover(&c.ports, usage))
                    })
                    .map(|(ip, _)| *ip)
                    .collect();
                (preset, by_name, by_addr)
            })
            .filter(|(_, n, a)| !n.is_empty() || !a.is_empty())
            .max_by_key(|(preset, n, a)| (n.len() + a.len(), std::cmp::Reverse(*preset)));
        let Some((preset, by_name, by_addr)) = best else {
            return chosen;
        };
        let mut usage = Usage::default();
        let mut covers = Vec::new();
        for name in by_name {
            usage.add(&names.remove(&name).unwrap_or_default());
            covers.push(name);
        }
        for ip in by_addr {
            usage.add(&addrs.remove(&ip).unwrap_or_default());
            covers.push(ip.to_string());
        }
        chosen.push(Entry {
            kind: EntryKind::Preset {
                name: preset.clone(),
                covers,
            },
            usage,
        });
    }
}

/// Takes out of `names` every family of at least `min` names directly
/// under one parent that a wildcard may name: one not a public suffix, not
/// a shared hosting suffix, and not a top-level domain.
fn wildcards(names: &mut BTreeMap<String, Usage>, min: usize) -> Vec<Entry> {
    let mut families: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in names.keys() {
        if let Some((_, parent)) = name.split_once('.')
            && parent.contains('.')
        {
            families
                .entry(parent.to_owned())
                .or_default()
                .push(name.clone());
        }
    }
    let mut out = Vec::new();
    for (parent, family) in families {
        if family.len() < min.max(2) || !policy::wildcard_allowed_quietly(&parent) {
            continue;
        }
        let mut usage = Usage::default();
        for name in &family {
            usage.add(&names.remove(name).unwrap_or_default());
        }
        out.push(Entry {
            kind: EntryKind::Wildcard {
                parent,
                names: family,
            },
            usage,
        });
    }
    out
}

fn describe(kind: &EntryKind) -> String {
    match kind {
        EntryKind::Preset { name, .. } => format!("the preset {name}"),
        EntryKind::Host(name) => format!("the name {name}"),
        EntryKind::Wildcard { parent, .. } => format!("*.{parent}"),
        EntryKind::Cidr(net) => format!("the address {}", net.addr()),
    }
}

mod render;
pub use render::render;
