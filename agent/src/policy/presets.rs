//! Presets: named, versioned lists of allow entries for common services,
//! embedded in the binary. A policy directory can add its own, or override
//! an embedded one, with `*.preset.yaml` files.

use std::path::PathBuf;

/// (name, YAML source) of every embedded preset.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("alpine", include_str!("../../presets/alpine.yaml")),
    ("crates", include_str!("../../presets/crates.yaml")),
    ("debian", include_str!("../../presets/debian.yaml")),
    ("docker-hub", include_str!("../../presets/docker-hub.yaml")),
    ("ghcr", include_str!("../../presets/ghcr.yaml")),
    ("github", include_str!("../../presets/github.yaml")),
    (
        "github-actions-cache",
        include_str!("../../presets/github-actions-cache.yaml"),
    ),
    ("gitlab", include_str!("../../presets/gitlab.yaml")),
    ("gitlab-com", include_str!("../../presets/gitlab-com.yaml")),
    ("go-proxy", include_str!("../../presets/go-proxy.yaml")),
    (
        "maven-central",
        include_str!("../../presets/maven-central.yaml"),
    ),
    ("npm", include_str!("../../presets/npm.yaml")),
    ("nuget", include_str!("../../presets/nuget.yaml")),
    ("pypi", include_str!("../../presets/pypi.yaml")),
    ("quay", include_str!("../../presets/quay.yaml")),
    ("rubygems", include_str!("../../presets/rubygems.yaml")),
    ("ubuntu", include_str!("../../presets/ubuntu.yaml")),
];

/// Where a preset came from, for diagnostics.
pub fn embedded_path(name: &str) -> PathBuf {
    PathBuf::from(format!("<preset {name}>"))
}

/// Suffix of user preset files in a policy directory.
pub const USER_SUFFIX: &str = ".preset.yaml";

pub fn is_preset_file(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(USER_SUFFIX))
}

/// JSON Schemas of policy and preset files, for editors and CI.
pub const POLICY_SCHEMA: &str = include_str!("../../schema/policy.schema.json");
const PRESET_SCHEMA_BASE: &str = include_str!("../../schema/preset.schema.json");

/// The preset schema, self-contained: its allow entries are the policy
/// schema's, copied in so there is one definition and no cross-file `$ref`.
pub fn preset_schema() -> String {
    let policy: serde_json::Value = serde_json::from_str(POLICY_SCHEMA).unwrap_or_default();
    let mut preset: serde_json::Value =
        serde_json::from_str(PRESET_SCHEMA_BASE).unwrap_or_default();
    preset["$defs"]["entry"] = policy["$defs"]["entry"].clone();
    let mut text = serde_json::to_string_pretty(&preset).unwrap_or_default();
    text.push('\n');
    text
}

/// A preset as `egret presets` lists it.
pub struct Listed {
    pub name: String,
    pub source: String,
    pub origin: PathBuf,
    pub description: String,
    pub version: u64,
}

/// Every preset: the embedded ones, replaced or extended by the
/// `*.preset.yaml` files of a policy directory when one is given.
pub fn list(policy_dir: Option<&std::path::Path>) -> std::io::Result<Vec<Listed>> {
    let mut all: std::collections::BTreeMap<String, Listed> = std::collections::BTreeMap::new();
    let mut add = |origin: PathBuf, source: String| {
        let doc: serde_json::Value = serde_saphyr::from_str(&source).unwrap_or_default();
        let name = doc["preset"].as_str().unwrap_or_default().to_owned();
        if name.is_empty() {
            return;
        }
        all.insert(
            name.clone(),
            Listed {
                description: doc["description"].as_str().unwrap_or_default().to_owned(),
                version: doc["version"].as_u64().unwrap_or(0),
                name,
                source,
                origin,
            },
        );
    };
    for (name, source) in EMBEDDED {
        add(embedded_path(name), (*source).to_owned());
    }
    if let Some(dir) = policy_dir.filter(|d| d.is_dir()) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_preset_file(p))
            .collect();
        files.sort();
        for f in files {
            let source = std::fs::read_to_string(&f)?;
            add(f, source);
        }
    }
    Ok(all.into_values().collect())
}
