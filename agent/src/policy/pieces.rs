//! A large preset parsed in pieces, each kept by its text and place, so a
//! one-line edit to a generated list of thousands of entries parses the few
//! hundred around it, not the whole file.
//!
//! Only the plainest layout is split: one top-level `allow:` line with a
//! block list under it, and no directives or document markers. Each piece
//! is parsed as a document of its own, padded with empty lines so that
//! every location in it is the one in the file. A construct cut at a
//! piece's edge (a quoted string or flow list running on, an alias of an
//! anchor in another piece) fails to parse where it opens, and any failure
//! means the whole file is parsed instead: the result, and every message,
//! is then the whole parse's.

use std::{collections::HashMap, sync::Arc};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{RawAllow, RawPreset, cache::sha256};

/// Smaller files parse whole: splitting them saves nothing worth having.
pub(super) const MIN_BYTES: usize = 64 * 1024;

/// List items per piece: an edit re-parses this many entries, and a file
/// parsed from scratch pays one padded document per piece.
const ITEMS_PER_PIECE: usize = 500;

/// The pieces of one file's last parse, by their text and first line.
#[derive(Default)]
pub(super) struct Pieces {
    kept: HashMap<[u8; 32], Arc<Vec<Spanned<RawAllow>>>>,
    /// Pieces the last [`Pieces::parse`] had to parse (the rest were kept).
    pub(super) parsed_last: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Piece {
    allow: Vec<Spanned<RawAllow>>,
}

/// Where the list lies: the `allow:` line, the first line of each item and
/// the line after the list (0-based).
struct Layout {
    allow_line: usize,
    items: Vec<usize>,
    end: usize,
}

impl Pieces {
    /// `text` as a preset, or `None` when its layout is not the plain one
    /// or any part of it does not parse: the caller then parses it whole.
    pub(super) fn parse(&mut self, text: &str) -> Option<RawPreset> {
        self.parse_in(text, ITEMS_PER_PIECE)
    }

    fn parse_in(&mut self, text: &str, per_piece: usize) -> Option<RawPreset> {
        let lines: Vec<&str> = text.split('\n').collect();
        let layout = layout(&lines)?;
        let frame: String = lines
            .iter()
            .enumerate()
            .map(|(i, line)| match i {
                i if i == layout.allow_line => "allow: []",
                i if i > layout.allow_line && i < layout.end => "",
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let mut raw: RawPreset = serde_saphyr::from_str(&frame).ok()?;
        let mut kept = HashMap::new();
        let mut parsed = 0;
        let starts: Vec<usize> = layout.items.iter().step_by(per_piece).copied().collect();
        for (n, &start) in starts.iter().enumerate() {
            let stop = starts.get(n + 1).copied().unwrap_or(layout.end);
            let body = lines[start..stop].join("\n");
            let mut keyed = (start as u64).to_le_bytes().to_vec();
            keyed.extend_from_slice(body.as_bytes());
            let key = sha256(&keyed);
            let entries = match self.kept.get(&key) {
                Some(entries) => entries.clone(),
                None => {
                    parsed += 1;
                    Arc::new(parse_piece(start, &body)?)
                }
            };
            raw.allow.extend(entries.iter().cloned());
            kept.insert(key, entries);
        }
        self.kept = kept;
        self.parsed_last = parsed;
        Some(raw)
    }
}

/// The entries of the lines from `start` (0-based) in `body`, at their
/// places in the file: an `allow:` key on the line before, and before that
/// empty lines.
fn parse_piece(start: usize, body: &str) -> Option<Vec<Spanned<RawAllow>>> {
    let mut doc = "\n".repeat(start.saturating_sub(1));
    doc.push_str("allow:\n");
    doc.push_str(body);
    serde_saphyr::from_str::<Piece>(&doc).ok().map(|p| p.allow)
}

fn is_item(rest: &str) -> bool {
    rest.starts_with("- ") || rest.trim_end() == "-"
}

fn layout(lines: &[&str]) -> Option<Layout> {
    if lines
        .iter()
        .any(|l| l.starts_with('%') || l.starts_with("---") || l.starts_with("..."))
    {
        return None;
    }
    let mut allow = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_end() == "allow:");
    let (allow_line, _) = allow.next()?;
    if allow.next().is_some() {
        return None;
    }
    let mut indent = None;
    let mut items = Vec::new();
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate().skip(allow_line + 1) {
        let rest = line.trim_start_matches(' ');
        if rest.trim_end().is_empty() || rest.starts_with('#') {
            continue;
        }
        let at = line.len() - rest.len();
        let list_indent = *indent.get_or_insert(at);
        if at < list_indent || (at == list_indent && !is_item(rest)) {
            end = i;
            break;
        }
        if at == list_indent {
            items.push(i);
        }
    }
    (!items.is_empty()).then_some(Layout {
        allow_line,
        items,
        end,
    })
}

#[cfg(test)]
mod tests;
