//! Policy files: read and validate them into a [`Policy`]; `crate::compile`
//! turns that into map entries.
//!
//! The YAML crate stays inside this module. Everything that leaves it is
//! either a validated [`Policy`] or a list of [`Diagnostic`]s, each naming the
//! file, line and column of the problem.

mod cache;
mod catalog;
mod diagnostics;
mod entries;
mod files;
mod model;
mod pieces;
pub mod presets;
mod raw;
mod slice;
pub use slice::slice_cgroup;
mod validate;
mod vars;
mod wildcard;

use std::path::{Path, PathBuf};

use catalog::*;
use diagnostics::*;
use entries::*;
use pieces::Pieces;
use raw::*;
use validate::*;
use vars::*;
use wildcard::*;

pub use cache::PolicyCache;
pub use diagnostics::{Diagnostic, Severity};
pub use entries::{merge_ranges, validate_hostname};
pub use files::{MAX_FILE_BYTES, digest, policy_files};
pub use model::*;
pub use validate::{validate, validate_with};
pub use wildcard::{rules_for, wildcard_allowed_quietly};

pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no *.yaml policy files in this directory")]
    EmptyDirectory { path: PathBuf },
    /// Every diagnostic found, the warnings among them.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

/// A successfully loaded policy, with any warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
    pub files: Vec<PathBuf>,
    /// `sha256:<hex>` over every file's name and bytes, in order.
    pub digest: String,
}

/// Loads a policy file, or every `*.yaml`/`*.yml` file of a directory.
pub fn load(path: &Path) -> Result<Loaded, PolicyError> {
    load_with(path, &mut PolicyCache::default())
}

/// [`load`], parsing only the files whose bytes `cache` has not seen: what
/// the agent's reloads use.
pub fn load_with(path: &Path, cache: &mut PolicyCache) -> Result<Loaded, PolicyError> {
    let files = policy_files(path)?;
    let mut sources = Vec::with_capacity(files.len());
    for file in &files {
        let meta = std::fs::metadata(file).map_err(|source| PolicyError::Io {
            path: file.clone(),
            source,
        })?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(PolicyError::Invalid(vec![Diagnostic {
                file: file.clone(),
                line: 0,
                column: 0,
                severity: Severity::Error,
                message: format!(
                    "file is {} bytes; policy files are limited to {MAX_FILE_BYTES} bytes",
                    meta.len()
                ),
            }]));
        }
        let bytes = std::fs::read(file).map_err(|source| PolicyError::Io {
            path: file.clone(),
            source,
        })?;
        sources.push((file.clone(), bytes));
    }
    let digest = digest(&sources);
    let (policy, diagnostics) = validate_with(&sources, cache);
    let has_errors = diagnostics.iter().any(|d| d.severity == Severity::Error);
    match policy {
        Some(policy) if !has_errors => Ok(Loaded {
            policy,
            warnings: diagnostics,
            files,
            digest,
        }),
        // The warnings stay beside the errors, in file order: `egret check`
        // shows both.
        _ => Err(PolicyError::Invalid(diagnostics)),
    }
}

#[cfg(test)]
mod tests;
