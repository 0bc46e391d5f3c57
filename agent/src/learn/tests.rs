//! Learn mode on recordings written as the agent writes them.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{
    recording::Recording,
    replay::{self, Candidate},
    suggest::{self, Base, EntryKind, Options},
};
use crate::{compile::Host, policy};

fn job(id: &str) -> serde_json::Value {
    json!({"ci": "gitlab", "id": id, "name": "build", "url": null, "project": "group/proj",
           "pipeline": "7", "ref": "main", "source": "environ"})
}

/// A `dns_refused` line of an audit-mode runner, with its answers.
fn resolved(id: &str, name: &str, answers: &[&str]) -> String {
    json!({"time": "2026-12-02T10:00:00.000Z", "runner": "ci", "cgroup": "/egret/ci",
           "cgroup_id": 5, "pid": 10, "comm": "curl", "family": "ipv4", "proto": "udp",
           "dst": null, "port": 53, "host": name, "answers": answers,
           "reason": "dns_refused", "action": "audit", "hook": "dns_proxy", "job": job(id)})
    .to_string()
}

/// A connect line: audited (`action` "audit") or denied.
fn reached(id: &str, dst: &str, port: u16, reason: &str, action: &str) -> String {
    json!({"time": "2026-12-02T10:00:01.000Z", "runner": "ci", "cgroup": "/egret/ci",
           "cgroup_id": 5, "pid": 10, "comm": "curl", "family": "ipv4", "proto": "tcp",
           "dst": dst, "port": port, "host": null, "reason": reason, "action": action,
           "hook": "connect4", "job": job(id)})
    .to_string()
}

/// Two jobs of a runner recorded in audit mode: the PyPI preset's hosts,
/// an exact registry name, a family under pkg.test, the forge's SSH by
/// address, metadata, a neighbour and a DoH service.
fn recording() -> Recording {
    let mut lines = Vec::new();
    for id in ["101", "102"] {
        lines.push(resolved(id, "pypi.org", &["203.0.113.11"]));
        lines.push(reached(id, "203.0.113.11", 443, "not_allowed", "audit"));
        lines.push(resolved(id, "files.pythonhosted.org", &["203.0.113.12"]));
        lines.push(reached(id, "203.0.113.12", 443, "not_allowed", "audit"));
        lines.push(resolved(
            id,
            "registry.test",
            &["203.0.113.20", "203.0.113.21"],
        ));
        lines.push(reached(id, "203.0.113.20", 443, "not_allowed", "audit"));
        lines.push(reached(id, "203.0.113.10", 22, "not_allowed", "audit"));
        lines.push(reached(id, "169.254.169.254", 80, "metadata", "deny"));
    }
    for name in ["a.pkg.test", "b.pkg.test", "files.pkg.test"] {
        lines.push(resolved("101", name, &["203.0.113.22"]));
    }
    lines.push(reached("101", "203.0.113.22", 443, "not_allowed", "audit"));
    lines.push(reached("102", "10.0.0.5", 22, "lateral", "audit"));
    lines.push(resolved("102", "dns.google", &["8.8.8.8"]));
    lines.push(resolved("102", "once.test", &["203.0.113.30"]));
    lines.push(reached("102", "203.0.113.30", 8443, "not_allowed", "audit"));
    let mut r = Recording::default();
    r.add(Path::new("events.jsonl"), lines.join("\n").as_bytes());
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    r
}

fn options(min_jobs: usize) -> Options {
    Options {
        runner: "ci".into(),
        base: Base::Cgroup("/egret/ci".into()),
        min_jobs,
        wildcard_min: suggest::WILDCARD_MIN_NAMES,
    }
}

fn validated(text: &str) -> policy::Policy {
    let (policy, diagnostics) =
        policy::validate(&[(PathBuf::from("suggested.yaml"), text.as_bytes().to_vec())]);
    assert!(
        diagnostics.is_empty(),
        "egret check finds problems: {diagnostics:?}\n{text}"
    );
    policy.expect("a policy")
}

#[test]
fn presets_come_first_then_names_wildcards_and_bare_addresses() {
    let s = suggest::suggest(&recording(), &options(1));
    let kinds: Vec<&EntryKind> = s.entries.iter().map(|e| &e.kind).collect();
    assert_eq!(
        kinds,
        [
            &EntryKind::Preset {
                name: "pypi".into(),
                covers: vec!["files.pythonhosted.org".into(), "pypi.org".into()]
            },
            &EntryKind::Wildcard {
                parent: "pkg.test".into(),
                names: vec![
                    "a.pkg.test".into(),
                    "b.pkg.test".into(),
                    "files.pkg.test".into()
                ]
            },
            &EntryKind::Host("once.test".into()),
            &EntryKind::Host("registry.test".into()),
            &EntryKind::Cidr("203.0.113.10/32".parse().unwrap()),
        ]
    );
    let registry = &s.entries[3].usage;
    assert_eq!(
        registry.ports.iter().copied().collect::<Vec<_>>(),
        [(6, 443)]
    );
    assert_eq!((registry.jobs.len(), registry.events.len()), (2, 4));
    assert_eq!((s.jobs, s.events), (2, 24));
    let left: Vec<&str> = s.left_out.iter().map(|l| l.what.as_str()).collect();
    assert_eq!(
        left,
        ["10.0.0.5:22", "169.254.169.254:80", "the name dns.google"]
    );
}

#[test]
fn the_suggestion_is_a_policy_check_accepts_with_counts_on_each_entry() {
    let opts = options(1);
    let text = suggest::render(&suggest::suggest(&recording(), &opts), &opts);
    let policy = validated(&text);
    let runner = &policy.runners[0];
    assert_eq!(
        (runner.name.as_str(), runner.cgroup.as_str()),
        ("ci", "/egret/ci")
    );
    assert_eq!(runner.mode, policy::Mode::Enforce);
    assert!(
        text.contains("# preset pypi, for files.pythonhosted.org, pypi.org: 2 jobs, 8 events"),
        "{text}"
    );
    assert!(
        text.contains("# a.pkg.test, b.pkg.test, files.pkg.test: 1 job, 4 events"),
        "{text}"
    );
    assert!(
        text.contains("- host: \"*.pkg.test\"\n        ports: [443]\n        proto: tcp"),
        "{text}"
    );
    assert!(text.contains("# reached with no name: 2 jobs, 2 events\n      - cidr: \"203.0.113.10/32\"\n        ports: [22]"), "{text}");
    assert!(
        text.contains("#   169.254.169.254:80: a cloud metadata endpoint: never allowed"),
        "{text}"
    );
    for never in ["169.254", "10.0.0.5/", "dns.google\n", "\"10.0.0.5"] {
        assert!(
            !text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.contains(never)),
            "{never} in {text}"
        );
    }
}

#[test]
fn min_jobs_drops_what_fewer_jobs_needed_and_says_so() {
    let s = suggest::suggest(&recording(), &options(2));
    assert!(s.entries.iter().all(|e| e.usage.jobs.len() >= 2));
    assert!(
        !s.entries
            .iter()
            .any(|e| matches!(&e.kind, EntryKind::Host(n) if n == "once.test"))
    );
    assert!(
        s.left_out
            .iter()
            .any(|l| l.what == "*.pkg.test" && l.why.contains("--min-jobs 2")),
        "{:?}",
        s.left_out
    );
}

#[test]
fn no_wildcard_on_a_public_or_shared_hosting_suffix_or_a_tld() {
    let mut lines = Vec::new();
    for name in [
        "a.co.uk",
        "b.co.uk",
        "c.co.uk",
        "x.github.io",
        "y.github.io",
        "z.github.io",
        "p.test",
        "q.test",
        "r.test",
    ] {
        lines.push(resolved("1", name, &["203.0.113.40"]));
    }
    let mut r = Recording::default();
    r.add(Path::new("e"), lines.join("\n").as_bytes());
    let s = suggest::suggest(&r, &options(1));
    assert_eq!(s.entries.len(), 9, "{:?}", s.entries);
    assert!(
        s.entries
            .iter()
            .all(|e| matches!(e.kind, EntryKind::Host(_)))
    );
    let opts = options(1);
    let text = suggest::render(&s, &opts);
    validated(&text);
    assert!(
        text.contains("no connection to it was recorded: port 443 assumed"),
        "{text}"
    );
}

fn candidate(text: &str) -> Candidate {
    Candidate::new(&validated(text), &Host::default()).expect("compiles")
}

#[test]
fn the_suggested_policy_replays_clean_and_refuses_what_was_refused() {
    let opts = options(1);
    let rec = recording();
    let text = suggest::render(&suggest::suggest(&rec, &opts), &opts);
    let report = replay::replay(&rec, &mut candidate(&text));
    assert_eq!(report.jobs.len(), 2);
    assert_eq!(report.broken_jobs(), 1, "{report:#?}");
    // The one job that reached a neighbour (let through in audit mode) and
    // used a DoH service breaks on exactly those: never suggested.
    let broken = report.jobs.iter().find(|j| j.broken()).unwrap();
    let what: Vec<String> = broken.breaks.iter().map(ToString::to_string).collect();
    assert_eq!(
        what,
        [
            "connect4 10.0.0.5:22/tcp: lateral",
            "dns dns.google: dns_refused"
        ]
    );
    assert_eq!(broken.job, "gitlab job 102");
    for j in &report.jobs {
        assert_eq!(j.still_denied.len(), 1, "metadata stays refused: {j:?}");
        assert_eq!(j.still_denied[0].verdict, "metadata");
        assert!(j.now_allowed.is_empty());
    }
}

#[test]
fn replay_names_the_job_and_destination_an_entry_missing_breaks() {
    let opts = options(1);
    let rec = recording();
    let full = suggest::render(&suggest::suggest(&rec, &opts), &opts);
    let without_once: String = full.replace(
        "      - host: \"once.test\"\n        ports: [8443]\n        proto: tcp\n",
        "",
    );
    assert_ne!(full, without_once, "the entry was there to drop:\n{full}");
    let report = replay::replay(&rec, &mut candidate(&without_once));
    let job = report
        .jobs
        .iter()
        .find(|j| j.job == "gitlab job 102")
        .unwrap();
    let what: Vec<String> = job.breaks.iter().map(ToString::to_string).collect();
    assert_eq!(
        what,
        [
            "connect4 10.0.0.5:22/tcp: lateral",
            "dns dns.google: dns_refused",
            "dns once.test: dns_refused",
            "connect4 203.0.113.30:8443/tcp: not_allowed",
        ]
    );
    let other = report
        .jobs
        .iter()
        .find(|j| j.job == "gitlab job 101")
        .unwrap();
    assert!(!other.broken(), "{other:?}");
}

#[test]
fn lines_that_are_not_events_are_reported_with_file_and_line() {
    let text = format!(
        "{}\nnot json\n{{\"time\":\"t\",\"runner\":\"ci\",\"notice\":\"events_suppressed\",\"suppressed\":12}}\n\n{}\n",
        resolved("1", "a.test", &[]),
        reached("1", "203.0.113.9", 443, "not_allowed", "deny")
    );
    let mut r = Recording::default();
    r.add(Path::new("/var/log/egret/events.jsonl"), text.as_bytes());
    assert_eq!(r.events.len(), 2);
    assert_eq!(r.suppressed, 12);
    assert_eq!(r.skipped.len(), 1);
    assert!(
        r.skipped[0]
            .to_string()
            .starts_with("/var/log/egret/events.jsonl:2: not an egret event line"),
        "{}",
        r.skipped[0]
    );
}
