//! What we ship: the systemd unit is valid, and the Debian package
//! installs, runs and goes away cleanly in a clean Debian root.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use egret_tests::privileged;

#[test]
fn the_systemd_unit_verifies() {
    // `cargo xtask setup` installs it (Debian's systemd package): a missing
    // one is a broken setup, not a reason to pass.
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze is not installed; run `cargo xtask setup`");
    assert!(version.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/systemd/egret.service"
    ))
    .expect("unit file");
    // Point it at the binary we built, which is what verify checks exists.
    let egret = egret_tests::workspace_bin("egret");
    let dir = std::env::temp_dir().join(format!("egret-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("egret.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/egret", &egret.display().to_string()),
    )
    .expect("write unit");
    // Documentation= names man pages: the ones the binary generates, which
    // the package installs, must be there for verify to find them.
    let man = dir.join("man");
    let pages = Command::new(&egret)
        .arg("manpages")
        .arg(man.join("man1"))
        .status()
        .expect("egret manpages");
    assert!(pages.success());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", &man)
        .output()
        .expect("verify");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = text
        .lines()
        // Units this one orders itself against need not exist on a test host.
        .filter(|l| !l.contains("gitlab-runner.service") && !l.trim().is_empty())
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

/// Runs `script` in the root with `sh`, in a network namespace of its
/// own: nothing a maintainer script does can reach a network.
fn in_root(root: &Path, script: &str) -> (bool, String) {
    let out = Command::new("unshare")
        .args(["--net", "--fork", "chroot"])
        .arg(root)
        .args(["/bin/sh", "-c", script])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("unshare chroot");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A temporary root, removed on drop.
struct CleanRoot(PathBuf);

impl Drop for CleanRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The package `cargo xtask dist` builds, installed with `dpkg -i` into a
/// clean Debian root (minbase, made by mmdebstrap at setup): its files
/// land where a runner host expects them, `egret` runs, nothing is enabled
/// or started, and `dpkg -r` then `dpkg -P` leave nothing behind.
#[test]
fn the_debian_package_installs_and_removes_in_a_clean_root() {
    if !privileged("the_debian_package_installs_and_removes_in_a_clean_root") {
        return;
    }
    let var = |name: &str| {
        PathBuf::from(std::env::var_os(name).unwrap_or_else(|| {
            panic!("{name} is not set: run this through `cargo xtask test`, which builds the package and the clean root")
        }))
    };
    let (deb, tarball) = (var("EGRET_DEB"), var("EGRET_DEB_ROOT"));
    let root =
        CleanRoot(std::env::temp_dir().join(format!("egret-deb-root-{}", std::process::id())));
    std::fs::create_dir_all(&root.0).expect("root dir");
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root.0)
        .status()
        .expect("tar");
    assert!(status.success(), "unpack {}", tarball.display());
    std::fs::copy(&deb, root.0.join("tmp/egret.deb")).expect("copy the package in");
    let at = |rel: &str| root.0.join(rel);

    let (ok, log) = in_root(&root.0, "dpkg -i /tmp/egret.deb");
    assert!(ok, "dpkg -i:\n{log}");
    for file in [
        "usr/bin/egret",
        "usr/lib/systemd/system/egret.service",
        "etc/egret/policy.example.yaml",
        "usr/share/bash-completion/completions/egret",
        "usr/share/zsh/vendor-completions/_egret",
        "usr/share/fish/vendor_completions.d/egret.fish",
        "usr/share/man/man1/egret.1.gz",
        "usr/share/man/man1/egret-agent.1.gz",
        "usr/share/doc/egret/README.md",
    ] {
        assert!(at(file).is_file(), "{file} not installed");
    }
    let state = std::fs::metadata(at("var/lib/egret")).expect("the state directory");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&state.permissions()) & 0o777,
        0o700
    );
    let conffiles =
        std::fs::read_to_string(at("var/lib/dpkg/info/egret.conffiles")).unwrap_or_default();
    assert!(
        conffiles.contains("/etc/egret/policy.example.yaml"),
        "conffiles: {conffiles}"
    );
    // No policy, no enforcement: nothing enabled, and the unit will not
    // start until /etc/egret/policy.yaml exists.
    assert!(!at("etc/egret/policy.yaml").exists());
    assert!(!at("etc/systemd/system/multi-user.target.wants/egret.service").exists());
    let unit = std::fs::read_to_string(at("usr/lib/systemd/system/egret.service")).expect("unit");
    assert!(
        unit.contains("ConditionPathExists=/etc/egret/policy.yaml"),
        "{unit}"
    );

    let (ok, version) = in_root(&root.0, "egret --version");
    assert!(ok, "{version}");
    assert_eq!(
        version.trim(),
        format!("egret {}", env!("CARGO_PKG_VERSION"))
    );
    let (ok, log) = in_root(&root.0, "egret check /etc/egret/policy.example.yaml");
    assert!(ok, "the example policy checks: {log}");
    let (ok, log) = in_root(
        &root.0,
        "egret completions bash >/dev/null && egret suggest --help >/dev/null",
    );
    assert!(ok, "{log}");

    let (ok, log) = in_root(&root.0, "dpkg -r egret");
    assert!(ok, "dpkg -r:\n{log}");
    assert!(!at("usr/bin/egret").exists());
    assert!(
        at("etc/egret/policy.example.yaml").exists(),
        "a removed package keeps its conffiles"
    );
    let (ok, log) = in_root(&root.0, "dpkg -P egret");
    assert!(ok, "dpkg -P:\n{log}");
    for gone in [
        "etc/egret/policy.example.yaml",
        "var/lib/egret",
        "usr/lib/systemd/system/egret.service",
    ] {
        assert!(!at(gone).exists(), "{gone} left after purge");
    }
}
