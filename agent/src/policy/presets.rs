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
