//! The lists the README and the docs give an operator are the lists the
//! code uses: event reasons and hooks, metadata endpoints, presets.

use std::collections::BTreeSet;

use egret::{baseline, policy::presets};
use egret_common::event::{hook, reason};

fn doc(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The paragraph of `text` that starts with `marker`, up to a blank line.
fn paragraph<'a>(text: &'a str, marker: &str) -> &'a str {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("no paragraph starting {marker:?}"));
    let rest = &text[start..];
    &rest[..rest.find("\n\n").unwrap_or(rest.len())]
}

/// Every word in backticks.
fn ticked(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Every name a code table gives for codes 1..=255, "unknown" aside.
fn names(name: fn(u8) -> &'static str) -> BTreeSet<String> {
    (1..=255)
        .map(name)
        .filter(|n| *n != "unknown")
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_lists_every_event_reason_the_code_emits() {
    let readme = doc("README.md");
    let listed = ticked(paragraph(&readme, "`reason` is one of"));
    for reason in names(reason::name) {
        assert!(
            listed.contains(&reason),
            "README's reason list lacks `{reason}`"
        );
    }
}

/// The README's example event is an event line the agent writes: it reads
/// back as the record, with the current schema and a real hook.
#[test]
fn the_readme_example_event_is_a_real_event_line() {
    let readme = doc("README.md");
    let hooks = names(hook::name);
    let example = paragraph(&readme, "```json\n{\"schema\"");
    let json = example
        .trim_start_matches("```json\n")
        .trim_end()
        .trim_end_matches("```");
    let record: egret::events::EventRecord =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("README example: {e}\n{json}"));
    assert_eq!(record.schema, egret::events::SCHEMA);
    assert!(
        hooks.contains(record.hook.as_ref()),
        "{} is not one of {hooks:?}",
        record.hook
    );
}

#[test]
fn the_readme_lists_every_metadata_endpoint() {
    let readme = doc("README.md");
    let listed = paragraph(&readme, "  2. **metadata**");
    for endpoint in baseline::METADATA {
        let address = endpoint.net.split('/').next().expect("address");
        assert!(
            listed.contains(address),
            "README's metadata list lacks {address}"
        );
        if endpoint.exempt_port != 0 {
            assert!(
                listed.contains(&format!("port {}", endpoint.exempt_port)),
                "README does not say {address} keeps port {}",
                endpoint.exempt_port
            );
        }
    }
}

#[test]
fn the_policy_reference_lists_every_embedded_preset() {
    let policy_doc = doc("docs/policy.md");
    let table = paragraph(&policy_doc, "| preset | covers |");
    let listed: BTreeSet<String> = table
        .lines()
        .skip(2)
        .flat_map(|row| ticked(row.split('|').nth(1).unwrap_or_default()))
        .collect();
    let embedded: BTreeSet<String> = presets::EMBEDDED
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    assert_eq!(listed, embedded, "docs/policy.md preset table");
}

/// Every test the threat model cites as evidence exists: `module::name`
/// is `fn name` in `tests/tests/module.rs`, and a bare name after it in the
/// same cell is in the same module.
#[test]
fn the_threat_model_cites_only_tests_that_exist() {
    let model = doc("docs/threat-model.md");
    let mut missing = Vec::new();
    let mut cited = 0;
    for row in model.lines().filter(|l| l.starts_with("| ")) {
        let evidence = row.trim_end_matches('|').rsplit('|').next().unwrap_or("");
        let mut module: Option<String> = None;
        for item in evidence.split('`').skip(1).step_by(2) {
            let name = match item.split_once("::") {
                Some((m, n)) if is_name(m) && is_name(n) => {
                    module = Some(m.to_owned());
                    n
                }
                None if is_name(item) && item.contains('_') => item,
                _ => continue,
            };
            let Some(module) = &module else {
                continue;
            };
            let file = format!("tests/tests/{module}.rs");
            let source =
                std::fs::read_to_string(format!("{}/../{file}", env!("CARGO_MANIFEST_DIR")))
                    .unwrap_or_default();
            cited += 1;
            if !source.contains(&format!("fn {name}(")) {
                missing.push(format!("{module}::{name}"));
            }
        }
    }
    assert!(cited > 20, "the threat model cites {cited} tests");
    assert!(
        missing.is_empty(),
        "cited but not in tests/tests: {missing:?}"
    );
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
