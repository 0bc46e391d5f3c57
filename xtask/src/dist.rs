//! `cargo xtask dist`: the Debian package, `target/dist/egret_<version>_amd64.deb`
//! (cargo-deb, from `[package.metadata.deb]` in agent/Cargo.toml), with the
//! shell completions and man pages the binary generates from its own
//! command line; and, with `--musl`, a static binary.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, cargo_bin, root, run_cmd};

const CARGO_DEB_VERSION: &str = "3.8.0";
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the package; returns its path.
pub fn dist(musl: bool) -> Result<PathBuf> {
    let root = root()?;
    cargo(&["build", "--release", "-p", "egret"])?;
    let out = root.join("target/dist");
    let egret = root.join("target/release/egret");
    generate_docs(&egret, &out)?;
    let pinned = Command::new(cargo_bin())
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION)
        });
    if !pinned {
        run_cmd(Command::new(cargo_bin()).args([
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
        ]))?;
    }
    let built = Command::new(cargo_bin())
        .current_dir(&root)
        .args(["deb", "-p", "egret", "--no-build", "--output"])
        .arg(&out)
        .output()
        .context("cargo deb")?;
    if !built.status.success() {
        bail!(
            "cargo deb failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    let deb = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    eprintln!("xtask dist: {}", deb.display());
    if musl {
        run_cmd(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
        cargo(&["build", "--release", "-p", "egret", "--target", MUSL_TARGET])?;
        let binary = root.join("target").join(MUSL_TARGET).join("release/egret");
        let copy = out.join("egret-x86_64-linux-musl");
        std::fs::copy(&binary, &copy).context("copy the static binary")?;
        eprintln!("xtask dist: {} (static)", copy.display());
    }
    Ok(deb)
}

/// A minimal Debian root of this machine's release, as a tarball the
/// packaging test installs the package into: made once with mmdebstrap
/// from Debian's mirror (here, at setup, never in a test), then reused.
pub fn clean_root() -> Result<PathBuf> {
    let root = root()?;
    let release = std::fs::read_to_string("/etc/os-release").context("read /etc/os-release")?;
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .context("/etc/os-release has no VERSION_CODENAME")?;
    let tarball = root.join(format!("target/dist/debian-{codename}-minbase.tar"));
    if tarball.exists() {
        return Ok(tarball);
    }
    std::fs::create_dir_all(root.join("target/dist")).context("target/dist")?;
    let partial = tarball.with_extension("tar.partial");
    run_cmd(
        Command::new("mmdebstrap")
            .args([
                "--quiet",
                "--variant=minbase",
                "--mode=root",
                "--format=tar",
            ])
            .arg(&codename)
            .arg(&partial)
            .arg("http://deb.debian.org/debian"),
    )?;
    std::fs::rename(&partial, &tarball).context("keep the clean root")?;
    eprintln!("xtask dist: clean Debian root {}", tarball.display());
    Ok(tarball)
}

/// Completions for bash, zsh and fish, and gzipped man pages, under `out`.
fn generate_docs(egret: &Path, out: &Path) -> Result<()> {
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions).context("completions dir")?;
    for (shell, file) in [
        ("bash", "egret.bash"),
        ("zsh", "_egret"),
        ("fish", "egret.fish"),
    ] {
        let script = Command::new(egret)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("egret completions {shell}"))?;
        if !script.status.success() {
            bail!("egret completions {shell} failed");
        }
        std::fs::write(completions.join(file), script.stdout).context("write completions")?;
    }
    let man = out.join("man");
    let _ = std::fs::remove_dir_all(&man);
    run_cmd(Command::new(egret).arg("manpages").arg(&man))?;
    for entry in std::fs::read_dir(&man).context("man dir")? {
        let path = entry.context("man dir")?.path();
        // -n: no name or time in the header, so the package is the same
        // for the same sources.
        run_cmd(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&path))?;
    }
    let mut listing = std::io::stderr().lock();
    let _ = writeln!(
        listing,
        "xtask dist: completions and man pages in {}",
        out.display()
    );
    Ok(())
}
