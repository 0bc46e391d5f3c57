//! Problems found in policy files, each naming file, line and column,
//! and the "did you mean" hints that go with them.

use std::{fmt, path::PathBuf};

use serde_saphyr::Location;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Warning => "warning",
            Self::Error => "error",
        })
    }
}

/// One problem found in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file as a whole.
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line.max(1),
            self.column.max(1),
            self.severity,
            self.message
        )
    }
}

pub(super) fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Default)]
pub(super) struct Diagnostics {
    pub(super) file: PathBuf,
    pub(super) list: Vec<Diagnostic>,
}

impl Diagnostics {
    pub(super) fn push(&mut self, at: Location, severity: Severity, message: String) {
        self.list.push(Diagnostic {
            file: self.file.clone(),
            line: at.line(),
            column: at.column(),
            severity,
            message,
        });
    }
    pub(super) fn error(&mut self, at: Location, message: String) {
        self.push(at, Severity::Error, message);
    }
    pub(super) fn warning(&mut self, at: Location, message: String) {
        self.push(at, Severity::Warning, message);
    }
}

pub(super) fn error_count(diags: &Diagnostics) -> usize {
    diags
        .list
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
}

/// The closest candidate to `word`, if one is close enough to be a typo.
pub(super) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // One edit always counts; more only when the first letter agrees (typos
    // rarely hit it), scaled for long names.
    let close = |d: usize, c: &str| {
        let same_start = word.chars().next() == c.chars().next();
        d <= 1 || (same_start && d <= 2.max(c.len() / 4))
    };
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(word, c), *c))
        .filter(|(d, c)| close(*d, c) && *d < c.len())
        .min()
        .map(|(_, c)| c)
}
