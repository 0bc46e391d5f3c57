//! `egret verify` as a job runs it: as the unprivileged job user, with no
//! agent socket, answered by the kernel programs alone. It passes under
//! enforcement, fails outside egret, under lockdown and (with
//! `--require-enforce`) in audit mode; and run as a CI job's first step it
//! stops the job before its script when egret does not hold it.

use std::{path::Path, process::Command};

use egret_tests::{
    agent, ci,
    job::JOB_UID,
    privileged,
    scenario::{FORGE_AND_REGISTRY, Scenario},
};

/// Runs `egret verify ARGS` as the job user in the cgroup whose
/// `cgroup.procs` is given (None: outside every runner).
fn verify(s: &Scenario, procs: Option<&Path>, args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(egret_tests::workspace_bin("egret"));
    cmd.arg("verify")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = s
        .world
        .host
        .spawn_as(&mut cmd, procs, Some(JOB_UID))
        .wait_with_output()
        .expect("egret verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn verify_passes_only_under_enforcement() {
    if !privileged("verify_passes_only_under_enforcement") {
        return;
    }
    let mut s = Scenario::start("enforce", FORGE_AND_REGISTRY);
    s.cgroup.child("ci/job-7");
    let procs = s.cgroup.procs("ci");
    let (code, out) = verify(&s, Some(&procs), &["--require-enforce"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("enforces"), "{out}");
    let (code, out) = verify(&s, None, &[]);
    assert_eq!(code, 1, "outside every runner: {out}");
    assert!(out.contains("not under egret"), "{out}");
    // A cgroup below the runner's (a container) is held too.
    let (code, out) = verify(&s, Some(&s.cgroup.procs("ci/job-7")), &[]);
    assert_eq!(code, 0, "{out}");

    let l = agent::cli(&s.world, &["lockdown", "--runner", "ci"]);
    assert_eq!(l.code, 0, "{}", l.stderr);
    let (code, out) = verify(&s, Some(&procs), &[]);
    assert_eq!(code, 1, "under lockdown: {out}");
    assert!(out.contains("lockdown"), "{out}");
    let u = agent::cli(&s.world, &["unlock", "--runner", "ci"]);
    assert_eq!(u.code, 0, "{}", u.stderr);
    assert_eq!(verify(&s, Some(&procs), &[]).0, 0);
}

#[test]
fn verify_in_audit_mode_fails_only_when_enforcement_is_required() {
    if !privileged("verify_in_audit_mode_fails_only_when_enforcement_is_required") {
        return;
    }
    let s = Scenario::start("audit", FORGE_AND_REGISTRY);
    let procs = s.cgroup.procs("ci");
    let (code, out) = verify(&s, Some(&procs), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit"), "{out}");
    let (code, out) = verify(&s, Some(&procs), &["--require-enforce"]);
    assert_eq!(code, 1, "{out}");
}

/// The runner's hook, played by each CI tool's first step: in the runner's
/// cgroup the job runs; in a cgroup egret does not guard it fails before
/// its script.
#[test]
fn verify_as_the_first_step_stops_unguarded_ci_jobs() {
    if !privileged("verify_as_the_first_step_stops_unguarded_ci_jobs") {
        return;
    }
    let mut s = Scenario::start("enforce", FORGE_AND_REGISTRY);
    s.cgroup.child("unguarded");
    let egret = egret_tests::workspace_bin("egret");
    let act = ci::act(&s.world);
    let script_ran = "echo ran > \"$EGRET_OUT/script-ran\"";
    for (cgroup, guarded) in [("ci", true), ("unguarded", false)] {
        let procs = s.cgroup.procs(cgroup);
        let workflow = format!(
            "name: ci\non: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      \
             - run: '{} verify'\n      - run: '{script_ran}'\n",
            egret.display()
        );
        let github = ci::Project::new(
            &s.world,
            &format!("gh-{cgroup}"),
            "https://github.com/acme/widgets.git",
            &[(".github/workflows/ci.yml", &workflow)],
        );
        let (ok, log) = github.run(
            &s.world.host,
            &procs,
            &act,
            &[
                "push",
                "-P",
                "ubuntu-latest=-self-hosted",
                "--no-cache-server",
            ],
        );
        assert_eq!(ok, guarded, "act in {cgroup}:\n{log}");
        assert_eq!(
            github.dir.join("script-ran").exists(),
            guarded,
            "act in {cgroup}:\n{log}"
        );

        let pipeline = format!(
            "test:\n  before_script:\n    - '{} verify'\n  script:\n    - '{script_ran}'\n",
            egret.display()
        );
        let gitlab = ci::Project::new(
            &s.world,
            &format!("gl-{cgroup}"),
            "https://gitlab.test/group/proj.git",
            &[(".gitlab-ci.yml", &pipeline)],
        );
        let (ok, log) = gitlab.run(
            &s.world.host,
            &procs,
            &ci::gitlab_ci_local(),
            &["--shell-executor-no-image", "test"],
        );
        assert_eq!(ok, guarded, "gitlab-ci-local in {cgroup}:\n{log}");
        assert_eq!(
            gitlab.dir.join("script-ran").exists(),
            guarded,
            "gitlab-ci-local in {cgroup}:\n{log}"
        );
        if !guarded {
            assert!(log.contains("not under egret"), "{log}");
        }
    }
}
