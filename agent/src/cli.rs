//! The `egret` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use egret::{
    control::{self, ControlError},
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
/// network are always refused, a job resolves only the names its runner
/// allows, and every refusal is reported.
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
    Agent(AgentArgs),
    /// Validate policy files. Exit 0 when valid, 1 with one
    /// `file:line:col: error: message` line per problem otherwise.
    ///
    /// Run it in the policy repository's CI so a bad change never reaches a
    /// runner host.
    Check(CheckArgs),
    /// Show the agent, the policy, each runner's state, map sizes and
    /// counters. Without a running agent, reports what the pins hold.
    Status(StatusArgs),
    /// Print denial events: the recent ones the agent remembers, or, with
    /// --follow, live ones as they happen.
    Events(EventsArgs),
    /// Re-read the policy (the same as sending the agent SIGHUP). A policy
    /// that fails validation is rejected and the running one stays.
    Reload(SocketArgs),
    /// Incident mode: deny all egress from the named runners (every runner
    /// when none is named) at once.
    ///
    /// Flips pinned state the kernel programs read on every connect, so it
    /// works with no agent running, needs no program reload, and cannot be
    /// undone by the job. A newly started agent keeps it. Each lockdown is
    /// appended to the audit log in the state directory.
    Lockdown(LockdownArgs),
    /// End lockdown for the named runners, or every lockdown when none is
    /// named; thaws cgroups a lockdown froze.
    Unlock(UnlockArgs),
    /// Remove every egret program, link, map and pin. Jobs become
    /// unrestricted: this is the one way enforcement ends.
    Teardown(TeardownArgs),
    /// List the presets a policy can use (`- preset: NAME`), or print one.
    Presets(PresetsArgs),
    /// Print the JSON Schema of policy files (or of preset files), for
    /// editors that validate and complete YAML.
    Schema(SchemaArgs),
}

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

#[derive(clap::Args)]
pub struct SocketArgs {
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = paths::SOCKET)]
    pub socket: PathBuf,
}

#[derive(clap::Args)]
pub struct PinArgs {
    /// The bpffs directory the agent uses.
    #[arg(long, value_name = "DIR", default_value = paths::BPFFS)]
    pub bpffs: PathBuf,
    /// The agent's state directory (audit log, applied policy record).
    #[arg(long, value_name = "DIR", default_value = paths::STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub pins: PinArgs,
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen.
    #[arg(short, long)]
    pub follow: bool,
    /// One JSON object per line, as the agent emits them.
    #[arg(long)]
    pub json: bool,
    /// Only this runner's events.
    #[arg(long, value_name = "NAME")]
    pub runner: Option<String>,
    #[command(flatten)]
    pub socket: SocketArgs,
}

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
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub pins: PinArgs,
}

#[derive(clap::Args)]
pub struct UnlockArgs {
    /// A runner to unlock; repeat for several. None: end every lockdown.
    #[arg(long = "runner", value_name = "NAME")]
    pub runners: Vec<String>,
    #[command(flatten)]
    pub pins: PinArgs,
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
    /// The control socket `egret status`, `events` and `reload` talk to.
    #[arg(long, value_name = "PATH", default_value = paths::SOCKET)]
    pub socket: PathBuf,
    /// A group whose members may use the control socket besides root.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Resolver for runners whose policy names no `dns.upstream`; repeat
    /// for several. Default: the host's resolver configuration.
    #[arg(long = "dns-upstream", value_name = "IP")]
    pub dns_upstream: Vec<std::net::IpAddr>,
    /// Do not reload when the policy files change; only on SIGHUP or
    /// `egret reload`.
    #[arg(long)]
    pub no_watch: bool,
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
    /// Most addresses one name keeps renewed through the DNS proxy (a CDN
    /// rotating through many); beyond it, the oldest lapse at their expiry.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub dns_max_ips_per_name: usize,
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
        Command::Status(args) => status(&args),
        Command::Events(args) => events(&args),
        Command::Reload(args) => reload(&args),
        Command::Lockdown(args) => lockdown(&args),
        Command::Unlock(args) => unlock(&args),
        Command::Teardown(args) => teardown(&args),
        Command::Presets(args) => presets(&args),
        Command::Schema(args) => {
            use egret::policy::presets::{POLICY_SCHEMA, preset_schema};
            if args.preset {
                print!("{}", preset_schema());
            } else {
                print!("{POLICY_SCHEMA}");
            }
            ExitCode::SUCCESS
        }
    }
}

fn presets(args: &PresetsArgs) -> ExitCode {
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

fn agent(args: AgentArgs) -> ExitCode {
    let socket_group = match args
        .socket_group
        .as_deref()
        .map(nix::unistd::Group::from_name)
    {
        None => None,
        Some(Ok(Some(group))) => Some(group.gid.as_raw()),
        Some(_) => {
            eprintln!(
                "egret agent: --socket-group {}: no such group",
                args.socket_group.unwrap_or_default()
            );
            return ExitCode::from(1);
        }
    };
    let opts = AgentOptions {
        policy: args.policy,
        pins: Pins::new(args.bpffs),
        state_dir: args.state_dir,
        socket: args.socket,
        socket_group,
        create_cgroups: args.create_cgroups,
        watch: !args.no_watch,
        dns_upstream: args.dns_upstream,
        ttl: TtlSettings {
            floor: args.ttl_floor,
            cap: args.ttl_cap,
            grace: args.grace,
            max_ips_per_name: args.dns_max_ips_per_name,
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

fn status(args: &StatusArgs) -> ExitCode {
    let request = serde_json::json!({ "v": control::PROTOCOL_VERSION, "cmd": "status" });
    let status: egret::status::Status = match control::request(&args.socket.socket, &request) {
        Ok((reply, _)) => match serde_json::from_value(reply["status"].clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("egret status: unexpected reply: {e}");
                return ExitCode::from(2);
            }
        },
        Err(ControlError::NoAgent(_)) => {
            // No agent: enforcement may still be in place. Report the pins.
            let pins = Pins::new(&args.pins.bpffs);
            match egret::datapath::Maps::from_pins(&pins) {
                Ok(maps) => {
                    let cgroups = egret::lockdown::recorded_cgroups(&args.pins.state_dir);
                    egret::status::from_pins(&maps, &pins, &cgroups, &args.pins.state_dir)
                }
                Err(e) => {
                    eprintln!(
                        "egret status: no agent on {} and {}",
                        args.socket.socket.display(),
                        chain(&e)
                    );
                    return ExitCode::from(2);
                }
            }
        }
        Err(e) => {
            eprintln!("egret status: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print!("{}", egret::status::render(&status));
    }
    ExitCode::SUCCESS
}

fn events(args: &EventsArgs) -> ExitCode {
    use std::io::{BufRead as _, Write as _};
    let request = serde_json::json!({
        "v": control::PROTOCOL_VERSION,
        "cmd": "events",
        "follow": args.follow,
        "runner": args.runner,
    });
    let reader = match control::request(&args.socket.socket, &request) {
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
    if let Some(notice) = e["notice"].as_str() {
        return format!("egret: {notice} (missed {} events)", e["missed"]);
    }
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    let dst = if s("family") == "ipv6" {
        format!("[{}]", s("dst"))
    } else {
        s("dst")
    };
    format!(
        "{} {:<6} {} runner={} cgroup={} pid={} comm={} {} {}:{}{} reason={}",
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

fn reload(args: &SocketArgs) -> ExitCode {
    let request = serde_json::json!({ "v": control::PROTOCOL_VERSION, "cmd": "reload" });
    match control::request(&args.socket, &request) {
        Ok((reply, _)) => {
            println!("egret: {}", reply["message"].as_str().unwrap_or("reloaded"));
            ExitCode::SUCCESS
        }
        Err(ControlError::Refused(why)) => {
            eprintln!("egret reload: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("egret reload: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

fn lockdown(args: &LockdownArgs) -> ExitCode {
    let request = egret::lockdown::Request {
        runners: args.runners.clone(),
        keep_forge: args.keep_forge,
        freeze: args.freeze,
        reason: args.reason.clone(),
        duration: args.duration,
    };
    match egret::lockdown::lockdown(&Pins::new(&args.pins.bpffs), &args.pins.state_dir, &request) {
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
            for dir in &report.frozen {
                println!("egret: froze {dir}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egret lockdown: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

fn unlock(args: &UnlockArgs) -> ExitCode {
    match egret::lockdown::unlock(
        &Pins::new(&args.pins.bpffs),
        &args.pins.state_dir,
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egret unlock: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

fn format_took(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
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
