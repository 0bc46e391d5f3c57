//! Parsed policy files kept by their content, and preset expansions by
//! what they depend on, so a reload redoes only what changed: in a policy
//! directory where a large generated preset sits beside a small
//! hand-edited policy, an edit to the small one neither parses nor checks
//! the large one again.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use super::*;

/// What loads parsed and expanded. The agent keeps one across reloads;
/// `egret check` starts from an empty one.
#[derive(Default)]
pub struct PolicyCache {
    files: HashMap<PathBuf, Cached>,
    /// Large presets' pieces, by file.
    pieces: HashMap<PathBuf, Pieces>,
    pub(super) expansions: RefCell<Expansions>,
}

/// Preset expansions by what they depend on.
pub(super) type Expansions = HashMap<ExpansionKey, Expanded>;

/// What a preset's expansion depends on: the preset's source, its
/// parameters and the policy's variables (which its entries may name).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct ExpansionKey {
    preset: String,
    digest: [u8; 32],
    params: BTreeMap<String, String>,
    vars: BTreeMap<String, String>,
}

impl ExpansionKey {
    pub(super) fn new(
        preset: &str,
        digest: [u8; 32],
        params: &HashMap<String, String>,
        vars: &HashMap<String, String>,
    ) -> Self {
        Self {
            preset: preset.to_owned(),
            digest,
            params: params.clone().into_iter().collect(),
            vars: vars.clone().into_iter().collect(),
        }
    }
}

/// A preset's entries, and what checking them found (warnings, errors).
#[derive(Clone)]
pub(super) struct Expanded {
    pub(super) entries: Entries,
    pub(super) findings: Vec<Diagnostic>,
}

struct Cached {
    sha256: [u8; 32],
    doc: Doc,
}

enum Doc {
    Policy(RawPolicy),
    Preset(std::sync::Arc<RawPreset>),
}

/// Expansions kept at most: a bound, however many presets, parameters and
/// variables a policy goes through over the agent's life.
const MAX_EXPANSIONS: usize = 256;

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(bytes).into()
}

impl PolicyCache {
    /// A policy file as parsed before when its bytes are the same, else
    /// parsed now (and kept when it parses).
    pub(super) fn policy(
        &mut self,
        file: &Path,
        bytes: &[u8],
        diags: &mut Diagnostics,
    ) -> Option<RawPolicy> {
        self.parsed(
            file,
            bytes,
            |d| match d {
                Doc::Policy(raw) => Some(raw.clone()),
                Doc::Preset(_) => None,
            },
            |_| parse::<RawPolicy>(file, bytes, diags),
            |raw| (Doc::Policy(raw.clone()), raw),
        )
    }

    /// As [`Self::policy`], for a `*.preset.yaml` file, shared rather than
    /// copied. A large one is parsed in pieces ([`Pieces`]), and an edit
    /// parses again only the pieces it touched.
    pub(super) fn preset(
        &mut self,
        file: &Path,
        bytes: &[u8],
        diags: &mut Diagnostics,
    ) -> Option<std::sync::Arc<RawPreset>> {
        self.parsed(
            file,
            bytes,
            |d| match d {
                Doc::Preset(raw) => Some(raw.clone()),
                Doc::Policy(_) => None,
            },
            |cache| {
                std::str::from_utf8(bytes)
                    .ok()
                    .filter(|text| {
                        text.len() >= pieces::MIN_BYTES && first_tab_indent(text).is_none()
                    })
                    .and_then(|text| cache.pieces.entry(file.to_owned()).or_default().parse(text))
                    .or_else(|| parse::<RawPreset>(file, bytes, diags))
            },
            |raw| {
                let raw = std::sync::Arc::new(raw);
                (Doc::Preset(raw.clone()), raw)
            },
        )
    }

    /// What `take` finds kept for `file` when its bytes are unchanged;
    /// otherwise what `parse` makes of it, kept as `keep` says.
    fn parsed<T, R>(
        &mut self,
        file: &Path,
        bytes: &[u8],
        take: impl FnOnce(&Doc) -> Option<R>,
        parse: impl FnOnce(&mut Self) -> Option<T>,
        keep: impl FnOnce(T) -> (Doc, R),
    ) -> Option<R> {
        let sha256 = sha256(bytes);
        if let Some(hit) = self
            .files
            .get(file)
            .filter(|c| c.sha256 == sha256)
            .and_then(|c| take(&c.doc))
        {
            return Some(hit);
        }
        let (doc, out) = keep(parse(self)?);
        self.files.insert(file.to_owned(), Cached { sha256, doc });
        Some(out)
    }

    /// Forgets files no longer part of the policy, and expansions of
    /// presets whose source is no longer any file's (embedded presets stay:
    /// there are few, and they never change).
    pub(super) fn retain(&mut self, sources: &[(PathBuf, Vec<u8>)]) {
        self.files
            .retain(|file, _| sources.iter().any(|(f, _)| f == file));
        self.pieces
            .retain(|file, _| sources.iter().any(|(f, _)| f == file));
        let mut expansions = self.expansions.borrow_mut();
        if expansions.len() > MAX_EXPANSIONS {
            expansions.clear();
        }
    }
}
