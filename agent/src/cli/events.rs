//! `egret events`: recent or live denial events.

use std::process::ExitCode;

use egret::control;

use super::{Paths, chain};

#[derive(clap::Args)]
pub struct Args {
    /// Keep printing events as they happen.
    #[arg(short, long)]
    pub follow: bool,
    /// One JSON object per line, as the agent emits them.
    #[arg(long)]
    pub json: bool,
    /// Only this runner's events.
    #[arg(long, value_name = "NAME")]
    pub runner: Option<String>,
    /// Only the events of this CI job: GitLab's job id (`CI_JOB_ID`) or
    /// GitHub's run id (`GITHUB_RUN_ID`), as the events' `job.id` shows it.
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
    #[command(flatten)]
    pub paths: Paths,
}

pub fn run(args: &Args) -> ExitCode {
    use std::io::{BufRead as _, Write as _};
    let request = serde_json::json!({
        "v": control::PROTOCOL_VERSION,
        "cmd": "events",
        "follow": args.follow,
        "runner": args.runner,
        "job": args.job,
    });
    let reader = match control::request(&args.paths.socket, &request) {
        Ok((_, reader)) => reader,
        Err(e) => {
            eprintln!("egret events: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let text = if args.json { line } else { human_event(&line) };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn human_event(line: &str) -> String {
    let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_owned();
    };
    if let Some(n) = e["suppressed"].as_u64() {
        return format!(
            "{} runner={} {n} more denials, not reported one by one (flood)",
            e["time"].as_str().unwrap_or("-"),
            e["runner"].as_str().unwrap_or("-")
        );
    }
    if let Some(notice) = e["notice"].as_str() {
        return format!("egret: {notice} (missed {} events)", e["missed"]);
    }
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    let dst = if s("family") == "ipv6" {
        format!("[{}]", s("dst"))
    } else {
        s("dst")
    };
    let job = match (e["job"]["ci"].as_str(), e["job"]["id"].as_str()) {
        (Some(ci), Some(id)) => format!(
            " job={ci}:{id}{}",
            e["job"]["project"]
                .as_str()
                .map(|p| format!("({p})"))
                .unwrap_or_default()
        ),
        _ => String::new(),
    };
    format!(
        "{} {:<6} {} runner={}{job} cgroup={} pid={} comm={} {} {}:{}{} reason={}",
        s("time"),
        s("action").to_uppercase(),
        s("hook"),
        s("runner"),
        s("cgroup"),
        e["pid"],
        s("comm"),
        s("proto"),
        dst,
        e["port"],
        e["host"]
            .as_str()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default(),
        s("reason"),
    )
}
