//! `egret doctor`: the runner host checked against what egret needs and
//! what the runner security guides ask, one finding per check.
//!
//! Each area reads its facts (files, sysctls, the agent's status) once and
//! judges them in a pure function, so every check has a PASS and a FAIL
//! case on the host, with no runner installed.

pub mod docker;
pub mod github;
pub mod gitlab;
pub mod host;

use serde::Serialize;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

/// One check's result: what was looked at, what was found, where, and
/// what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A stable id, e.g. `gitlab.privileged`.
    pub check: &'static str,
    pub level: Level,
    /// What the check is about: `egret`, `gitlab runner "docker-1"`, ...
    pub subject: String,
    pub found: String,
    /// `file:line` when the finding points into a file.
    pub at: Option<String>,
    /// What to change; `None` on a pass.
    pub fix: Option<String>,
}

impl Finding {
    pub fn pass(check: &'static str, subject: impl Into<String>, found: impl Into<String>) -> Self {
        Self {
            check,
            level: Level::Pass,
            subject: subject.into(),
            found: found.into(),
            at: None,
            fix: None,
        }
    }

    pub fn warn(
        check: &'static str,
        subject: impl Into<String>,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            level: Level::Warn,
            fix: Some(fix.into()),
            ..Self::pass(check, subject, found)
        }
    }

    pub fn fail(
        check: &'static str,
        subject: impl Into<String>,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            level: Level::Fail,
            ..Self::warn(check, subject, found, fix)
        }
    }

    pub fn at(mut self, at: Option<String>) -> Self {
        self.at = at;
        self
    }
}

/// The human form: one line per finding, the fix on the next.
pub fn render(findings: &[Finding]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in findings {
        let level = match f.level {
            Level::Pass => "PASS",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        let at =
            f.at.as_deref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default();
        let _ = writeln!(out, "{level} {}: {}{at}", f.subject, f.found);
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "     fix: {fix}");
        }
    }
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    let _ = writeln!(
        out,
        "{} passed, {} warnings, {} failed",
        count(Level::Pass),
        count(Level::Warn),
        count(Level::Fail)
    );
    out
}

/// 1 when anything failed, else 0.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.level == Level::Fail))
}

/// The 1-based line of `text` where the `index`th table header `header`
/// (e.g. `[[runners]]`) starts, and, when `key` is given, the first line
/// inside that table (up to the next `[[header]]`) that sets `key`.
pub fn line_of(text: &str, header: &str, index: usize, key: Option<&str>) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == header)
        .nth(index)?
        .0;
    let Some(key) = key else {
        return Some(start + 1);
    };
    lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| l.trim() != header)
        .find(|(_, l)| {
            let t = l.trim_start();
            t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|(i, _)| i + 1)
}
