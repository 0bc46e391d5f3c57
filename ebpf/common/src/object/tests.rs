//! The committed object's check, on a tree shaped like the workspace.

use std::{fs, path::Path};

use super::*;

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// A workspace with sources, an object and the manifest of that object.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "ebpf/programs/src/main.rs", "fn main() {}\n");
    write(root, "ebpf/programs/Cargo.toml", "[package]\n");
    write(root, "ebpf/common/src/lib.rs", "pub const ABI: u32 = 4;\n");
    write(
        root,
        "ebpf/common/src/verdict/tests.rs",
        "#[test] fn t() {}\n",
    );
    write(root, "ebpf/common/src/object.rs", "// host code\n");
    write(
        root,
        TOOLCHAIN,
        "rust = \"nightly-2026-05-19\"\nbpf_linker = \"0.13.0\"\nllvm_major = 22\n",
    );
    write(root, OBJECT, "\x7fELF kernel programs");
    let manifest = Manifest {
        object_sha256: sha256_hex(b"\x7fELF kernel programs"),
        sources_sha256: sources_digest(root).unwrap(),
        ..Manifest::default()
    };
    write(root, MANIFEST, &serde_json::to_string(&manifest).unwrap());
    dir
}

#[test]
fn the_committed_object_passes_while_its_sources_are_unchanged() {
    let dir = workspace();
    assert_eq!(verified(dir.path()).unwrap(), b"\x7fELF kernel programs");
    // Neither tests nor host-only code reach the object.
    write(
        dir.path(),
        "ebpf/common/src/verdict/tests.rs",
        "// more tests\n",
    );
    write(dir.path(), "ebpf/common/src/object.rs", "// edited\n");
    write(
        dir.path(),
        "ebpf/programs/target/release/junk",
        "build output",
    );
    assert!(verified(dir.path()).is_ok());
    let pin = read_toolchain(dir.path()).unwrap();
    assert_eq!(
        (pin.rust.as_str(), pin.llvm_major),
        ("nightly-2026-05-19", 22)
    );
}

#[test]
fn an_edited_program_source_makes_the_object_stale() {
    for edited in [
        "ebpf/programs/src/main.rs",
        "ebpf/common/src/lib.rs",
        TOOLCHAIN,
        "ebpf/common/src/new.rs",
    ] {
        let dir = workspace();
        write(dir.path(), edited, "// changed\n");
        let err = verified(dir.path()).unwrap_err();
        assert!(matches!(err, ObjectError::Stale { .. }), "{edited}: {err}");
        assert!(
            err.to_string().contains("run `cargo xtask build-ebpf`"),
            "{err}"
        );
    }
}

#[test]
fn an_object_that_is_not_the_recorded_one_is_refused() {
    let dir = workspace();
    write(dir.path(), OBJECT, "\x7fELF something else");
    let err = verified(dir.path()).unwrap_err();
    assert!(matches!(err, ObjectError::HashMismatch { .. }), "{err}");
    fs::remove_file(dir.path().join(MANIFEST)).unwrap();
    assert!(matches!(verified(dir.path()), Err(ObjectError::Io { .. })));
}
