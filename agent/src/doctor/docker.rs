//! Docker's `daemon.json`: the cgroup driver (and so what `cgroup_parent`
//! takes), user-namespace remapping and `no-new-privileges`.

use std::path::Path;

use serde_json::Value;

use super::Finding;

/// The findings for `daemon.json` at `path`; `text` is `None` when the
/// file does not exist (Docker's defaults then apply).
pub fn check(path: &Path, text: Option<&str>, cgroup_v2_with_systemd: bool) -> Vec<Finding> {
    let file = path.display().to_string();
    let config: Value = match text.map(serde_json::from_str::<Value>) {
        None => Value::Object(Default::default()),
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            return vec![
                Finding::fail(
                    "docker.config",
                    "docker",
                    format!("{file} is not valid JSON: {e}"),
                    "fix the file; dockerd refuses to start with it",
                )
                .at(Some(format!("{file}:{}", e.line()))),
            ];
        }
    };
    let line = |key: &str| {
        text.and_then(|t| {
            t.lines()
                .position(|l| l.contains(&format!("\"{key}\"")))
                .map(|i| format!("{file}:{}", i + 1))
        })
    };
    let mut out = Vec::new();
    let driver = config["exec-opts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|o| o.strip_prefix("native.cgroupdriver="))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if cgroup_v2_with_systemd {
                "systemd".into()
            } else {
                "cgroupfs".into()
            }
        });
    out.push(Finding::pass(
        "docker.cgroup_driver",
        "docker",
        if driver == "systemd" {
            "cgroup driver systemd: cgroup_parent takes a slice name (egret-gitlab.slice); name it with `slice:` in the policy"
        } else {
            "cgroup driver cgroupfs: cgroup_parent takes a path (/egret/gitlab-docker); name it with `cgroup:` in the policy"
        },
    )
    .at(line("exec-opts")));
    out.push(
        if config["userns-remap"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            Finding::pass(
                "docker.userns_remap",
                "docker",
                "userns-remap on: root in a container is not root on the host",
            )
        } else {
            Finding::warn(
                "docker.userns_remap",
                "docker",
                "userns-remap off: root in a job container is root on the host's kernel objects",
                "set \"userns-remap\": \"default\" in daemon.json where the jobs' images allow it",
            )
            .at(line("userns-remap"))
        },
    );
    out.push(if config["no-new-privileges"].as_bool() == Some(true) {
        Finding::pass("docker.no_new_privileges", "docker", "no-new-privileges on")
    } else {
        Finding::warn(
            "docker.no_new_privileges",
            "docker",
            "no-new-privileges off: setuid binaries in a job image can gain privileges",
            "set \"no-new-privileges\": true in daemon.json",
        )
        .at(line("no-new-privileges"))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Level;

    #[test]
    fn a_hardened_daemon_passes_and_defaults_warn() {
        let good = "{\n  \"exec-opts\": [\"native.cgroupdriver=systemd\"],\n  \"userns-remap\": \"default\",\n  \"no-new-privileges\": true\n}\n";
        let f = check(Path::new("daemon.json"), Some(good), false);
        assert!(f.iter().all(|f| f.level == Level::Pass), "{f:#?}");
        assert!(f[0].found.contains("slice name"));
        let f = check(Path::new("daemon.json"), None, false);
        assert!(f[0].found.contains("cgroupfs"));
        assert_eq!(
            f.iter().filter(|f| f.level == Level::Warn).count(),
            2,
            "{f:#?}"
        );
        let f = check(Path::new("daemon.json"), None, true);
        assert!(
            f[0].found.contains("systemd"),
            "the default on cgroup v2 with systemd"
        );
    }

    #[test]
    fn a_broken_file_fails_with_its_line() {
        let f = check(
            Path::new("daemon.json"),
            Some("{\n  \"debug\": true,\n}\n"),
            false,
        );
        assert_eq!(
            (f[0].level, f[0].at.as_deref()),
            (Level::Fail, Some("daemon.json:3"))
        );
    }
}
