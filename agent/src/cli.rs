//! The `egret` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use egret::{
    daemon::{self, AgentOptions},
    datapath::{self, Pins},
    paths,
    policy::{self, Diagnostic, PolicyError, Severity},
    resolver::TtlSettings,
};
use serde::Serialize;

/// eBPF egress firewall for self-hosted CI runners.
///
/// egret attaches kernel programs to the cgroups your runners' jobs live in.
/// A job can then reach only what its runner's policy allows: the forge,
/// package registries, DNS. Cloud metadata endpoints and the runner's own
/// network are always refused, and every refusal is reported.
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
    /// Events go to stdout as one JSON object per line; logs go to stderr.
    Agent(AgentArgs),
    /// Validate policy files. Exit 0 when valid, 1 with one
    /// `file:line:col: error: message` line per problem otherwise.
    ///
    /// Run it in the policy repository's CI so a bad change never reaches a
    /// runner host.
    Check(CheckArgs),
    /// Remove every egret program, link, map and pin. Jobs become
    /// unrestricted: this is the one way enforcement ends.
    Teardown(TeardownArgs),
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Policy file, or a directory whose *.yaml files are merged.
    #[arg(long, value_name = "PATH")]
    pub policy: PathBuf,
    /// Directory on a bpffs for egret's pins; a private bpffs is mounted
    /// there when none is.
    #[arg(long, value_name = "DIR", default_value = paths::BPFFS)]
    pub bpffs: PathBuf,
    /// Directory for the agent's persistent state: agent.json records which
    /// policy files were last applied to which runners, by which agent.
    #[arg(long, value_name = "DIR", default_value = paths::STATE_DIR)]
    pub state_dir: PathBuf,
    /// Create runner cgroups that do not exist yet, instead of failing.
    /// Attaching to the cgroup before the runner places jobs in it means no
    /// job ever runs unguarded.
    #[arg(long)]
    pub create_cgroups: bool,
    /// Shortest time an address learned from DNS stays allowed, whatever TTL
    /// the answer carried (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub ttl_floor: Duration,
    /// Longest time an answer is trusted before the name is resolved again.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub ttl_cap: Duration,
    /// How long an address stays allowed after it dropped out of the answers,
    /// so connections opened just before are not cut.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub grace: Duration,
}

#[derive(clap::Args)]
pub struct CheckArgs {
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

#[derive(clap::Args)]
pub struct TeardownArgs {
    /// The bpffs directory the agent used.
    #[arg(long, value_name = "DIR", default_value = paths::BPFFS)]
    pub bpffs: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration such as 30s or 5m: {e}"))
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Agent(args) => agent(args),
        Command::Check(args) => check(&args),
        Command::Teardown(args) => teardown(&args),
    }
}

fn agent(args: AgentArgs) -> ExitCode {
    let opts = AgentOptions {
        policy: args.policy,
        pins: Pins::new(args.bpffs),
        state_dir: args.state_dir,
        create_cgroups: args.create_cgroups,
        ttl: TtlSettings {
            floor: args.ttl_floor,
            cap: args.ttl_cap,
            grace: args.grace,
            ..TtlSettings::default()
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egret: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(daemon::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret agent: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    file: String,
    line: u64,
    column: u64,
    severity: &'a str,
    message: &'a str,
}

fn check(args: &CheckArgs) -> ExitCode {
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

fn teardown(args: &TeardownArgs) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("egret teardown: must run as root");
        return ExitCode::from(2);
    }
    match datapath::teardown(&Pins::new(&args.bpffs)) {
        Ok(true) => {
            println!(
                "egret: removed all programs, links and maps under {}; jobs are unrestricted",
                args.bpffs.display()
            );
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("egret: nothing to remove under {}", args.bpffs.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egret teardown: {}", chain(&e));
            ExitCode::from(2)
        }
    }
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
