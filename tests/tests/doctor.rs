//! `egret doctor` on the test world's host: the live agent and its runner
//! cgroups, and GitLab Runner and Docker configuration files as
//! operators write them.

use egret_tests::{
    agent, privileged,
    scenario::{FORGE_AND_REGISTRY, Scenario},
    world,
};
use serde_json::Value;

fn doctor(s: &Scenario, args: &[&str]) -> (i32, Vec<Value>) {
    let mut all = vec!["doctor", "--format", "json"];
    all.extend_from_slice(args);
    let out = agent::cli(&s.world, &all);
    let findings: Vec<Value> = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor json: {e}\n{}\n{}", out.stdout, out.stderr));
    (out.code, findings)
}

fn level<'a>(findings: &'a [Value], check: &str, subject: &str) -> Option<&'a str> {
    findings
        .iter()
        .find(|f| f["check"] == check && f["subject"].as_str().is_some_and(|s| s.contains(subject)))
        .and_then(|f| f["level"].as_str())
}

#[test]
fn doctor_checks_the_live_agent_and_the_runner_configuration() {
    if !privileged("doctor_checks_the_live_agent_and_the_runner_configuration") {
        return;
    }
    let mut s = Scenario::start("enforce", FORGE_AND_REGISTRY);
    let config = s.world.path("config.toml");
    world::write_file(
        &config,
        &format!(
            "concurrent = 2\n\n[[runners]]\n  name = \"guarded\"\n  url = \"https://gitlab.test\"\n  executor = \"docker\"\n  [runners.feature_flags]\n    FF_ENABLE_JOB_CLEANUP = true\n  [runners.docker]\n    image = \"alpine\"\n    cap_drop = [\"NET_RAW\"]\n    cgroup_parent = \"{}\"\n\n[[runners]]\n  name = \"stray\"\n  url = \"https://gitlab.test\"\n  executor = \"docker\"\n  [runners.docker]\n    image = \"alpine\"\n    privileged = true\n    cgroup_parent = \"/elsewhere\"\n",
            s.runner_cgroup
        ),
    );
    let daemon = s.world.path("daemon.json");
    world::write_file(
        &daemon,
        "{\n  \"no-new-privileges\": true,\n  \"userns-remap\": \"default\"\n}\n",
    );
    let config_arg = config.display().to_string();
    let daemon_arg = daemon.display().to_string();
    let files = [
        "--gitlab-config",
        &config_arg,
        "--docker-config",
        &daemon_arg,
    ];

    let (code, f) = doctor(&s, &files);
    assert_eq!(code, 1, "the stray runner fails: {f:#?}");
    assert_eq!(level(&f, "egret.agent", "egret"), Some("PASS"));
    assert_eq!(
        level(&f, "egret.attached", "\"ci\""),
        Some("PASS"),
        "{f:#?}"
    );
    assert_eq!(
        level(&f, "gitlab.cgroup_parent", "guarded"),
        Some("PASS"),
        "{f:#?}"
    );
    assert_eq!(level(&f, "gitlab.privileged", "guarded"), Some("PASS"));
    assert_eq!(level(&f, "gitlab.cgroup_parent", "stray"), Some("FAIL"));
    let privileged = f
        .iter()
        .find(|f| {
            f["check"] == "gitlab.privileged"
                && f["subject"].as_str().is_some_and(|s| s.contains("stray"))
        })
        .expect("privileged finding");
    assert_eq!(privileged["level"], "FAIL");
    assert_eq!(
        privileged["at"],
        format!("{config_arg}:20").as_str(),
        "{privileged}"
    );
    assert_eq!(
        level(&f, "docker.no_new_privileges", "docker"),
        Some("PASS")
    );

    // The human form says the same, with the fix.
    let human = agent::cli(
        &s.world,
        &[
            "doctor",
            "--gitlab-config",
            &config_arg,
            "--docker-config",
            &daemon_arg,
        ],
    );
    assert_eq!(human.code, 1);
    assert!(
        human
            .stdout
            .contains("FAIL gitlab runner \"stray\": privileged = true"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("fix: set privileged = false"),
        "{}",
        human.stdout
    );

    // With the agent stopped, doctor says so; the pins still show the runner.
    s.kill_agent();
    let (code, f) = doctor(&s, &files);
    assert_eq!(code, 1);
    assert_eq!(level(&f, "egret.agent", "egret"), Some("FAIL"));
    assert_eq!(
        level(&f, "egret.attached", "\"ci\""),
        Some("PASS"),
        "enforcement stays: {f:#?}"
    );

    // A file it cannot read: it could not run.
    let missing = agent::cli(
        &s.world,
        &["doctor", "--gitlab-config", "/nonexistent/config.toml"],
    );
    assert_eq!(missing.code, 2, "{}", missing.stderr);
}
