//! `egret verify`: fail a CI job at its start when egret is not enforcing.

use std::{process::ExitCode, time::Duration};

use egret::verify::{Held, probe};

#[derive(clap::Args)]
pub struct Args {
    /// Fail in an audit-mode runner too: only enforcement passes.
    #[arg(long)]
    pub require_enforce: bool,
    /// How long to wait for the kernel's answer.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = super::parse_duration)]
    pub wait: Duration,
    /// Print nothing when the check passes.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: &Args) -> ExitCode {
    let held = match probe(args.wait) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("egret verify: cannot probe: {e}");
            return ExitCode::from(2);
        }
    };
    let pass = match held {
        Held::Enforcing => true,
        Held::Auditing => !args.require_enforce,
        Held::Refused | Held::NotHeld => false,
    };
    if pass {
        if !args.quiet {
            println!("egret verify: {}", held.describe());
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("egret verify: FAIL: {}", held.describe());
        ExitCode::from(1)
    }
}
