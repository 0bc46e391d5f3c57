use std::fmt::Write as _;

use serde_saphyr::Spanned;

use super::*;

/// Every value of every entry with the line and column it was read at.
fn render(raw: &RawPreset) -> String {
    fn at<T: std::fmt::Debug>(out: &mut String, name: &str, v: &Option<Spanned<T>>) {
        if let Some(v) = v {
            let (l, c) = (v.referenced.line(), v.referenced.column());
            let _ = write!(out, " {name}={:?}@{l}:{c}", v.value);
        }
    }
    let mut out = format!(
        "preset={}@{} params={:?}\n",
        raw.preset.value,
        raw.preset.referenced.line(),
        raw.params.iter().map(|p| &p.value).collect::<Vec<_>>()
    );
    for e in &raw.allow {
        let _ = write!(out, "- @{}:{}", e.referenced.line(), e.referenced.column());
        let a = &e.value;
        at(&mut out, "cidr", &a.cidr);
        at(&mut out, "host", &a.host);
        at(&mut out, "preset", &a.preset);
        at(&mut out, "proto", &a.proto);
        at(&mut out, "forge", &a.forge);
        at(&mut out, "private_answers", &a.private_answers);
        at(&mut out, "multitenant", &a.i_understand_multitenant);
        if let Some(with) = &a.with {
            let _ = write!(out, " with@{}", with.referenced.line());
            for (k, v) in &with.value {
                let _ = write!(out, " {k}={}@{}", v.value, v.referenced.line());
            }
        }
        if let Some(ports) = &a.ports {
            for p in &ports.value {
                let _ = write!(
                    out,
                    " port={}-{}@{}:{}",
                    p.value.first,
                    p.value.last,
                    p.referenced.line(),
                    p.referenced.column()
                );
            }
        }
        out.push('\n');
    }
    out
}

fn whole(text: &str) -> RawPreset {
    serde_saphyr::from_str(text).expect("the whole file parses")
}

/// A generated preset with entries of every shape, `n` of them.
fn generated(n: usize, indent: &str) -> String {
    let mut text = String::from(
        "# generated\npreset: partner-ranges\nversion: 1\ndescription: \"many ranges\"\nallow:\n",
    );
    for i in 0..n {
        let _ = match i % 4 {
            0 => write!(
                text,
                "{indent}- cidr: 11.{}.{}.0/24\n{indent}  ports: [443, \"8000-8100\"]\n",
                i / 256,
                i % 256
            ),
            1 => write!(
                text,
                "{indent}- host: h{i}.example.com\n{indent}  ports:\n{indent}    - 443\n{indent}  proto: tcp\n\n"
            ),
            2 => write!(
                text,
                "{indent}# a comment\n{indent}- {{cidr: 12.0.{}.0/24, forge: true}}\n",
                i % 256
            ),
            _ => write!(
                text,
                "{indent}-\n{indent}  host: \"q{i}.example.com\"\n{indent}  private_answers: false\n"
            ),
        };
    }
    text.push_str("params:\n  - host\n");
    text
}

#[test]
fn pieces_read_exactly_what_the_whole_file_says() {
    for indent in ["", "  ", "    "] {
        let text = generated(1_003, indent);
        let mut pieces = Pieces::default();
        let split = pieces
            .parse_in(&text, 100)
            .expect("the plain layout splits");
        assert_eq!(pieces.parsed_last, 11, "every piece parsed the first time");
        assert_eq!(render(&split), render(&whole(&text)), "indent {indent:?}");
        assert_eq!(split.allow.len(), 1_003);
    }
}

#[test]
fn an_edit_parses_again_only_the_piece_it_touched() {
    let text = generated(1_000, "  ");
    let mut pieces = Pieces::default();
    pieces.parse_in(&text, 100).expect("splits");
    let edited = text.replace("11.1.244.0/24", "11.1.244.0/25");
    assert_ne!(edited, text);
    let split = pieces.parse_in(&edited, 100).expect("splits");
    assert_eq!(pieces.parsed_last, 1);
    assert_eq!(render(&split), render(&whole(&edited)));
    // An entry added at the end touches the last piece only.
    let appended = edited.replace("params:", "  - cidr: 13.0.0.0/8\nparams:");
    let split = pieces.parse_in(&appended, 100).expect("splits");
    assert_eq!(pieces.parsed_last, 1);
    assert_eq!(render(&split), render(&whole(&appended)));
    // A line inserted near the top moves every entry after it: their
    // locations must move too.
    let inserted = appended.replacen("allow:\n", "allow:\n  - cidr: 14.0.0.0/8\n", 1);
    let split = pieces.parse_in(&inserted, 100).expect("splits");
    assert_eq!(render(&split), render(&whole(&inserted)));
}

#[test]
fn anything_cut_at_a_piece_edge_parses_the_whole_file() {
    let base = generated(200, "  ");
    // An alias of an anchor in another piece.
    let alias = base
        .replacen("- cidr: 11.0.0.0/24", "- cidr: &first 11.0.0.0/24", 1)
        .replace("- cidr: 11.0.196.0/24", "- cidr: *first");
    // A flow list running on past the next item's dash.
    let flow = base.replacen(
        "  - cidr: 11.0.100.0/24\n    ports: [443, \"8000-8100\"]\n",
        "  - cidr: 11.0.100.0/24\n    ports: [443,\n  - 80]\n",
        1,
    );
    let unsplittable = [
        ("an alias across pieces", alias),
        ("a flow list across an item line", flow),
        ("a directive", format!("%YAML 1.2\n---\n{base}")),
        (
            "two allow keys",
            format!("{base}allow:\n  - cidr: 1.0.0.0/8\n"),
        ),
        (
            "an unknown key in an entry",
            base.replacen("proto: tcp", "protocol: tcp", 1),
        ),
        ("no list", "preset: p\nversion: 1\nallow: []\n".to_owned()),
    ];
    for (what, text) in unsplittable {
        let mut pieces = Pieces::default();
        assert!(pieces.parse_in(&text, 50).is_none(), "{what}");
    }
}

#[test]
fn a_large_preset_with_a_mistake_is_reported_at_its_line() {
    let mut text = generated(4_000, "  ");
    assert!(text.len() >= MIN_BYTES);
    text = text.replacen("11.3.0.0/24", "11.3.0.0/33", 1);
    let line = text
        .lines()
        .position(|l| l.contains("11.3.0.0/33"))
        .unwrap() as u64
        + 1;
    let sources = vec![
        (std::path::PathBuf::from("big.preset.yaml"), text.into_bytes()),
        (
            std::path::PathBuf::from("policy.yaml"),
            b"version: 1\nrunners:\n  - name: ci\n    cgroup: /ci\n    allow:\n      - preset: partner-ranges\n        with: {host: h.example.com}\n".to_vec(),
        ),
    ];
    let (_, diags) = crate::policy::validate(&sources);
    let bad: Vec<_> = diags
        .iter()
        .filter(|d| d.severity == crate::policy::Severity::Error)
        .collect();
    assert!(
        bad.iter()
            .any(|d| d.file.ends_with("big.preset.yaml") && d.line == line),
        "{diags:?}"
    );
}
