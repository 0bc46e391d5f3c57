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
