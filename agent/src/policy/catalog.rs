//! Every preset a policy can use while it is validated: the embedded
//! ones, replaced or extended by the policy directory's own.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use std::sync::Arc;

use super::*;

/// Every preset a policy can use: the embedded ones, replaced or extended
/// by the policy directory's own.
pub(super) struct Catalog {
    pub(super) presets: HashMap<String, Preset>,
}

pub(super) struct Preset {
    pub(super) file: PathBuf,
    /// sha256 of the preset's source: with its parameters and the
    /// policy's variables, what its expansion depends on.
    pub(super) digest: [u8; 32],
    pub(super) user: bool,
    pub(super) params: Vec<String>,
    /// The preset as parsed, shared with the parse cache: a large preset is
    /// never copied to be checked.
    pub(super) source: Arc<RawPreset>,
}

impl Catalog {
    /// The presets built into egret, parsed once per process.
    pub(super) fn embedded(diags: &mut Diagnostics) -> Self {
        /// The parsed presets, and what parsing them reported.
        type Parsed = (Vec<(PathBuf, Arc<RawPreset>, [u8; 32])>, Vec<Diagnostic>);
        static PARSED: std::sync::LazyLock<Parsed> = std::sync::LazyLock::new(|| {
            let mut diags = Diagnostics::default();
            let presets = presets::EMBEDDED
                .iter()
                .filter_map(|(name, source)| {
                    let file = presets::embedded_path(name);
                    let raw = parse::<RawPreset>(&file, source.as_bytes(), &mut diags)?;
                    Some((file, Arc::new(raw), super::cache::sha256(source.as_bytes())))
                })
                .collect();
            (presets, diags.list)
        });
        let (presets, problems) = &*PARSED;
        diags.list.extend(problems.iter().cloned());
        let mut catalog = Self {
            presets: HashMap::new(),
        };
        for (file, raw, digest) in presets {
            catalog.insert(file.clone(), raw.clone(), false, *digest);
        }
        catalog
    }

    pub(super) fn insert(
        &mut self,
        file: PathBuf,
        raw: Arc<RawPreset>,
        user: bool,
        digest: [u8; 32],
    ) {
        self.presets.insert(
            raw.preset.value.clone(),
            Preset {
                file,
                digest,
                user,
                params: raw.params.iter().map(|p| p.value.clone()).collect(),
                source: raw,
            },
        );
    }

    pub(super) fn add_user(
        &mut self,
        file: &Path,
        raw: Arc<RawPreset>,
        digest: [u8; 32],
        diags: &mut Diagnostics,
    ) {
        let name = raw.preset.value.clone();
        if !valid_runner_name(&name) {
            diags.error(
                raw.preset.referenced,
                format!("preset name '{name}' is invalid"),
            );
            return;
        }
        if raw.version.value == 0 {
            diags.error(
                raw.version.referenced,
                "preset version must be 1 or more".into(),
            );
            return;
        }
        if let Some(other) = self.presets.get(&name).filter(|p| p.user) {
            diags.error(
                raw.preset.referenced,
                format!(
                    "preset '{name}' is already defined in {}",
                    other.file.display()
                ),
            );
            return;
        }
        self.insert(file.to_owned(), raw, true, digest);
    }

    pub(super) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.presets.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}
