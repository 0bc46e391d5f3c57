//! `egret replay`: would this policy have broken these jobs? Every recorded
//! attempt is judged again, in recorded order, by the verdict the kernel
//! programs run (`egret_common::verdict::decide`) over the candidate's
//! compiled maps, and by the DNS proxy's own name matching.

mod lookup;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use egret_common::{
    event::{hook, reason},
    maps::{ExactKey, Learned},
    verdict::{self, Destination, Outcome},
};
use serde::Serialize;

use super::recording::{Attempt, JobKey, Recording, Step};
use crate::{
    compile::{self, CompileError, Host},
    jobs::JobIdentity,
    policy::{HostRule, Policy},
};
use lookup::PlanMaps;

/// A candidate policy, compiled as the agent would.
pub struct Candidate {
    maps: PlanMaps,
    /// Runner name → (id, its host entries and patterns).
    runners: HashMap<String, (u32, Vec<HostRule>)>,
}

impl Candidate {
    /// `host` gives the lateral ranges of the host judged on (its own
    /// subnets count as neighbours, as on the runner host).
    pub fn new(policy: &Policy, host: &Host) -> Result<Self, CompileError> {
        let ids: HashMap<String, u32> = policy
            .runners
            .iter()
            .zip(1..)
            .map(|(r, id)| (r.name.clone(), id))
            .collect();
        let plan = compile::plan(policy, &ids, host)?;
        Ok(Self {
            maps: PlanMaps::new(&plan),
            runners: policy
                .runners
                .iter()
                .map(|r| (r.name.clone(), (ids[&r.name], r.host_rules())))
                .collect(),
        })
    }
}

/// One recorded attempt the candidate judges differently, or the same way
/// when it was already denied, counted over its repeats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `dns`, or the hook: `connect4`, `sendmsg6`, `egress`, ...
    pub kind: String,
    /// The name asked, for `dns`; the names known for the address otherwise.
    pub host: Option<String>,
    pub dst: Option<IpAddr>,
    pub port: u16,
    pub proto: String,
    /// Why the candidate refuses it (`not_allowed`, `lateral`, `metadata`,
    /// `dns_refused`), or `allowed`.
    pub verdict: String,
    pub count: usize,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dst {
            None => write!(f, "dns {}", self.host.as_deref().unwrap_or("?"))?,
            Some(dst) => {
                write!(
                    f,
                    "{} {}/{}",
                    self.kind,
                    std::net::SocketAddr::new(dst, self.port),
                    self.proto
                )?;
                if let Some(h) = &self.host {
                    write!(f, " ({h})")?;
                }
            }
        }
        write!(f, ": {}", self.verdict)?;
        if self.count > 1 {
            write!(f, ", {} times", self.count)?;
        }
        Ok(())
    }
}

/// What the candidate does to one recorded job.
#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    pub runner: String,
    /// How the job is named: `gitlab job 1234`, or its cgroup.
    pub job: String,
    pub identity: Option<JobIdentity>,
    /// Attempts judged.
    pub judged: usize,
    /// Let through when recorded, refused by the candidate: what enforcing
    /// it would break.
    pub breaks: Vec<Finding>,
    /// Refused when recorded and by the candidate too.
    pub still_denied: Vec<Finding>,
    /// Refused when recorded, allowed by the candidate.
    pub now_allowed: Vec<Finding>,
}

impl JobReport {
    pub fn broken(&self) -> bool {
        !self.breaks.is_empty()
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub jobs: Vec<JobReport>,
    /// Recorded runners the candidate does not define, with their events.
    pub unknown_runners: BTreeMap<String, usize>,
}

impl Report {
    pub fn broken_jobs(&self) -> usize {
        self.jobs.iter().filter(|j| j.broken()).count()
    }
}

/// Judges every attempt of the recording under `candidate`, runner by
/// runner. Addresses a name resolved to are learned first, as the DNS
/// proxy would have learned them, for the whole runner as the kernel's map
/// holds them: the order in which a DNS answer and the connect after it
/// reach a recording is not guaranteed.
pub fn replay(recording: &Recording, candidate: &mut Candidate) -> Report {
    let mut report = Report::default();
    for runner in recording.runners() {
        let Some((id, rules)) = candidate.runners.get(runner).cloned() else {
            let n = recording
                .events
                .iter()
                .filter(|e| e.runner == runner)
                .count();
            report.unknown_runners.insert(runner.to_owned(), n);
            continue;
        };
        for step in recording.steps(runner) {
            if let Attempt::Resolve { name, answers } = &step.what {
                learn(&mut candidate.maps, id, &rules, name, answers);
            }
        }
        let mut jobs: BTreeMap<JobKey, JobReport> = BTreeMap::new();
        for step in recording.steps(runner) {
            let job = jobs.entry(step.job.clone()).or_insert_with(|| JobReport {
                runner: runner.to_owned(),
                job: step.job.to_string(),
                identity: step.event.job.clone(),
                judged: 0,
                breaks: Vec::new(),
                still_denied: Vec::new(),
                now_allowed: Vec::new(),
            });
            job.judged += 1;
            let finding = judge(&mut candidate.maps, id, &rules, &step);
            let list = match (step.let_through, finding.verdict == "allowed") {
                (true, true) => continue,
                (true, false) => &mut job.breaks,
                (false, false) => &mut job.still_denied,
                (false, true) => &mut job.now_allowed,
            };
            match list.iter_mut().find(|f| {
                **f == Finding {
                    count: f.count,
                    ..finding.clone()
                }
            }) {
                Some(seen) => seen.count += 1,
                None => list.push(finding),
            }
        }
        report.jobs.extend(jobs.into_values());
    }
    report
}

/// Learns `ips` for `runner` with the ports of every entry `name` falls
/// under; returns whether any did.
fn learn(maps: &mut PlanMaps, runner: u32, rules: &[HostRule], name: &str, ips: &[IpAddr]) -> bool {
    let matched = crate::policy::rules_for(rules, name);
    if matched.is_empty() {
        return false;
    }
    let ports = matched
        .iter()
        .flat_map(|r| r.ports.iter().copied())
        .collect();
    let value = Learned {
        expires_ns: u64::MAX,
        rules: crate::learned::port_rules(runner, ports),
    };
    for ip in ips {
        let key = ExactKey {
            runner,
            addr: compile::addr_of(*ip),
        };
        // Two entries naming one address: the kernel's value carries the
        // ports of both.
        let merged = match maps.learned.get(&key) {
            Some(old) => {
                let mut all: Vec<_> = old.rules.rules[..old.rules.count as usize].to_vec();
                all.extend_from_slice(&value.rules.rules[..value.rules.count as usize]);
                Learned {
                    expires_ns: u64::MAX,
                    rules: crate::learned::port_rules(runner, all),
                }
            }
            None => value,
        };
        maps.learned.insert(key, merged);
    }
    true
}

fn judge(maps: &mut PlanMaps, runner: u32, rules: &[HostRule], step: &Step<'_>) -> Finding {
    match &step.what {
        Attempt::Resolve { name, answers } => {
            let allowed = learn(maps, runner, rules, name, answers);
            Finding {
                kind: "dns".into(),
                host: Some(name.clone()),
                dst: None,
                port: egret_common::port::DNS,
                proto: step.event.proto.clone(),
                verdict: if allowed {
                    "allowed".into()
                } else {
                    reason::name(reason::DNS_REFUSED).into()
                },
                count: 1,
            }
        }
        Attempt::Reach {
            dst,
            port,
            proto,
            hook: code,
            names,
            ..
        } => {
            // The names the agent knew for the address: had the candidate
            // allowed them, their answers would have taught it.
            for name in names {
                learn(maps, runner, rules, name, &[*dst]);
            }
            let destination = Destination {
                given: compile::addr_of(*dst),
                port: *port,
                proto: *proto,
                family: if dst.is_ipv4() { 4 } else { 6 },
                hook: *code,
                cgroup: 0,
            };
            let verdict = match verdict::decide(&*maps, runner, &destination, 1) {
                Outcome::Allow | Outcome::Audit(_) => "allowed".to_owned(),
                Outcome::Deny(why) => reason::name(why).to_owned(),
                Outcome::Fault => "fault".to_owned(),
            };
            Finding {
                kind: hook::name(*code).into(),
                host: (!names.is_empty()).then(|| names.join(",")),
                dst: Some(*dst),
                port: *port,
                proto: step.event.proto.to_string(),
                verdict,
                count: 1,
            }
        }
    }
}
