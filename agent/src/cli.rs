//! The `egret` command line: one module per subcommand, each with its
//! arguments and what it does.

mod agent;
mod check;
mod completions;
mod doctor;
mod events;
mod learn;
mod lockdown;
mod presets;
mod reload;
mod replay;
mod status;
mod suggest;
mod teardown;
mod verify;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use egret::paths;

/// eBPF egress firewall for self-hosted CI runners.
///
/// egret attaches kernel programs to the cgroups your runners' jobs live in.
/// A job can then reach only what its runner's policy allows: the forge,
/// package registries, DNS. Cloud metadata endpoints and the runner's own
/// network are always refused, a job resolves only the names its runner
/// allows, and every refusal is reported.
///
/// Typical use: `egret check policy.yaml` in the policy repository's CI,
/// `egret agent --policy /etc/egret/policy.yaml` as a service on each runner
/// host, `egret status` and `egret events --follow` to watch it, and
/// `egret lockdown --runner NAME` when a job is suspected compromised.
///
/// Exit codes: 0 success, 1 bad input (an invalid policy, an unknown
/// runner), 2 an environment or internal problem (not root, no cgroup v2,
/// no agent).
#[derive(Parser)]
#[command(name = "egret", version, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground: load, pin and attach the programs,
    /// keep the maps in step with the policy, print denial events on stdout.
    ///
    /// Programs and maps are pinned in bpffs, so stopping or killing the agent
    /// leaves enforcement exactly as it was; a restarted agent re-adopts them.
    /// Only `egret teardown` removes enforcement. SIGHUP reloads the policy.
    ///
    /// The agent also runs each runner's DNS proxy: every DNS query a job
    /// sends, to any resolver, is answered there, and only for names the
    /// policy allows, whose addresses become reachable before the job sees
    /// them. While the agent is down, new lookups fail.
    ///
    /// Events go to stdout as one JSON object per line; logs go to stderr.
    Agent(agent::Args),
    /// Validate policy files. Exit 0 when valid, 1 with one
    /// `file:line:col: error: message` line per problem otherwise.
    ///
    /// Warnings (a metadata CIDR that egret will never open, a wildcard on
    /// a shared hosting suffix, an audit-mode runner) are printed too, with
    /// or without errors beside them. Run it in the policy repository's CI
    /// so a bad change never reaches a runner host.
    Check(check::Args),
    /// Show the agent, the policy, each runner's state, map sizes and
    /// counters. Without a running agent, reports what the pins hold.
    Status(status::Args),
    /// Print denial events: the recent ones the agent remembers, or, with
    /// --follow, live ones as they happen.
    Events(events::Args),
    /// Re-read the policy (the same as sending the agent SIGHUP). A policy
    /// that fails validation is rejected and the running one stays.
    Reload(reload::Args),
    /// Incident mode: deny all egress from the named runners (every runner
    /// when none is named) at once.
    ///
    /// Flips pinned state the kernel programs read on every connect, so it
    /// works with no agent running, needs no program reload, and cannot be
    /// undone by the job. Connections the jobs already have open are ended
    /// (ECONNABORTED), except, with --keep-forge, those to the forge. A newly started agent keeps it. Each lockdown is
    /// appended to the audit log in the state directory, with anything that
    /// failed after it took effect (a freeze, say); then the exit code is 2
    /// although the lockdown holds.
    Lockdown(lockdown::LockdownArgs),
    /// End lockdown for the named runners, or every lockdown when none is
    /// named; thaws cgroups a lockdown froze.
    Unlock(lockdown::UnlockArgs),
    /// Remove every egret program, link, map and pin. Jobs become
    /// unrestricted: this is the one way enforcement ends.
    Teardown(teardown::Args),
    /// List the presets a policy can use (`- preset: NAME`), or print one.
    Presets(presets::PresetsArgs),
    /// Print the JSON Schema of policy files (or of preset files), for
    /// editors that validate and complete YAML.
    Schema(presets::SchemaArgs),
    /// Fail a CI job at its start unless egret holds it: exit 0 only when
    /// egret's kernel programs judge this very process.
    ///
    /// Run it as the job (any user, no agent socket needed) from the
    /// runner's hook: GitLab's `pre_build_script`, GitHub's
    /// `ACTIONS_RUNNER_HOOK_JOB_STARTED` script. The answer comes from the
    /// kernel: a probe connect that only egret's connect hook answers, so
    /// nothing the job can write fools it. Exit 1 with a one-line reason
    /// when the process is not under egret, under lockdown, or (with
    /// --require-enforce) only audited; 2 when the probe could not run.
    Verify(verify::Args),
    /// Check this runner host against what egret needs and what the runner
    /// security guides ask: one PASS, WARN or FAIL line per check, with what
    /// was found (file:line where there is one) and the fix.
    ///
    /// Looks at egret itself (cgroup v2, BPF, the agent, each runner's
    /// attachment, the sysctls that change what jobs can do), GitLab
    /// Runner's config.toml (privileged, capabilities, the Docker socket,
    /// host networking, pull policy, cgroup_parent against the policy,
    /// executors), GitHub Actions runners (service user, ephemeral, the
    /// job-started hook running `egret verify`, the unit's slice) and
    /// Docker's daemon.json (cgroup driver, userns-remap,
    /// no-new-privileges). Exit 0 when nothing fails, 1 when something
    /// does, 2 when it could not run.
    Doctor(doctor::Args),
    /// Learn mode: print a policy for a runner from what its recorded jobs
    /// needed, for `egret check`, review and `egret replay`.
    ///
    /// Record first: run the runner in audit mode with an empty allow list
    /// (or only the forge) and the agent's --events-file, through a
    /// representative set of jobs. Every connect and every DNS name outside
    /// the allow list is then in the recording, with the job that made it.
    ///
    /// The suggestion takes embedded presets first where their hosts cover
    /// what was seen, then exact names with their ports, then `*.parent`
    /// where several names share a parent that is not a public or shared
    /// hosting suffix, then addresses reached with no name. Metadata,
    /// lateral addresses and DNS-over-HTTPS services are never suggested;
    /// they are listed as comments with what else was left out. Each entry
    /// says how many jobs and events needed it.
    Suggest(suggest::Args),
    /// Learn mode: would this policy have broken these jobs? Judges every
    /// recorded connect and DNS name again, with the same verdict code the
    /// kernel programs run, as if the candidate were enforced.
    ///
    /// For each recorded job: what the candidate would refuse that was let
    /// through when recorded (it breaks the job), what stays refused, and
    /// what it newly allows. Exit 0 when no job would break, 1 when one
    /// would, 2 when it could not judge (invalid policy, no events).
    ///
    /// The host's own subnets count as lateral, as on the runner host: run
    /// it there for the exact answer.
    Replay(replay::Args),
    /// Print a completion script for a shell: `egret completions bash >
    /// /usr/share/bash-completion/completions/egret` (the Debian package
    /// installs them for bash, zsh and fish).
    Completions(completions::CompletionsArgs),
    /// Write a man page for egret and each subcommand into a directory
    /// (for packagers).
    #[command(hide = true)]
    Manpages(completions::ManpagesArgs),
}

/// Where the agent keeps its state. Every command that talks to the agent
/// or its pins takes all three, so a script sets them once, in the
/// environment.
#[derive(clap::Args, Clone, Debug)]
pub struct Paths {
    /// The bpffs directory of egret's pins (programs, links, maps).
    #[arg(long, value_name = "DIR", env = "EGRET_BPFFS", default_value = paths::BPFFS)]
    pub bpffs: PathBuf,
    /// The agent's state directory: agent.json (the applied policy and each
    /// runner's cgroup) and lockdown.log (the lockdown audit log).
    #[arg(long, value_name = "DIR", env = "EGRET_STATE_DIR", default_value = paths::STATE_DIR)]
    pub state_dir: PathBuf,
    /// The agent's control socket, which `status`, `events` and `reload`
    /// talk to.
    #[arg(long, value_name = "PATH", env = "EGRET_SOCKET", default_value = paths::SOCKET)]
    pub socket: PathBuf,
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Check(args) => check::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Events(args) => events::run(&args),
        Command::Reload(args) => reload::run(&args),
        Command::Lockdown(args) => lockdown::lockdown(&args),
        Command::Unlock(args) => lockdown::unlock(&args),
        Command::Teardown(args) => teardown::run(&args),
        Command::Presets(args) => presets::presets(&args),
        Command::Schema(args) => presets::schema(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Suggest(args) => suggest::run(&args),
        Command::Replay(args) => replay::run(&args),
        Command::Completions(args) => completions::completions(&args),
        Command::Manpages(args) => completions::manpages(&args),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration such as 30s or 5m: {e}"))
}

/// An error with its causes, `outer: inner: root`, skipping causes whose text
/// the outer message already contains.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
