//! The committed kernel object: where it lives, the manifest that says what
//! it was built from, and the check that it still matches its sources.
//!
//! The agent embeds `agent/ebpf/egret.bpf.o`, built once by `cargo xtask
//! build-ebpf` with the toolchain pinned in `ebpf/toolchain.toml`, so that
//! building egret needs stable Rust only. The agent's build script refuses
//! an object whose hash or sources no longer match its manifest.

extern crate std;

use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
    string::{String, ToString},
    vec::Vec,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Paths relative to the workspace root.
pub const OBJECT: &str = "agent/ebpf/egret.bpf.o";
pub const MANIFEST: &str = "agent/ebpf/egret.bpf.json";
pub const TOOLCHAIN: &str = "ebpf/toolchain.toml";
/// What the object is built from: every file below these, but tests, which
/// never reach the object, and this module, which is host code.
pub const SOURCES: &[&str] = &["ebpf/programs", "ebpf/common", TOOLCHAIN];

/// What `cargo xtask build-ebpf` writes beside the object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// sha256 of the object, hex.
    pub object_sha256: String,
    /// [`sources_digest`] when it was built.
    pub sources_sha256: String,
    /// The toolchain that built it: `rustc -V`, `bpf-linker --version` and
    /// the LLVM version rustc reports.
    pub rustc: String,
    pub bpf_linker: String,
    pub llvm: String,
}

/// The toolchain pin, `ebpf/toolchain.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Toolchain {
    /// A dated nightly, e.g. `nightly-2026-05-19`.
    pub rust: String,
    pub bpf_linker: String,
    /// The LLVM major version both rustc and bpf-linker must use.
    pub llvm_major: u32,
}

/// Why the committed object cannot be used.
#[derive(Debug)]
pub enum ObjectError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Manifest {
        path: PathBuf,
        error: String,
    },
    /// The object is not the one the manifest describes.
    HashMismatch {
        recorded: String,
        actual: String,
    },
    /// The sources changed since the object was built.
    Stale {
        recorded: String,
        actual: String,
    },
}

impl core::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Manifest { path, error } => write!(f, "{}: {error}", path.display()),
            Self::HashMismatch { recorded, actual } => write!(
                f,
                "{OBJECT} has sha256 {actual}, but {MANIFEST} records {recorded}: the object was \
                 changed by hand or half-committed; run `cargo xtask build-ebpf` and commit agent/ebpf/"
            ),
            Self::Stale { recorded, actual } => write!(
                f,
                "the kernel programs' sources ({}) changed since {OBJECT} was built (sources \
                 {actual}, the object was built from {recorded}): run `cargo xtask build-ebpf` \
                 (it installs the pinned toolchain when missing) and commit agent/ebpf/",
                SOURCES.join(", ")
            ),
        }
    }
}

impl std::error::Error for ObjectError {}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(Sha256::digest(bytes))
}

fn hex(digest: impl IntoIterator<Item = u8>) -> String {
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Whether a source file under [`SOURCES`] can change the object.
fn counts(relative: &str) -> bool {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    !(name == "tests.rs"
        || relative
            .split('/')
            .any(|part| part == "tests" || part == "target")
        || relative == "ebpf/common/src/object.rs")
}

/// sha256 over every file that goes into the object, by path relative to
/// `root` and content, in path order: the same on every machine and
/// checkout.
pub fn sources_digest(root: &Path) -> Result<String, ObjectError> {
    let mut files: Vec<String> = Vec::new();
    for source in SOURCES {
        collect(root, &root.join(source), &mut files)?;
    }
    files.sort();
    let mut hasher = Sha256::new();
    for rel in &files {
        let path = root.join(rel);
        let bytes = std::fs::read(&path).map_err(|source| ObjectError::Io { path, source })?;
        hasher.update(rel.as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hex(hasher.finalize()))
}

fn collect(root: &Path, path: &Path, out: &mut Vec<String>) -> Result<(), ObjectError> {
    let io = |source| ObjectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/");
        if counts(&rel) {
            out.push(rel);
        }
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let child = entry.path();
        let rel = child
            .strip_prefix(root)
            .unwrap_or(&child)
            .to_string_lossy()
            .to_string();
        if counts(&rel) {
            collect(root, &child, out)?;
        }
    }
    Ok(())
}

pub fn read_manifest(root: &Path) -> Result<Manifest, ObjectError> {
    read_as(root, MANIFEST, |text| {
        serde_json::from_str(text).map_err(|e| e.to_string())
    })
}

pub fn read_toolchain(root: &Path) -> Result<Toolchain, ObjectError> {
    read_as(root, TOOLCHAIN, |text| {
        toml::from_str(text).map_err(|e| e.to_string())
    })
}

/// The file at `relative`, read and parsed.
fn read_as<T>(
    root: &Path,
    relative: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ObjectError> {
    let path = root.join(relative);
    let text = std::fs::read_to_string(&path).map_err(|source| ObjectError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&text).map_err(|error| ObjectError::Manifest { path, error })
}

/// The committed object's bytes, once its hash and its sources are checked
/// against the manifest.
pub fn verified(root: &Path) -> Result<Vec<u8>, ObjectError> {
    let manifest = read_manifest(root)?;
    let path = root.join(OBJECT);
    let object = std::fs::read(&path).map_err(|source| ObjectError::Io { path, source })?;
    let actual = sha256_hex(&object);
    if actual != manifest.object_sha256 {
        return Err(ObjectError::HashMismatch {
            recorded: manifest.object_sha256,
            actual,
        });
    }
    let sources = sources_digest(root)?;
    if sources != manifest.sources_sha256 {
        return Err(ObjectError::Stale {
            recorded: manifest.sources_sha256,
            actual: sources,
        });
    }
    Ok(object)
}

#[cfg(test)]
mod tests;
