//! `egret suggest`: a policy for one runner from what its recorded jobs
//! needed.

use std::{path::PathBuf, process::ExitCode};

use egret::{
    learn::suggest::{self, Base, Options, WILDCARD_MIN_NAMES, plural},
    policy::{self, Severity},
};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("base").required(true).args(["policy", "cgroup"])))]
pub struct Args {
    /// The runner to write a policy for. Optional when the recording holds
    /// one runner only.
    #[arg(long, value_name = "NAME")]
    pub runner: Option<String>,
    /// The policy the runner was recorded under (file or directory): the
    /// runner's cgroup, DNS, loopback and socket settings carry over.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// The runner's cgroup, relative to the cgroup2 root, when there is no
    /// policy to take it from.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Leave out what fewer than N recorded jobs needed (one-off downloads,
    /// a job that was itself up to no good).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_jobs: usize,
    /// Names directly under one parent that make a `*.parent` wildcard
    /// instead of exact entries (never on a public or shared hosting
    /// suffix).
    #[arg(long, value_name = "N", default_value_t = WILDCARD_MIN_NAMES)]
    pub wildcard_min: usize,
    /// Recorded events: the agent's --events-file (add its rotated `.1`),
    /// or saved `egret events --json` output; `-` reads standard input.
    #[arg(required = true, value_name = "EVENTS")]
    pub events: Vec<PathBuf>,
}

pub fn run(args: &Args) -> ExitCode {
    let recording = match super::learn::read_recording("suggest", &args.events) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let runner = match super::learn::pick_runner("suggest", &recording, args.runner.as_deref()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let base = match (&args.policy, &args.cgroup) {
        (Some(path), _) => match policy::load(path) {
            Ok(loaded) => match loaded.policy.runners.into_iter().find(|r| r.name == runner) {
                Some(r) => Base::Runner(Box::new(r)),
                None => {
                    eprintln!(
                        "egret suggest: {} defines no runner '{runner}'; give its cgroup with --cgroup",
                        path.display()
                    );
                    return ExitCode::from(1);
                }
            },
            Err(e) => {
                eprintln!("egret suggest: {e}");
                return ExitCode::from(1);
            }
        },
        (None, Some(cgroup)) => Base::Cgroup(cgroup.clone()),
        (None, None) => unreachable!("clap requires --policy or --cgroup"),
    };
    let opts = Options {
        runner: runner.clone(),
        base,
        min_jobs: args.min_jobs,
        wildcard_min: args.wildcard_min,
    };
    let suggestion = suggest::suggest(&recording, &opts);
    let text = suggest::render(&suggestion, &opts);
    // What is printed must be a policy `egret check` accepts: anything else
    // is egret's bug, not the operator's.
    let (_, diagnostics) =
        policy::validate(&[(PathBuf::from("<suggestion>"), text.clone().into_bytes())]);
    let errors: Vec<_> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if !errors.is_empty() {
        eprintln!("egret suggest: internal error: the suggested policy does not validate:");
        for d in errors {
            eprintln!("  {d}");
        }
        eprint!("{text}");
        return ExitCode::from(2);
    }
    print!("{text}");
    eprintln!(
        "egret suggest: {} for runner '{runner}' from {} of {}; {} left out",
        match suggestion.entries.len() {
            1 => "1 entry".to_owned(),
            n => format!("{n} entries"),
        },
        plural(suggestion.events, "event"),
        plural(suggestion.jobs, "job"),
        suggestion.left_out.len()
    );
    ExitCode::SUCCESS
}
