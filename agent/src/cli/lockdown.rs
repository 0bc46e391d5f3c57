//! `egret lockdown` and `egret unlock`: incident mode, with or without an
//! agent.

use std::{process::ExitCode, time::Duration};

use egret::datapath::Pins;

use super::{Paths, chain};

#[derive(clap::Args)]
pub struct LockdownArgs {
    /// A runner to lock down; repeat for several. None: every runner.
    #[arg(long = "runner", value_name = "NAME")]
    pub runners: Vec<String>,
    /// Keep the forge reachable (allow entries marked `forge: true`), so the
    /// runner can still report to GitLab or GitHub.
    #[arg(long)]
    pub keep_forge: bool,
    /// Also freeze the runners' cgroups (cgroup.freeze), stopping the job's
    /// processes in place for forensics. Unlock thaws them.
    #[arg(long)]
    pub freeze: bool,
    /// Why, for the audit log.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// End the lockdown by itself after this long (e.g. 30m, 2h).
    #[arg(long = "for", value_name = "DURATION", value_parser = super::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub paths: Paths,
}

#[derive(clap::Args)]
pub struct UnlockArgs {
    /// A runner to unlock; repeat for several. None: end every lockdown.
    #[arg(long = "runner", value_name = "NAME")]
    pub runners: Vec<String>,
    #[command(flatten)]
    pub paths: Paths,
}

pub fn lockdown(args: &LockdownArgs) -> ExitCode {
    // A compromised job may keep every CPU busy; the incident command runs
    // ahead of it. Failing to (no CAP_SYS_NICE) only costs speed.
    // SAFETY: setpriority(2) on this process only.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) };
    let request = egret::lockdown::Request {
        runners: args.runners.clone(),
        keep_forge: args.keep_forge,
        freeze: args.freeze,
        reason: args.reason.clone(),
        duration: args.duration,
    };
    match egret::lockdown::lockdown(
        &Pins::new(&args.paths.bpffs),
        &args.paths.state_dir,
        &request,
    ) {
        Ok(report) => {
            let who = if args.runners.is_empty() {
                "every runner".to_owned()
            } else {
                report.runners.join(", ")
            };
            let mut what = String::from("all egress denied");
            if args.keep_forge {
                what = "all egress denied except the forge".into();
            }
            println!(
                "egret: LOCKDOWN of {who}: {what}{}; in force {} after the command started",
                args.duration
                    .map(|d| format!(" for {}", humantime::format_duration(d)))
                    .unwrap_or_default(),
                format_took(report.took)
            );
            let kept = if report.connections_kept > 0 {
                format!(", kept {} to the forge", report.connections_kept)
            } else {
                String::new()
            };
            println!(
                "egret: ended {} open connection{} of the jobs{kept}",
                report.connections_ended,
                if report.connections_ended == 1 {
                    ""
                } else {
                    "s"
                }
            );
            if let Some(why) = &report.walked {
                println!("egret: found them by walking the kernel's socket tables ({why})");
            }
            for dir in &report.frozen {
                println!("egret: froze {dir}");
            }
            failed("lockdown", &report.failures, "the lockdown is in force")
        }
        Err(e) => {
            eprintln!("egret lockdown: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

pub fn unlock(args: &UnlockArgs) -> ExitCode {
    match egret::lockdown::unlock(
        &Pins::new(&args.paths.bpffs),
        &args.paths.state_dir,
        &args.runners,
    ) {
        Ok(report) => {
            let who = if args.runners.is_empty() {
                "every lockdown".to_owned()
            } else {
                report.runners.join(", ")
            };
            println!("egret: unlocked {who} in {}", format_took(report.took));
            for dir in &report.thawed {
                println!("egret: thawed {dir}");
            }
            failed("unlock", &report.failures, "the lockdown is over")
        }
        Err(e) => {
            eprintln!("egret unlock: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Exit 2 when something failed after the change took effect, saying
/// what still holds.
fn failed(command: &str, failures: &[String], holds: &str) -> ExitCode {
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    for failure in failures {
        eprintln!("egret {command}: {failure}");
    }
    eprintln!("egret {command}: {holds}, but not everything asked for was done (see above)");
    ExitCode::from(2)
}

fn format_took(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }
}
