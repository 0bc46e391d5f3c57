//! Embeds the committed kernel object, `agent/ebpf/egret.bpf.o`, so that
//! building egret needs stable Rust only: no nightly, no bpf-linker, no
//! LLVM. The object must be the one its manifest records, built from the
//! sources as they are now; otherwise the build fails and says to run
//! `cargo xtask build-ebpf`, which rebuilds it with the pinned toolchain.

use std::{env, fs, path::PathBuf};

use egret_common::object;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    for watched in object::SOURCES
        .iter()
        .chain([&object::OBJECT, &object::MANIFEST])
    {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let bytes = match object::verified(&root) {
        Ok(bytes) => bytes,
        Err(e) => {
            // Cargo shows it as it is, then fails the build.
            println!("cargo::error={e}");
            return;
        }
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("egret-programs");
    if let Err(e) = fs::write(&out, bytes) {
        println!("cargo::error=cannot write {}: {e}", out.display());
    }
}
