//! Builds the kernel programs (ebpf/programs) for bpfel-unknown-none with the
//! nightly toolchain and bpf-linker, and leaves the object in OUT_DIR for the
//! agent to embed.
//!
//! `EGRET_EBPF_STUB=1` writes an empty object instead, so `cargo check` and
//! clippy work on a machine without that toolchain; such a binary refuses to
//! start the agent and says why.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const STUB_VAR: &str = "EGRET_EBPF_STUB";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={STUB_VAR}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("egret-programs");

    if env::var(STUB_VAR).is_ok_and(|v| v == "1") {
        println!(
            "cargo:warning={STUB_VAR}=1: building without kernel programs; `egret agent` will refuse to run"
        );
        fs::write(&object, []).context("writing the stub eBPF object")?;
        return Ok(());
    }
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH. Run `cargo xtask setup` to install the eBPF toolchain, \
             or set {STUB_VAR}=1 for a check-only build without kernel programs."
        ));
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "egret-ebpf")
        .context("package egret-ebpf not in the workspace")?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .context("egret-ebpf manifest has no parent")?
        .as_str()
        .to_owned();
    // Track every source file so an edit to the programs or the shared ABI
    // rebuilds the object.
    for dir in [
        format!("{root_dir}/src"),
        format!("{root_dir}/../common/src"),
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

fn which_bpf_linker() -> Option<PathBuf> {
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join("bpf-linker"))
            .find(|candidate| candidate.is_file())
    })
}
