//! Every shipped policy example is valid, warns only where it says so, and
//! validates against the JSON Schema `egret schema` prints.

use std::path::{Path, PathBuf};

use egret::policy::{self, Severity, presets};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("policy-examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    files
}

fn as_json(path: &Path) -> serde_json::Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).expect("read")).expect("yaml")
}

#[test]
fn every_example_is_valid() {
    for file in examples() {
        let loaded = policy::load(&file).unwrap_or_else(|e| panic!("{}:\n{e}", file.display()));
        assert!(!loaded.policy.runners.is_empty(), "{}", file.display());
        for w in &loaded.warnings {
            assert_eq!(w.severity, Severity::Warning);
            assert!(
                w.message.contains("audit mode"),
                "unexpected warning in an example: {w}"
            );
        }
    }
}

#[test]
fn every_example_validates_against_the_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(presets::POLICY_SCHEMA).expect("schema json");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for file in examples() {
        let doc = as_json(&file);
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
}

#[test]
fn the_schema_rejects_what_check_rejects() {
    let schema: serde_json::Value =
        serde_json::from_str(presets::POLICY_SCHEMA).expect("schema json");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for bad in [
        "version: 2\n",
        "runners: []\n",
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    alow: []\n",
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - ports: [443]\n",
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 10.0.0.0/8\n        ports: [70000]\n",
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    mode: learn\n",
    ] {
        let doc: serde_json::Value = serde_saphyr::from_str(bad).expect("yaml");
        assert!(!validator.is_valid(&doc), "schema accepted: {bad}");
        let (_, diags) = policy::validate(&[(PathBuf::from("p.yaml"), bad.as_bytes().to_vec())]);
        assert!(
            diags.iter().any(|d| d.severity == Severity::Error),
            "check accepted: {bad}"
        );
    }
}

#[test]
fn every_embedded_preset_validates_against_the_preset_schema() {
    let schema: serde_json::Value = serde_json::from_str(&presets::preset_schema()).expect("json");
    let validator = jsonschema::validator_for(&schema).expect("preset schema compiles");
    for (name, source) in presets::EMBEDDED {
        let doc: serde_json::Value = serde_saphyr::from_str(source).expect("yaml");
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "preset {name}: {errors:?}");
    }
    let bad: serde_json::Value =
        serde_saphyr::from_str("preset: x\nversion: 1\nallow:\n  - hots: a.example\n")
            .expect("yaml");
    assert!(!validator.is_valid(&bad));
}
