//! Learn mode end to end: a runner in audit mode records what real GitLab
//! CI jobs (gitlab-ci-local, as the job user) reach; `egret suggest` turns
//! the recording into a policy `egret check` accepts; `egret replay` says
//! it breaks no job, and names exactly the job and destination a policy
//! missing one entry would break; enforced, the same jobs pass while the
//! attacker is refused.

use egret_tests::{
    agent, ci, poll_until, privileged,
    scenario::{RUNNER, Scenario},
    world::{self, ZONE},
};
use serde_json::Value;

/// Names a preset covers (PyPI), a family under one parent, an exact name
/// only one job uses, all in the fixture internet.
const MORE_ZONE: &str = "\
pypi.org A 203.0.113.11 60
files.pythonhosted.org A 203.0.113.11 60
a.pkg.test A 203.0.113.22 60
b.pkg.test A 203.0.113.22 60
";

/// Resolve through the host's resolver (the fixture, which egret's proxy
/// stands in front of) and connect: what a build's downloads do.
fn fetch(name: &str, port: u16) -> String {
    format!("dns-connect:{name}:A:{port}:udp@{}:53", world::DNS)
}

/// Two jobs: both use PyPI, the pkg.test family and the forge's SSH by
/// address; only `test` uses the registry. A file the test writes adds
/// more actions to every step (the attacker, once enforced).
fn pipeline() -> String {
    let common = [
        fetch("pypi.org", 443),
        fetch("files.pythonhosted.org", 443),
        fetch("a.pkg.test", 443),
        fetch("b.pkg.test", 443),
        fetch("files.pkg.test", 443),
        "tcp:203.0.113.10:22".to_owned(),
    ]
    .join(" ");
    let step = |extra: &str| {
        format!(
            r#""$EGRET_TESTKIT" job {common} {extra} $(cat "$EGRET_OUT/extra" 2>/dev/null) > "$EGRET_OUT/$CI_JOB_NAME.json""#
        )
    };
    format!(
        "build:\n  script:\n    - echo \"$CI_JOB_ID\" > \"$EGRET_OUT/build-id\"\n    - '{}'\n\
         test:\n  script:\n    - echo \"$CI_JOB_ID\" > \"$EGRET_OUT/test-id\"\n    - '{}'\n",
        step("").replace('\'', "''"),
        step(&fetch("registry.test", 443)).replace('\'', "''"),
    )
}

fn run_pipeline(s: &Scenario, project: &ci::Project) {
    let (ok, log) = project.run(
        &s.world.host,
        &s.cgroup.procs("ci"),
        &ci::gitlab_ci_local(),
        &["--shell-executor-no-image"],
    );
    assert!(ok, "gitlab-ci-local failed:\n{log}");
}

fn recorded(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn audit_then_suggest_then_replay_then_enforce() {
    if !privileged("audit_then_suggest_then_replay_then_enforce") {
        return;
    }
    let mut s = Scenario::prepare("audit", "");
    s.world.write_zone(&format!("{ZONE}{MORE_ZONE}"));
    let events = s.world.path("events.jsonl");
    let events_arg = events.display().to_string();
    s.start_agent_with(&["--events-file", &events_arg]);
    let project = ci::Project::new(
        &s.world,
        "proj",
        "https://gitlab.test/group/proj.git",
        &[(".gitlab-ci.yml", &pipeline())],
    );

    // Audit: everything the jobs do goes through, and is recorded with the
    // names they resolved.
    run_pipeline(&s, &project);
    for job in ["build", "test"] {
        let o = project.outcomes(&format!("{job}.json"));
        assert!(
            o.iter().all(|o| o.banner.is_some()),
            "{job} under audit: {o:?}"
        );
    }
    let (build_id, test_id) = (project.read("build-id"), project.read("test-id"));
    poll_until(
        "the recording of both jobs",
        std::time::Duration::from_secs(5),
        || {
            let lines = recorded(&events);
            [&build_id, &test_id].iter().all(|id| {
                lines.iter().any(|e| {
                    e["job"]["id"] == id.as_str() && e["dst"] == "203.0.113.10" && e["port"] == 22
                }) && lines.iter().any(|e| {
                    e["job"]["id"] == id.as_str()
                        && e["host"] == "b.pkg.test"
                        && e["answers"][0] == "203.0.113.22"
                })
            })
        },
    );
    let connect = recorded(&events)
        .into_iter()
        .find(|e| e["dst"] == "203.0.113.22" && e["action"] == "audit")
        .expect("an audited connect to the pkg.test address");
    assert!(
        connect["host"]
            .as_str()
            .is_some_and(|h| h.contains("pkg.test")),
        "the agent names an audited connect after the name its job resolved: {connect}"
    );

    // Suggest: presets first, the family as a wildcard, exact names, the
    // bare address; nothing else.
    let policy_arg = s.policy.display().to_string();
    let out = agent::cli(
        &s.world,
        &[
            "suggest",
            "--runner",
            RUNNER,
            "--policy",
            &policy_arg,
            &events_arg,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.stdout;
    for wanted in [
        "- preset: pypi",
        "- host: \"*.pkg.test\"\n        ports: [443]\n        proto: tcp",
        "# 1 job, 2 events\n      - host: \"registry.test\"\n        ports: [443]\n        proto: tcp",
        "- cidr: \"203.0.113.10/32\"\n        ports: [22]\n        proto: tcp",
        &format!("cgroup: \"{}\"", s.runner_cgroup),
        &format!("upstream: [{}]", world::DNS),
        "mode: enforce",
    ] {
        assert!(
            text.contains(wanted),
            "suggestion lacks {wanted:?}:\n{text}"
        );
    }
    let entries = text.lines().filter(|l| l.starts_with("      - ")).count();
    assert_eq!(entries, 4, "{text}");
    let suggested = s.world.path("suggested.yaml");
    world::write_file(&suggested, &text);
    let suggested_arg = suggested.display().to_string();
    let check = agent::cli(&s.world, &["check", &suggested_arg]);
    assert_eq!(
        check.code, 0,
        "egret check of the suggestion:\n{}{}",
        check.stdout, check.stderr
    );

    // Replay: the suggestion breaks nothing; without the registry it breaks
    // the one job that used it, on exactly that name and address.
    let replay = agent::cli(
        &s.world,
        &["replay", "--policy", &suggested_arg, &events_arg],
    );
    assert_eq!(replay.code, 0, "{}{}", replay.stdout, replay.stderr);
    assert!(
        replay.stdout.contains("0 of 2 jobs would break"),
        "{}",
        replay.stdout
    );
    let missing = s.world.path("missing.yaml");
    let without = text.replace(
        "      - host: \"registry.test\"\n        ports: [443]\n        proto: tcp\n",
        "",
    );
    assert_ne!(without, text);
    world::write_file(&missing, &without);
    let missing_arg = missing.display().to_string();
    let replay = agent::cli(
        &s.world,
        &[
            "replay",
            "--policy",
            &missing_arg,
            "--format",
            "json",
            &events_arg,
        ],
    );
    assert_eq!(replay.code, 1, "{}{}", replay.stdout, replay.stderr);
    let report: Value = serde_json::from_str(&replay.stdout).expect("replay json");
    let broken: Vec<&Value> = report["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| !j["breaks"].as_array().expect("breaks").is_empty())
        .collect();
    assert_eq!(broken.len(), 1, "{report:#}");
    assert_eq!(broken[0]["identity"]["id"], test_id.as_str(), "{report:#}");
    let breaks = broken[0]["breaks"].as_array().expect("breaks");
    assert!(!breaks.is_empty());
    for b in breaks {
        let about_registry = b["host"] == "registry.test"
            || ["203.0.113.20", "203.0.113.21"].contains(&b["dst"].as_str().unwrap_or_default());
        assert!(about_registry, "only the registry breaks: {b}");
    }
    assert!(breaks.iter().any(|b| b["kind"] == "dns"), "{breaks:?}");
    assert!(breaks.iter().any(|b| b["kind"] == "connect4"), "{breaks:?}");
    let human = agent::cli(&s.world, &["replay", "--policy", &missing_arg, &events_arg]);
    assert!(
        human
            .stdout
            .contains(&format!("BREAKS runner ci gitlab job {test_id}")),
        "{}",
        human.stdout
    );

    // Enforce the suggestion: the same jobs pass, the attacker does not.
    world::write_file(&s.policy, &text);
    let reload = agent::cli(&s.world, &["reload"]);
    assert_eq!(reload.code, 0, "{}{}", reload.stdout, reload.stderr);
    let attacker = ["tcp:198.51.100.66:443", &fetch("attacker.test", 443)].join(" ");
    world::write_file(&project.dir.join("extra"), &attacker);
    run_pipeline(&s, &project);
    for job in ["build", "test"] {
        let o = project.outcomes(&format!("{job}.json"));
        let (needed, attacks) = o.split_at(o.len() - 2);
        assert!(
            needed.iter().all(|o| o.banner.is_some()),
            "{job} enforced: {needed:?}"
        );
        assert!(
            attacks[0].eperm(),
            "{job}: the attacker by address: {:?}",
            attacks[0]
        );
        assert_eq!(
            attacks[1].rcode.as_deref(),
            Some("Refused"),
            "{job}: {:?}",
            attacks[1]
        );
    }
    let outside = &s.outsider(&["tcp:198.51.100.66:443"])[0];
    assert!(outside.ok(), "the refusal is egret's: {outside:?}");
}
