//! `cargo xtask`: set-up, build, test, demo, benchmarks, and the committed
//! kernel object.
//!
//! Every command first installs what it needs and is missing (`setup`),
//! and does nothing more when everything is present. Building egret needs
//! stable Rust only: the kernel programs come as a committed object, which
//! only `build-ebpf` (and `lint`, which checks it) rebuilds, with the
//! toolchain `ebpf/toolchain.toml` pins.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod dist;
mod ebpf;
mod setup;
mod vectors;

use vectors::{UNTESTABLE_LOG_VAR, print_vectors};

#[derive(Parser)]
#[command(about = "egret's build, test and benchmark orchestration")]
struct Xtask {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the tests and the demo need, only what is missing;
    /// with --ebpf, also the toolchain ebpf/toolchain.toml pins for
    /// rebuilding the kernel object, checked to agree with one another.
    Setup {
        #[arg(long)]
        ebpf: bool,
    },
    /// Build every binary (release), with stable Rust: the kernel programs
    /// are the committed object, agent/ebpf/egret.bpf.o.
    Build,
    /// Rebuild the committed kernel object from ebpf/ with the pinned
    /// toolchain (installed when missing), and its manifest. Run it after
    /// changing anything under ebpf/, and commit agent/ebpf/.
    BuildEbpf {
        /// Rebuild aside and fail unless the committed object is exactly
        /// what the sources build to (CI runs this).
        #[arg(long)]
        check: bool,
    },
    /// Build the Debian package, target/dist/egret_<version>_amd64.deb
    /// (cargo-deb; installed when missing), with completions and man pages.
    Dist {
        /// Also a static binary, target/dist/egret-x86_64-linux-musl.
        #[arg(long)]
        musl: bool,
    },
    /// Set up, build, then run every test: unit tests and the privileged
    /// end-to-end tests in network namespaces (root, cgroup v2, BPF).
    /// EGRET_SKIP_PRIVILEGED=1 skips the privileged ones, saying so.
    Test,
    /// Set up, build, and run the demo: the test world, the agent with
    /// policy-examples/demo.yaml, and a job showing what is allowed and denied.
    Demo,
    /// Benchmarks, measured side by side in one run.
    Bench {
        which: Bench,
        /// Passed on to the benchmark, for example `--runs 3` or
        /// `--raw rounds.csv` (`egret-lab bench-connect --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check, clippy with warnings as errors (the kernel
    /// programs too, with the pinned nightly), and `build-ebpf --check`.
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// connect() rate from a job cgroup with egret, with nftables rulesets
    /// instead, and with empty programs, each against none.
    Connect,
    /// Time from `egret lockdown` starting to a job seeing an error on
    /// every socket it holds.
    Lockdown,
    /// Time to apply 10,000 CIDRs, and one-line edits to a small policy
    /// and to a large generated preset.
    Reload,
    /// TCP bulk throughput with and without egret's packet-level backstop.
    Stream,
    /// DNS latency and throughput through the proxy, against the upstream
    /// directly and against dnsmasq as a forwarder.
    Dns,
    /// Kernel time of each egret program per call, from the kernel's BPF
    /// statistics: the figure to track, as machine noise barely moves it.
    Hooks,
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
        Cmd::Setup { ebpf } => {
            setup::for_tests()?;
            if ebpf {
                setup::ebpf_toolchain(&setup::pin(&root()?)?)?;
            }
            Ok(())
        }
        Cmd::Build => cargo(&["build", "--release", "--bins"]),
        Cmd::BuildEbpf { check } => ebpf::build_ebpf(check),
        Cmd::Dist { musl } => dist::dist(musl).map(drop),
        Cmd::Test => {
            setup::for_tests()?;
            test()
        }
        Cmd::Demo => {
            setup::for_tests()?;
            cargo(&["build", "--release", "--bins"])?;
            let policy = root()?.join("policy-examples/demo.yaml");
            run_cmd(
                Command::new(bin("egret-lab")?)
                    .arg("demo")
                    .arg("--policy")
                    .arg(policy),
            )
        }
        Cmd::Bench { which, args } => {
            setup::for_tests()?;
            cargo(&["build", "--release", "--bins"])?;
            let sub = match which {
                Bench::Connect => "bench-connect",
                Bench::Lockdown => "bench-lockdown",
                Bench::Reload => "bench-reload",
                Bench::Stream => "bench-stream",
                Bench::Dns => "bench-dns",
                Bench::Hooks => "bench-hooks",
            };
            run_cmd(Command::new(bin("egret-lab")?).arg(sub).args(args))
        }
        Cmd::Fuzz { seconds } => {
            let pin = setup::pin(&root()?)?;
            setup::ebpf_toolchain(&pin)?;
            fuzz(&pin.rust, seconds)
        }
        Cmd::Lint => {
            let pin = setup::pin(&root()?)?;
            setup::ebpf_toolchain(&pin)?;
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            // The kernel programs build only for the BPF target, with the
            // pinned nightly.
            run_cmd(
                Command::new("rustup")
                    .current_dir(root()?.join("ebpf/programs"))
                    .args(["run", &pin.rust, "cargo", "clippy", "--release"])
                    .args(["--target", "bpfel-unknown-none", "--target-dir"])
                    .arg(root()?.join("target/ebpf-clippy"))
                    .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
            )?;
            ebpf::build_ebpf(true)
        }
    }
}

fn test() -> Result<()> {
    let root = root()?;
    // The end-to-end tests drive the binaries and install the package, so
    // build them first.
    cargo(&["build", "--release", "--bins"])?;
    let deb = dist::dist(false)?;
    let clean_root = dist::clean_root()?;
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
        .env("EGRET_DEB", &deb)
        .env("EGRET_DEB_ROOT", &clean_root)
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
    let log = untestable;
    let untestable: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let _ = std::fs::remove_file(&log);
    let shown = print_vectors(&results, &untestable, privileged);
    if !status.success() {
        bail!("tests failed");
    }
    if !shown {
        bail!("a bypass vector is not proved: the table names a test that did not run");
    }
    Ok(())
}

/// The fuzz targets of fuzz/Cargo.toml.
const FUZZ_TARGETS: &[&str] = &["dns_query", "control_request"];
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn fuzz(toolchain: &str, seconds: u64) -> Result<()> {
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
            .args(["run", toolchain, "cargo", "fuzz", "run", target])
            .arg(&scratch)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}")])
            .args(["-rss_limit_mb=512", "-timeout=5", "-print_final_stats=1"])
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
