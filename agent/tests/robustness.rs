//! The policy parser never panics and never hangs, whatever it is fed.

use std::{path::PathBuf, sync::mpsc, time::Duration};

use egret::policy::{self, PolicyError, Severity};
use proptest::prelude::*;

fn compile(bytes: Vec<u8>) -> Vec<policy::Diagnostic> {
    policy::validate(&[(PathBuf::from("p.yaml"), bytes)]).1
}

/// Runs `f` on its own thread and fails the test if it does not finish: a
/// hang is the bug, so the bound is generous rather than a performance claim.
fn finishes<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || tx.send(f()).ok())
        .expect("spawn");
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} did not finish"))
}

const TOKENS: &[&str] = &[
    "version",
    "runners",
    "name",
    "cgroup",
    "allow",
    "cidr",
    "host",
    "ports",
    "proto",
    "preset",
    "with",
    "vars",
    "mode",
    "dns",
    "upstream",
    ":",
    ": ",
    "- ",
    "\n",
    "  ",
    "\t",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "<<: ",
    "!!str ",
    "'",
    "\"",
    "#",
    "1",
    "70000",
    "-1",
    "10.0.0.0/8",
    "*.com",
    "${X}",
    "---\n",
    "...",
    "\u{0}",
    "\u{feff}",
    "é",
    "\\",
    "?",
    "|",
    ">",
    "%YAML 1.2\n",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = compile(bytes);
    }

    #[test]
    fn yaml_shaped_soup_never_panics(parts in proptest::collection::vec(proptest::sample::select(TOKENS), 0..120)) {
        let text: String = parts.concat();
        let diags = compile(text.into_bytes());
        for d in diags {
            prop_assert!(!d.message.is_empty());
        }
    }

    #[test]
    fn mutated_valid_policies_never_panic(cut in 0usize..400, insert in proptest::sample::select(TOKENS)) {
        let base = "version: 1\nvars:\n  X: a.example\nrunners:\n  - name: ci\n    cgroup: /egret.slice/ci\n    allow:\n      - host: ${X}\n        ports: [443, \"8000-8100\"]\n      - cidr: 203.0.113.0/24\n        proto: tcp\n      - preset: gitlab\n        with: {host: g.example}\n";
        let at = cut.min(base.len());
        let at = (0..=at).rev().find(|i| base.is_char_boundary(*i)).unwrap_or(0);
        let text = format!("{}{}{}", &base[..at], insert, &base[at..]);
        let _ = compile(text.into_bytes());
    }
}

#[test]
fn alias_bombs_are_refused() {
    // Ten aliases per level over twelve levels: 10^12 ports if expanded.
    let mut bomb = String::from(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 10.0.0.0/8\n        ports: &p0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n",
    );
    for level in 1..12 {
        let refs = vec![format!("*p{}", level - 1); 10].join(", ");
        bomb.push_str(&format!(
            "      - cidr: 10.0.0.0/{}\n        ports: &p{level} [{refs}]\n",
            8 + level
        ));
    }
    let diags = finishes("an alias bomb", move || compile(bomb.into_bytes()));
    assert!(
        diags.iter().any(|d| d.severity == Severity::Error),
        "{diags:?}"
    );
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let depth = 200_000;
    let text = format!(
        "version: 1\nrunners: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let diags = finishes("deep nesting", move || compile(text.into_bytes()));
    assert!(
        diags.iter().any(|d| d.severity == Severity::Error),
        "{diags:?}"
    );
}

#[test]
fn an_oversized_file_is_refused_before_parsing() {
    let path = std::env::temp_dir().join(format!("egret-huge-{}.yaml", std::process::id()));
    let mut text = String::from("version: 1\nrunners:\n");
    while text.len() <= policy::MAX_FILE_BYTES as usize {
        text.push_str(
            "# padding padding padding padding padding padding padding padding padding\n",
        );
    }
    std::fs::write(&path, &text).expect("write");
    let result = policy::load(&path);
    std::fs::remove_file(&path).expect("remove");
    let Err(PolicyError::Invalid(d)) = result else {
        panic!("accepted a huge file")
    };
    assert_eq!(
        d[0].to_string(),
        format!(
            "{}:1:1: error: file is {} bytes; policy files are limited to {} bytes",
            path.display(),
            text.len(),
            policy::MAX_FILE_BYTES
        )
    );
}

#[test]
fn many_runners_and_entries_stay_fast_enough_to_finish() {
    let mut text = String::from("version: 1\nrunners:\n");
    for r in 0..200 {
        text.push_str(&format!(
            "  - name: r{r}\n    cgroup: /egret.slice/r{r}\n    allow:\n"
        ));
        for e in 0..50 {
            text.push_str(&format!(
                "      - cidr: 11.{r}.{e}.0/24\n        ports: [443]\n"
            ));
        }
    }
    let diags = finishes("a large policy", move || compile(text.into_bytes()));
    assert!(diags.is_empty(), "{diags:?}");
}
