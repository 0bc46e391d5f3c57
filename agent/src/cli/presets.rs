//! `egret presets` and `egret schema`: what a policy can say.

use std::{path::PathBuf, process::ExitCode};

#[derive(clap::Args)]
pub struct PresetsArgs {
    /// Print this preset's definition.
    #[arg(long, value_name = "NAME")]
    pub show: Option<String>,
    /// A policy directory whose *.preset.yaml files add to or replace the
    /// embedded presets.
    #[arg(long, value_name = "DIR")]
    pub policy: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct SchemaArgs {
    /// The schema of *.preset.yaml files instead.
    #[arg(long)]
    pub preset: bool,
}

pub fn schema(args: &SchemaArgs) -> ExitCode {
    use egret::policy::presets::{POLICY_SCHEMA, preset_schema};
    if args.preset {
        print!("{}", preset_schema());
    } else {
        print!("{POLICY_SCHEMA}");
    }
    ExitCode::SUCCESS
}

pub fn presets(args: &PresetsArgs) -> ExitCode {
    let list = match egret::policy::presets::list(args.policy.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("egret presets: {e}");
            return ExitCode::from(2);
        }
    };
    match &args.show {
        Some(name) => match list.iter().find(|p| &p.name == name) {
            Some(p) => {
                println!("# {} (from {})", p.name, p.origin.display());
                print!("{}", p.source);
                ExitCode::SUCCESS
            }
            None => {
                let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
                eprintln!(
                    "egret presets: no preset '{name}' (available: {})",
                    names.join(", ")
                );
                ExitCode::from(1)
            }
        },
        None => {
            let width = list.iter().map(|p| p.name.len()).max().unwrap_or(0);
            for p in &list {
                let origin = if p.origin.to_string_lossy().starts_with('<') {
                    String::new()
                } else {
                    format!(" [{}]", p.origin.display())
                };
                println!(
                    "{:<width$}  v{}  {}{origin}",
                    p.name, p.version, p.description
                );
            }
            ExitCode::SUCCESS
        }
    }
}
