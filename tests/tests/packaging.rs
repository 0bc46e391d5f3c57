//! The systemd unit we ship is valid.

use std::process::Command;

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
        unit.replace("/usr/local/bin/egret", &egret.display().to_string()),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
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
