//! `egret replay`: a candidate policy judged against a recording.

use std::{path::PathBuf, process::ExitCode};

use clap::ValueEnum;
use egret::{
    baseline, compile,
    learn::replay::{self, Candidate, JobReport},
    mountinfo, policy,
};

#[derive(clap::Args)]
pub struct Args {
    /// The candidate policy (file or directory).
    #[arg(long, value_name = "PATH")]
    pub policy: PathBuf,
    /// Judge only this runner's jobs.
    #[arg(long, value_name = "NAME")]
    pub runner: Option<String>,
    /// `text` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Recorded events: the agent's --events-file (add its rotated `.1`),
    /// or saved `egret events --json` output; `-` reads standard input.
    #[arg(required = true, value_name = "EVENTS")]
    pub events: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn run(args: &Args) -> ExitCode {
    let mut recording = match super::learn::read_recording("replay", &args.events) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Some(name) = &args.runner {
        match super::learn::pick_runner("replay", &recording, Some(name)) {
            Ok(_) => recording.events.retain(|e| &e.runner == name),
            Err(code) => return code,
        }
    }
    let loaded = match policy::load(&args.policy) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("egret replay: {e}");
            return ExitCode::from(2);
        }
    };
    // The host's own subnets are neighbours on a runner host: judged here
    // as the agent would judge them here.
    let subnets = baseline::host_subnets().unwrap_or_else(|e| {
        eprintln!(
            "egret replay: warning: cannot list this host's subnets ({e}); judging without them"
        );
        Vec::new()
    });
    let host = compile::Host {
        cgroup_root: mountinfo::read()
            .ok()
            .and_then(|m| mountinfo::of_type(&m, "cgroup2"))
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
        subnets,
        netns: 0,
    };
    let mut candidate = match Candidate::new(&loaded.policy, &host) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("egret replay: {}: {e}", args.policy.display());
            return ExitCode::from(2);
        }
    };
    let report = replay::replay(&recording, &mut candidate);
    match args.format {
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("egret replay: {e}");
                return ExitCode::from(2);
            }
        },
        Format::Text => {
            for job in &report.jobs {
                print_job(job);
            }
            for (runner, events) in &report.unknown_runners {
                println!(
                    "runner {runner}: not in {}; its {events} events not judged",
                    args.policy.display()
                );
            }
            println!(
                "{} of {} jobs would break under {}",
                report.broken_jobs(),
                report.jobs.len(),
                args.policy.display()
            );
        }
    }
    if report.broken_jobs() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_job(job: &JobReport) {
    let about = job
        .identity
        .as_ref()
        .map(|j| {
            [j.name.as_deref(), j.project.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let verdict = if job.broken() { "BREAKS" } else { "ok" };
    println!(
        "{verdict:6} runner {} {}{about}: {} attempts judged",
        job.runner, job.job, job.judged
    );
    for f in &job.breaks {
        println!("         would be refused: {f}");
    }
    for f in &job.still_denied {
        println!("         still refused: {f}");
    }
    for f in &job.now_allowed {
        println!("         now allowed: {f}");
    }
}
