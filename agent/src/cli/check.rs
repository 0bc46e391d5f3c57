//! `egret check`: policy files validated, every problem on a line.

use std::{path::PathBuf, process::ExitCode};

use clap::ValueEnum;
use egret::policy::{self, Diagnostic, PolicyError, Severity};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Policy files or directories of *.yaml files.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output format: `text` for people, `json` for CI annotations.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    file: String,
    line: u64,
    column: u64,
    severity: &'a str,
    message: &'a str,
}

pub fn run(args: &Args) -> ExitCode {
    let mut diagnostics: Vec<Diagnostic> = Vec::new();
    let mut environment_error = false;
    for path in &args.paths {
        match policy::load(path) {
            Ok(loaded) => diagnostics.extend(loaded.warnings),
            Err(PolicyError::Invalid(list)) => diagnostics.extend(list),
            Err(other) => {
                diagnostics.push(Diagnostic {
                    file: path.clone(),
                    line: 0,
                    column: 0,
                    severity: Severity::Error,
                    message: other.to_string(),
                });
                if matches!(other, PolicyError::Io { .. }) {
                    environment_error = true;
                }
            }
        }
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    match args.format {
        Format::Text => {
            for d in &diagnostics {
                println!("{d}");
            }
            if errors == 0 {
                eprintln!("egret check: {} valid", plural(args.paths.len(), "path"));
            } else {
                eprintln!("egret check: {}", plural(errors, "error"));
            }
        }
        Format::Json => {
            let list: Vec<JsonDiagnostic<'_>> = diagnostics
                .iter()
                .map(|d| JsonDiagnostic {
                    file: d.file.display().to_string(),
                    line: d.line,
                    column: d.column,
                    severity: if d.severity == Severity::Error {
                        "error"
                    } else {
                        "warning"
                    },
                    message: &d.message,
                })
                .collect();
            let doc = serde_json::json!({ "valid": errors == 0, "diagnostics": list });
            println!("{doc}");
        }
    }
    match (errors, environment_error) {
        (0, _) => ExitCode::SUCCESS,
        (_, true) => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
