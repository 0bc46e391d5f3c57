//! `cargo xtask build-ebpf`: rebuilds the committed kernel object with the
//! pinned toolchain, reproducibly (no path of the build machine ends up in
//! it), and writes its manifest. `--check` rebuilds it aside and fails when
//! the committed object is not what the sources build to.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use egret_common::object::{self, MANIFEST, Manifest, OBJECT};

use crate::{root, run_cmd, setup};

/// The programs read no `pt_regs`, so the object is the same for every
/// host architecture; aya-ebpf only wants the cfg set.
const BPF_TARGET_ARCH: &str = "x86_64";

pub fn build_ebpf(check: bool) -> Result<()> {
    let root = root()?;
    let pin = setup::pin(&root)?;
    setup::ebpf_toolchain(&pin)?;
    let target_dir = root.join("target/ebpf");
    let built = compile(&root, &pin.rust, &target_dir)?;
    let (linker, _) = setup::bpf_linker().context("bpf-linker vanished")?;
    let manifest = Manifest {
        object_sha256: object::sha256_hex(&built),
        sources_sha256: object::sources_digest(&root).map_err(|e| anyhow::anyhow!("{e}"))?,
        rustc: rustc_version(&pin.rust)?,
        bpf_linker: linker,
        llvm: setup::rustc_llvm(&pin.rust)?,
    };
    if check {
        let committed = std::fs::read(root.join(OBJECT)).unwrap_or_default();
        let recorded = object::read_manifest(&root).ok();
        if committed != built || recorded.as_ref() != Some(&manifest) {
            bail!(
                "the committed kernel object does not match its sources: {OBJECT} has sha256 {}, \
                 but {} with bpf-linker {} builds {} from the sources as they are (recorded: {:?}). \
                 Run `cargo xtask build-ebpf` and commit agent/ebpf/.",
                object::sha256_hex(&committed),
                manifest.rustc,
                manifest.bpf_linker,
                manifest.object_sha256,
                recorded
            );
        }
        eprintln!(
            "xtask build-ebpf --check: {OBJECT} is what the sources build to (sha256 {})",
            manifest.object_sha256
        );
        return Ok(());
    }
    std::fs::write(root.join(OBJECT), &built).context("write the object")?;
    let mut json = serde_json::to_string_pretty(&manifest).context("encode the manifest")?;
    json.push('\n');
    std::fs::write(root.join(MANIFEST), json).context("write the manifest")?;
    eprintln!(
        "xtask build-ebpf: wrote {OBJECT} (sha256 {}) and {MANIFEST}; commit both",
        manifest.object_sha256
    );
    Ok(())
}

fn rustc_version(toolchain: &str) -> Result<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-V"])
        .output()
        .context("rustc -V")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Builds the programs for the BPF target, as aya-build would, with every
/// path of this machine remapped: the workspace, cargo's home and the
/// toolchain's sysroot (build-std compiles `core` from it).
fn compile(root: &Path, toolchain: &str, target_dir: &Path) -> Result<Vec<u8>> {
    let sysroot = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .context("rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cargo",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
        )
    });
    let flags = [
        format!("--cfg=bpf_target_arch=\"{BPF_TARGET_ARCH}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        format!("--remap-path-prefix={}=/egret", root.display()),
        format!("--remap-path-prefix={cargo_home}=/cargo"),
        format!("--remap-path-prefix={sysroot}=/rustc"),
    ];
    run_cmd(
        Command::new("rustup")
            .current_dir(root)
            .args([
                "run",
                toolchain,
                "cargo",
                "build",
                "--package",
                "egret-ebpf",
            ])
            .args(["--bins", "--release", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--target-dir"])
            .arg(target_dir)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTFLAGS")
            .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f")),
    )?;
    let path = target_dir.join("bpfel-unknown-none/release/egret-programs");
    std::fs::read(&path).with_context(|| format!("read {}", path.display()))
}
