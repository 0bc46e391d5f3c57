//! Every preset a policy can use while it is validated: the embedded
//! ones, replaced or extended by the policy directory's own.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde_saphyr::Spanned;

use super::*;

/// Every preset a policy can use: the embedded ones, replaced or extended
/// by the policy directory's own.
pub(super) struct Catalog {
    pub(super) presets: HashMap<String, Preset>,
}

pub(super) struct Preset {
    pub(super) file: PathBuf,
    pub(super) user: bool,
    pub(super) params: Vec<String>,
    pub(super) allow: Vec<Spanned<RawAllow>>,
}

impl Catalog {
    pub(super) fn embedded(diags: &mut Diagnostics) -> Self {
        let mut catalog = Self {
            presets: HashMap::new(),
        };
        for (name, source) in presets::EMBEDDED {
            let file = presets::embedded_path(name);
            if let Some(raw) = parse::<RawPreset>(&file, source.as_bytes(), diags) {
                catalog.insert(file, raw, false);
            }
        }
        catalog
    }

    pub(super) fn insert(&mut self, file: PathBuf, raw: RawPreset, user: bool) {
        self.presets.insert(
            raw.preset.value.clone(),
            Preset {
                file,
                user,
                params: raw.params.into_iter().map(|p| p.value).collect(),
                allow: raw.allow,
            },
        );
    }

    pub(super) fn add_user(&mut self, file: &Path, raw: RawPreset, diags: &mut Diagnostics) {
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
        self.insert(file.to_owned(), raw, true);
    }

    pub(super) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.presets.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}
