//! GitLab Runner's `config.toml`, against GitLab's "Security for
//! self-managed runners" and what egret's boundary assumes.

use std::path::Path;

use toml::{Table, Value};

use super::{Finding, line_of};

/// Capabilities that put a job outside what egret can hold.
const DANGEROUS_CAPS: [&str; 3] = ["NET_RAW", "NET_ADMIN", "SYS_ADMIN"];
const DOCKER_EXECUTORS: [&str; 4] = [
    "docker",
    "docker+machine",
    "docker-autoscaler",
    "docker-windows",
];

/// Executors whose jobs run on another machine or in a VM, where egret on
/// this host does not see them.
const ELSEWHERE_EXECUTORS: [&str; 6] = [
    "ssh",
    "virtualbox",
    "parallels",
    "custom",
    "instance",
    "docker-windows",
];

/// What the executor means for egret: the jobs of `docker*` and `shell`
/// run on this host, where egret holds them; the others elsewhere.
fn executor_finding(subject: &str, executor: &str, at: Option<String>) -> Finding {
    if executor.is_empty() {
        return Finding::fail(
            "gitlab.executor",
            subject,
            "no executor set: the runner cannot take jobs",
            "set executor = \"docker\" (or \"shell\" for one trusted project)",
        )
        .at(at);
    }
    if ELSEWHERE_EXECUTORS.contains(&executor) {
        return Finding::warn(
            "gitlab.executor",
            subject,
            format!("executor {executor}: jobs run on another machine or in a VM, which egret on this host does not guard"),
            "run egret where the jobs run, or use the docker executor on this host",
        )
        .at(at);
    }
    Finding::pass(
        "gitlab.executor",
        subject,
        format!("executor {executor}: jobs run on this host, where egret holds them"),
    )
}

/// Every finding for the runners in `text` (the file at `path`).
/// `policy` lists the egret policy's runners as (name, cgroup).
pub fn check(path: &Path, text: &str, policy: &[(String, String)]) -> Vec<Finding> {
    let file = path.display().to_string();
    let table: Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            return vec![
                Finding::fail(
                    "gitlab.config",
                    "gitlab runner",
                    format!("{file} is not valid TOML: {}", e.message()),
                    "fix the file; gitlab-runner cannot read it either",
                )
                .at(line.map(|l| format!("{file}:{l}"))),
            ];
        }
    };
    let runners = table
        .get("runners")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if runners.is_empty() {
        return vec![Finding::warn(
            "gitlab.config",
            "gitlab runner",
            format!("{file} registers no runner"),
            "register the runner (gitlab-runner register), then run egret doctor again",
        )];
    }
    let mut out = Vec::new();
    for (index, runner) in runners.iter().enumerate() {
        let Some(runner) = runner.as_table() else {
            continue;
        };
        let name = runner
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let subject = format!("gitlab runner \"{name}\"");
        let at = |key: Option<&str>| {
            line_of(text, "[[runners]]", index, key).map(|l| format!("{file}:{l}"))
        };
        let executor = runner
            .get("executor")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        out.push(executor_finding(&subject, &executor, at(Some("executor"))));
        let docker = runner.get("docker").and_then(Value::as_table);
        if DOCKER_EXECUTORS.contains(&executor.as_str()) {
            out.extend(docker_findings(&subject, docker, policy, &at));
        } else if executor == "shell" {
            out.push(
                Finding::warn(
                    "gitlab.shell",
                    &subject,
                    "the shell executor runs every job as the runner's user on the host",
                    "use it only for one trusted project; a runner shared by projects should use the docker executor",
                )
                .at(at(Some("executor"))),
            );
        } else if executor == "kubernetes" {
            out.push(
                Finding::warn(
                    "gitlab.kubernetes",
                    &subject,
                    "jobs run as pods on the cluster, not on this host: egret does not guard them",
                    "guard the cluster's nodes, or use a docker executor on this host",
                )
                .at(at(Some("executor"))),
            );
        }
        if executor == "docker+machine" {
            let max_builds = runner
                .get("machine")
                .and_then(Value::as_table)
                .and_then(|m| m.get("MaxBuilds"))
                .and_then(Value::as_integer);
            out.push(match max_builds {
                Some(1) => Finding::pass("gitlab.max_builds", &subject, "MaxBuilds = 1"),
                other => Finding::warn(
                    "gitlab.max_builds",
                    &subject,
                    format!(
                        "MaxBuilds = {}: a machine serves several jobs, which can leave traces for the next",
                        other.map_or("unset (unlimited)".to_owned(), |n| n.to_string())
                    ),
                    "set MaxBuilds = 1 in [runners.machine]",
                )
                .at(at(Some("MaxBuilds"))),
            });
        } else if executor != "kubernetes" {
            let cleanup = runner
                .get("feature_flags")
                .and_then(Value::as_table)
                .and_then(|f| f.get("FF_ENABLE_JOB_CLEANUP"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            out.push(if cleanup {
                Finding::pass("gitlab.job_cleanup", &subject, "FF_ENABLE_JOB_CLEANUP on")
            } else {
                Finding::warn(
                    "gitlab.job_cleanup",
                    &subject,
                    "FF_ENABLE_JOB_CLEANUP off on a static host: a job's files stay for the next",
                    "set FF_ENABLE_JOB_CLEANUP = true in [runners.feature_flags]",
                )
                .at(at(Some("FF_ENABLE_JOB_CLEANUP")).or_else(|| at(None)))
            });
        }
    }
    out
}

fn strings(table: Option<&Table>, key: &str) -> Vec<String> {
    match table.and_then(|t| t.get(key)) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn cap_name(c: &str) -> String {
    c.trim().trim_start_matches("CAP_").to_ascii_uppercase()
}

fn docker_findings(
    subject: &str,
    docker: Option<&Table>,
    policy: &[(String, String)],
    at: &dyn Fn(Option<&str>) -> Option<String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let privileged = docker
        .and_then(|d| d.get("privileged"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    out.push(if privileged {
        Finding::fail(
            "gitlab.privileged",
            subject,
            "privileged = true: a job container can leave its cgroup and every egret hook",
            "set privileged = false in [runners.docker]",
        )
        .at(at(Some("privileged")))
    } else {
        Finding::pass(
            "gitlab.privileged",
            subject,
            "containers are not privileged",
        )
    });
    let added: Vec<String> = strings(docker, "cap_add")
        .iter()
        .map(|c| cap_name(c))
        .filter(|c| DANGEROUS_CAPS.contains(&c.as_str()) || c == "ALL")
        .collect();
    out.push(if added.is_empty() {
        Finding::pass("gitlab.cap_add", subject, "no capability that voids egret is added")
    } else {
        Finding::fail(
            "gitlab.cap_add",
            subject,
            format!("cap_add gives jobs {}", added.join(", ")),
            "remove them from cap_add: NET_RAW sends frames below every hook, NET_ADMIN and SYS_ADMIN reconfigure what egret holds",
        )
        .at(at(Some("cap_add")))
    });
    let dropped: Vec<String> = strings(docker, "cap_drop")
        .iter()
        .map(|c| cap_name(c))
        .collect();
    out.push(if dropped.iter().any(|c| c == "NET_RAW" || c == "ALL") {
        Finding::pass("gitlab.cap_drop", subject, "NET_RAW is dropped")
    } else {
        Finding::warn(
            "gitlab.cap_drop",
            subject,
            "cap_drop lacks NET_RAW: a job running as root can send raw frames no egret hook sees",
            "add cap_drop = [\"NET_RAW\"] to [runners.docker]",
        )
        .at(at(Some("cap_drop")).or_else(|| at(None)))
    });
    let socket: Vec<String> = strings(docker, "volumes")
        .into_iter()
        .filter(|v| v.contains("docker.sock"))
        .collect();
    out.push(if socket.is_empty() {
        Finding::pass(
            "gitlab.docker_socket",
            subject,
            "the Docker socket is not mounted into jobs",
        )
    } else {
        Finding::fail(
            "gitlab.docker_socket",
            subject,
            format!(
                "volumes mount {}: the Docker socket is root on the host",
                socket.join(", ")
            ),
            "remove it from volumes; build images with a rootless builder instead",
        )
        .at(at(Some("volumes")))
    });
    let network = docker
        .and_then(|d| d.get("network_mode"))
        .and_then(Value::as_str)
        .unwrap_or("");
    out.push(if network == "host" {
        Finding::fail(
            "gitlab.network_mode",
            subject,
            "network_mode = \"host\": jobs share the host's network namespace, its loopback services included",
            "remove network_mode",
        )
        .at(at(Some("network_mode")))
    } else {
        Finding::pass("gitlab.network_mode", subject, "jobs have network namespaces of their own")
    });
    if strings(docker, "pull_policy")
        .iter()
        .any(|p| p == "if-not-present")
    {
        out.push(
            Finding::warn(
                "gitlab.pull_policy",
                subject,
                "pull_policy if-not-present: on a runner shared by projects, one project's job can run another's cached private image",
                "use pull_policy = \"always\" unless the runner is dedicated to one project",
            )
            .at(at(Some("pull_policy"))),
        );
    }
    let parent = docker
        .and_then(|d| d.get("cgroup_parent"))
        .and_then(Value::as_str);
    out.push(match parent {
        None => Finding::fail(
            "gitlab.cgroup_parent",
            subject,
            "no cgroup_parent: job containers land in Docker's own cgroup, where no egret runner is attached",
            "set cgroup_parent in [runners.docker] to a runner's slice (systemd driver) or cgroup path (cgroupfs driver), as the egret policy names it",
        )
        .at(at(None)),
        Some(p) => match policy_runner_for(p, policy) {
            Some(name) => Finding::pass(
                "gitlab.cgroup_parent",
                subject,
                format!("cgroup_parent {p} is egret runner \"{name}\""),
            ),
            None => Finding::fail(
                "gitlab.cgroup_parent",
                subject,
                format!(
                    "cgroup_parent {p} is no runner of the egret policy ({})",
                    if policy.is_empty() {
                        "no policy runners known: is the agent running?".to_owned()
                    } else {
                        policy
                            .iter()
                            .map(|(n, c)| format!("{n}: {c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
                "name the same slice or path in config.toml and in the policy (`slice:` or `cgroup:`)",
            )
            .at(at(Some("cgroup_parent"))),
        },
    });
    out
}

/// The policy runner whose cgroup `cgroup_parent` is (or lies below):
/// a slice name for Docker's systemd driver, a path for cgroupfs.
fn policy_runner_for(cgroup_parent: &str, policy: &[(String, String)]) -> Option<String> {
    let cgroup = if cgroup_parent.ends_with(".slice") && !cgroup_parent.contains('/') {
        crate::policy::slice_cgroup(cgroup_parent).ok()?
    } else {
        format!("/{}", cgroup_parent.trim_matches('/'))
    };
    policy
        .iter()
        .find(|(_, c)| crate::jobs::within(&cgroup, c))
        .map(|(n, _)| n.clone())
}

#[cfg(test)]
mod tests;
