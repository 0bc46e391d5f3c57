use super::*;
use crate::doctor::Level;

/// Shaped like the config.toml `gitlab-runner register` writes.
const HARDENED: &str = r#"concurrent = 4
check_interval = 0

[session_server]
  session_timeout = 1800

[[runners]]
  name = "docker-1"
  url = "https://gitlab.example.com"
  id = 12
  token = "glrt-REDACTED"
  executor = "docker"
  [runners.feature_flags]
    FF_ENABLE_JOB_CLEANUP = true
  [runners.docker]
    tls_verify = false
    image = "alpine:3.20"
    privileged = false
    cap_drop = ["NET_RAW"]
    disable_cache = false
    volumes = ["/cache"]
    pull_policy = ["always"]
    cgroup_parent = "egret-gitlab.slice"
    shm_size = 0
"#;

const UNSAFE: &str = r#"concurrent = 2

[[runners]]
  name = "dind"
  url = "https://gitlab.example.com"
  executor = "docker"
  [runners.docker]
    image = "docker:27"
    privileged = true
    cap_add = ["NET_ADMIN", "CAP_NET_RAW"]
    volumes = ["/var/run/docker.sock:/var/run/docker.sock", "/cache"]
    network_mode = "host"
    pull_policy = "if-not-present"

[[runners]]
  name = "autoscale"
  url = "https://gitlab.example.com"
  executor = "docker+machine"
  [runners.docker]
    image = "alpine"
    cgroup_parent = "/somewhere/else"
  [runners.machine]
    MaxBuilds = 10
    MachineDriver = "amazonec2"

[[runners]]
  name = "shell-1"
  url = "https://gitlab.example.com"
  executor = "shell"

[[runners]]
  name = "vm"
  url = "https://gitlab.example.com"
  executor = "virtualbox"

[[runners]]
  name = "unfinished"
  url = "https://gitlab.example.com"

[[runners]]
  name = "k8s"
  url = "https://gitlab.example.com"
  executor = "kubernetes"
  [runners.kubernetes]
    namespace = "ci"
"#;

fn policy() -> Vec<(String, String)> {
    vec![("gitlab".into(), "/egret.slice/egret-gitlab.slice".into())]
}

fn level(findings: &[Finding], subject: &str, check: &str) -> Vec<(Level, Option<String>)> {
    findings
        .iter()
        .filter(|f| f.subject.contains(subject) && f.check == check)
        .map(|f| (f.level, f.at.clone()))
        .collect()
}

#[test]
fn a_hardened_docker_runner_passes_every_check() {
    let f = check(Path::new("config.toml"), HARDENED, &policy());
    let not_passed: Vec<&Finding> = f.iter().filter(|f| f.level != Level::Pass).collect();
    assert!(not_passed.is_empty(), "{not_passed:#?}");
    assert!(
        f.iter()
            .any(|f| f.check == "gitlab.cgroup_parent" && f.found.contains("\"gitlab\""))
    );
}

#[test]
fn each_unsafe_setting_fails_with_its_line() {
    let f = check(Path::new("config.toml"), UNSAFE, &policy());
    let fail_at = |subject: &str, check: &str, line: usize| {
        assert_eq!(
            level(&f, subject, check),
            vec![(Level::Fail, Some(format!("config.toml:{line}")))],
            "{subject} {check}: {f:#?}"
        );
    };
    fail_at("dind", "gitlab.privileged", 9);
    fail_at("dind", "gitlab.cap_add", 10);
    fail_at("dind", "gitlab.docker_socket", 11);
    fail_at("dind", "gitlab.network_mode", 12);
    fail_at("autoscale", "gitlab.cgroup_parent", 21);
    assert_eq!(
        level(&f, "dind", "gitlab.cgroup_parent")[0].0,
        Level::Fail,
        "missing"
    );
    assert_eq!(level(&f, "dind", "gitlab.cap_drop")[0].0, Level::Warn);
    assert_eq!(
        level(&f, "dind", "gitlab.pull_policy"),
        vec![(Level::Warn, Some("config.toml:13".into()))]
    );
    assert_eq!(
        level(&f, "autoscale", "gitlab.max_builds"),
        vec![(Level::Warn, Some("config.toml:23".into()))]
    );
    assert_eq!(level(&f, "shell-1", "gitlab.shell")[0].0, Level::Warn);
    assert_eq!(level(&f, "shell-1", "gitlab.job_cleanup")[0].0, Level::Warn);
    assert_eq!(level(&f, "k8s", "gitlab.kubernetes")[0].0, Level::Warn);
    assert_eq!(
        level(&f, "vm", "gitlab.executor"),
        vec![(Level::Warn, Some("config.toml:34".into()))]
    );
    assert_eq!(level(&f, "unfinished", "gitlab.executor")[0].0, Level::Fail);
    assert_eq!(level(&f, "shell-1", "gitlab.executor")[0].0, Level::Pass);
    let cap = f
        .iter()
        .find(|f| f.check == "gitlab.cap_add")
        .expect("cap_add");
    assert!(cap.found.contains("NET_ADMIN, NET_RAW"), "{}", cap.found);
}

#[test]
fn cgroup_parent_matches_either_driver() {
    let cgroupfs = vec![("gitlab".to_owned(), "/egret/gitlab-docker".to_owned())];
    assert_eq!(
        policy_runner_for("/egret/gitlab-docker", &cgroupfs).as_deref(),
        Some("gitlab")
    );
    assert_eq!(
        policy_runner_for("egret/gitlab-docker/", &cgroupfs).as_deref(),
        Some("gitlab")
    );
    assert_eq!(policy_runner_for("/egret/gitlab", &cgroupfs), None);
    assert_eq!(
        policy_runner_for("egret-gitlab.slice", &policy()).as_deref(),
        Some("gitlab")
    );
    assert_eq!(policy_runner_for("egret-github.slice", &policy()), None);
}

#[test]
fn a_broken_file_is_one_failure_with_its_line() {
    let f = check(
        Path::new("config.toml"),
        "concurrent = 1\n[[runners]\n",
        &policy(),
    );
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].level, f[0].at.as_deref()),
        (Level::Fail, Some("config.toml:2"))
    );
    let f = check(Path::new("config.toml"), "concurrent = 1\n", &policy());
    assert_eq!(f[0].level, Level::Warn, "no runner registered");
}
