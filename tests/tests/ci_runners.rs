//! Real CI job runners inside a runner's cgroup: a GitHub Actions workflow
//! run by `act -P ubuntu-latest=-self-hosted` and a GitLab CI pipeline run
//! by `gitlab-ci-local --shell-executor-no-image`, both as the unprivileged
//! job user. Their steps reach the forge and are refused the attacker and
//! metadata, and every denial names the CI job the runner's variables
//! describe.

use egret_tests::{
    agent, ci, privileged,
    scenario::{FORGE_AND_REGISTRY, RUNNER, Scenario},
};
use serde_json::Value;

/// What every step tries, in one testkit run whose outcomes land in
/// the project's `outcomes.json` (a runner may run steps in a copy of the
/// project elsewhere): the forge, the attacker, metadata.
const STEP: &str = r#""$EGRET_TESTKIT" job tcp:203.0.113.10:443 tcp:198.51.100.66:443 tcp:169.254.169.254:80 "dns:exfil.attacker.test:A:udp@203.0.113.53:53" > "$EGRET_OUT/outcomes.json""#;

fn assert_forge_reached_attacker_refused(s: &Scenario, project: &ci::Project) {
    let o = project.outcomes("outcomes.json");
    assert_eq!(
        o[0].banner.as_deref(),
        Some("fixture 203.0.113.10:443"),
        "the forge, from a step: {:?}",
        o[0]
    );
    assert!(o[1].eperm(), "the attacker, from a step: {:?}", o[1]);
    assert!(o[2].eperm(), "metadata, from a step: {:?}", o[2]);
    assert_eq!(o[3].rcode.as_deref(), Some("Refused"), "{:?}", o[3]);
    // The same attempt from outside the runner works: the refusal is egret's.
    let outside = &s.outsider(&["tcp:198.51.100.66:443"])[0];
    assert!(outside.ok(), "{outside:?}");
}

/// The job object of the denials of `dst` (or of refused DNS queries when
/// `dst` is None), waiting for each.
fn job_of_denial(s: &Scenario, reason: &str, dst: Option<&str>) -> Value {
    let ev = s
        .wait_event(|e| {
            e["reason"] == reason && dst.is_none_or(|d| e["dst"] == d) && !e["job"].is_null()
        })
        .unwrap_or_else(|| {
            panic!(
                "a {reason} event naming the job; events: {:?}",
                s.agent().events()
            )
        });
    assert_eq!(ev["runner"], RUNNER);
    ev["job"].clone()
}

/// `egret events --job ID` shows that job's events and no others, and
/// `egret status` lists the job with its denials.
fn assert_cli_filters_and_lists(s: &Scenario, id: &str) {
    let out = agent::cli(&s.world, &["events", "--json", "--job", id]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect();
    assert!(
        lines.iter().any(|e| e["dst"] == "198.51.100.66"),
        "{}",
        out.stdout
    );
    assert!(lines.iter().all(|e| e["job"]["id"] == id), "{}", out.stdout);
    let none = agent::cli(&s.world, &["events", "--json", "--job", "no-such-job"]);
    assert_eq!(none.stdout.trim(), "", "another job's filter shows nothing");

    let status = agent::cli(&s.world, &["status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let v: Value = serde_json::from_str(&status.stdout).expect("status json");
    let jobs = &v["runners"][0]["recent_jobs"];
    let listed = jobs
        .as_array()
        .and_then(|js| js.iter().find(|j| j["job"]["id"] == id))
        .unwrap_or_else(|| panic!("status lists job {id}: {jobs}"));
    assert!(listed["denials"].as_u64() >= Some(3), "{listed}");
    let human = agent::cli(&s.world, &["status"]);
    assert!(human.stdout.contains(&format!(":{id}")), "{}", human.stdout);
}

#[test]
fn a_github_actions_workflow_run_by_act_is_held_and_named() {
    if !privileged("a_github_actions_workflow_run_by_act_is_held_and_named") {
        return;
    }
    let s = Scenario::start("enforce", FORGE_AND_REGISTRY);
    let workflow = format!(
        "name: ci\non: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      \
         - run: echo \"$GITHUB_RUN_ID\" > \"$EGRET_OUT/run-id\"\n      - run: '{}'\n",
        STEP.replace('\'', "''")
    );
    let project = ci::Project::new(
        &s.world,
        "widgets",
        "https://github.com/acme/widgets.git",
        &[(".github/workflows/ci.yml", &workflow)],
    );
    let act = ci::act(&s.world);
    let (ok, log) = project.run(
        &s.world.host,
        &s.cgroup.procs("ci"),
        &act,
        &[
            "push",
            "-P",
            "ubuntu-latest=-self-hosted",
            "--no-cache-server",
        ],
    );
    assert!(ok, "act failed:\n{log}");
    assert_forge_reached_attacker_refused(&s, &project);

    let run_id = project.read("run-id");
    for job in [
        job_of_denial(&s, "not_allowed", Some("198.51.100.66")),
        job_of_denial(&s, "metadata", Some("169.254.169.254")),
        job_of_denial(&s, "dns_refused", None),
    ] {
        assert_eq!(job["ci"], "github", "{job}");
        assert_eq!(job["id"], run_id.as_str(), "{job}");
        assert_eq!(job["name"], "build", "{job}");
        assert_eq!(job["project"], "acme/widgets", "{job}");
        assert_eq!(job["source"], "environ", "{job}");
        assert_eq!(
            job["url"],
            format!("https://github.com/acme/widgets/actions/runs/{run_id}").as_str()
        );
    }
    assert_cli_filters_and_lists(&s, &run_id);
}

#[test]
fn a_gitlab_ci_pipeline_run_by_gitlab_ci_local_is_held_and_named() {
    if !privileged("a_gitlab_ci_pipeline_run_by_gitlab_ci_local_is_held_and_named") {
        return;
    }
    let s = Scenario::start("enforce", FORGE_AND_REGISTRY);
    let pipeline = format!(
        "test:\n  script:\n    - echo \"$CI_JOB_ID\" > \"$EGRET_OUT/job-id\"\n    - '{}'\n",
        STEP.replace('\'', "''")
    );
    let project = ci::Project::new(
        &s.world,
        "proj",
        "https://gitlab.test/group/proj.git",
        &[(".gitlab-ci.yml", &pipeline)],
    );
    let (ok, log) = project.run(
        &s.world.host,
        &s.cgroup.procs("ci"),
        &ci::gitlab_ci_local(),
        &["--shell-executor-no-image", "test"],
    );
    assert!(ok, "gitlab-ci-local failed:\n{log}");
    assert_forge_reached_attacker_refused(&s, &project);

    let job_id = project.read("job-id");
    for job in [
        job_of_denial(&s, "not_allowed", Some("198.51.100.66")),
        job_of_denial(&s, "metadata", Some("169.254.169.254")),
        job_of_denial(&s, "dns_refused", None),
    ] {
        assert_eq!(job["ci"], "gitlab", "{job}");
        assert_eq!(job["id"], job_id.as_str(), "{job}");
        assert_eq!(job["name"], "test", "{job}");
        assert_eq!(job["project"], "group/proj", "{job}");
        assert_eq!(job["ref"], "main", "{job}");
        assert_eq!(job["source"], "environ", "{job}");
        assert_eq!(
            job["url"],
            format!("https://gitlab.test/group/proj/-/jobs/{job_id}").as_str()
        );
    }
    assert_cli_filters_and_lists(&s, &job_id);
}
