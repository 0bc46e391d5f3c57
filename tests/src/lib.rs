//! The test world of `../shared/design.md` §5, shared by the end-to-end tests,
//! `cargo xtask demo` and the benchmarks.
//!
//! Nothing here sends a packet from the caller's network namespace: every
//! process that talks to the network is started inside a namespace the world
//! created, and the spawn itself refuses to run a child that would still be in
//! the namespace the test process started in.

pub mod agent;
pub mod bpf;
pub mod cgroup;
pub mod ci;
pub mod docker;
pub mod job;
pub mod netns;
pub mod scenario;
pub mod world;

/// Whether privileged tests run. They do, always, unless
/// `EGRET_SKIP_PRIVILEGED=1` says otherwise; then the skip is printed.
/// Running without root is a failure, not a skip.
pub fn privileged(test: &str) -> bool {
    if std::env::var("EGRET_SKIP_PRIVILEGED").is_ok_and(|v| v == "1") {
        // Straight to the stderr handle: libtest captures eprintln!, and a
        // skip must never be silent.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED (EGRET_SKIP_PRIVILEGED=1): {test}"
        );
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root (cgroups, BPF, network namespaces); run it through `cargo xtask test`, \
         or set EGRET_SKIP_PRIVILEGED=1 to skip privileged tests"
    );
    true
}

/// For a test that finds this kernel cannot show what it tests (no SCTP,
/// say): says so past libtest's capture, and records the test's name where
/// `cargo xtask test` reads it, so the vector table says "not testable
/// here" instead of "proved".
pub fn not_testable_here(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "NOT TESTABLE HERE: {test}: {why}");
    if let Some(log) = std::env::var_os("EGRET_UNTESTABLE_LOG") {
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| writeln!(f, "{test}"));
    }
}

/// Polls `check` every 50 ms until it holds; panics naming `what` when it
/// has not within `timeout`. Returns how long it took.
pub fn poll_until(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> bool,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "{what} did not happen within {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    start.elapsed()
}

/// Path of a binary of this workspace, next to the running test binary
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`), unless
/// `EGRET_BIN_DIR` points elsewhere.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("EGRET_BIN_DIR") {
        let dir = std::path::PathBuf::from(dir);
        assert!(
            dir.is_absolute(),
            "EGRET_BIN_DIR must be an absolute path, got {}",
            dir.display()
        );
        return dir.join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --release --workspace --bins` (cargo xtask test does)",
        path.display()
    );
    path
}
