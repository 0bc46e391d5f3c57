use super::*;
use crate::doctor::Level;

/// A host root with one runner installed as `svc.sh install` does.
struct Host {
    root: tempfile::TempDir,
}

impl Host {
    fn new(unit_extra: &str, groups: &str, ephemeral: bool, hook: Option<&str>) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("home/runner/actions-runner");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join(".runner"),
            format!(
                "\u{feff}{{\n  \"agentId\": 7,\n  \"agentName\": \"host-1\",\n  \"poolId\": 1,\n  \"serverUrl\": \"https://pipelines.actions.githubusercontent.com/x\",\n  \"gitHubUrl\": \"https://github.com/acme\",\n  \"workFolder\": \"_work\",\n  \"ephemeral\": {ephemeral}\n}}"
            ),
        )
        .expect(".runner");
        let mut env = String::from("LANG=C.UTF-8\n");
        if let Some(script) = hook {
            let path = dir.join("job-started.sh");
            std::fs::write(&path, script).expect("hook");
            env.push_str(&format!(
                "ACTIONS_RUNNER_HOOK_JOB_STARTED={}\n",
                path.display()
            ));
        }
        std::fs::write(dir.join(".env"), env).expect(".env");
        let units = root.path().join("etc/systemd/system");
        std::fs::create_dir_all(&units).expect("units");
        std::fs::write(
            units.join("actions.runner.acme.host-1.service"),
            format!(
                "[Unit]\nDescription=GitHub Actions Runner (acme.host-1)\nAfter=network.target\n\n[Service]\nExecStart={0}/runsvc.sh\nUser=runner\nWorkingDirectory={0}\nKillMode=process\nKillSignal=SIGTERM\nTimeoutStopSec=5min\n{unit_extra}\n[Install]\nWantedBy=multi-user.target\n",
                dir.display()
            ),
        )
        .expect("unit");
        std::fs::write(root.path().join("etc/group"), groups).expect("group");
        Self { root }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("home/runner/actions-runner")
    }

    fn check(&self) -> Vec<Finding> {
        check(&self.dir(), self.root.path(), &policy())
    }
}

fn policy() -> Vec<(String, String)> {
    vec![("github".into(), "/egret.slice/egret-github.slice".into())]
}

fn level(f: &[Finding], check: &str) -> Level {
    f.iter()
        .find(|f| f.check == check)
        .map(|f| f.level)
        .expect(check)
}

#[test]
fn a_hardened_runner_passes() {
    let h = Host::new(
        "Slice=egret-github.slice\n",
        "runner:x:1001:\ndocker:x:999:\n",
        true,
        Some("#!/bin/sh\nexec /usr/bin/egret verify --require-enforce\n"),
    );
    assert_eq!(default_dirs(h.root.path()), vec![h.dir()]);
    let f = h.check();
    assert!(f.iter().all(|f| f.level == Level::Pass), "{f:#?}");
}

#[test]
fn each_weakness_is_found() {
    let h = Host::new(
        "",
        "runner:x:1001:\ndocker:x:999:runner\n",
        false,
        Some("#!/bin/sh\n# egret verify\necho started\n"),
    );
    let f = h.check();
    assert_eq!(level(&f, "github.ephemeral"), Level::Warn);
    assert_eq!(
        level(&f, "github.verify_hook"),
        Level::Fail,
        "a comment is not a call"
    );
    assert_eq!(level(&f, "github.user"), Level::Fail, "in the docker group");
    assert_eq!(level(&f, "github.slice"), Level::Fail);

    let h = Host::new("Slice=other.slice\n", "runner:x:1001:\n", true, None);
    std::fs::create_dir_all(h.root.path().join("etc/sudoers.d")).expect("sudoers.d");
    std::fs::write(
        h.root.path().join("etc/sudoers.d/runner"),
        "runner ALL=(ALL) NOPASSWD: ALL\n",
    )
    .expect("sudoers");
    let f = h.check();
    assert_eq!(
        level(&f, "github.verify_hook"),
        Level::Fail,
        "no hook at all"
    );
    assert_eq!(level(&f, "github.user"), Level::Fail, "sudo rights");
    let slice = f.iter().find(|f| f.check == "github.slice").expect("slice");
    assert_eq!(slice.level, Level::Fail);
    assert!(
        slice.at.as_deref().is_some_and(|a| a.ends_with(":12")),
        "{slice:?}"
    );

    let f = check(&h.root.path().join("nowhere"), h.root.path(), &policy());
    assert_eq!(f[0].level, Level::Fail);
}
