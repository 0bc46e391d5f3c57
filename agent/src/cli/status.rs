//! `egret status`: from the agent, or from the pins when it is down.

use std::process::ExitCode;

use egret::{
    control::{self, ControlError},
    datapath::Pins,
};

use super::{Paths, chain};

#[derive(clap::Args)]
pub struct Args {
    /// Machine-readable output (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// `text`, `json`, or `prometheus`: the metrics `--metrics-listen`
    /// serves, for node_exporter's textfile collector on hosts that open no
    /// port (`egret status --format prometheus > /var/lib/node_exporter/egret.prom`).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub paths: Paths,
}

pub fn run(args: &Args) -> ExitCode {
    let request = serde_json::json!({ "v": control::PROTOCOL_VERSION, "cmd": "status" });
    let status: egret::status::Status = match control::request(&args.paths.socket, &request) {
        Ok((reply, _)) => match serde_json::from_value(reply["status"].clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("egret status: unexpected reply: {e}");
                return ExitCode::from(2);
            }
        },
        Err(ControlError::NoAgent(_)) => {
            // No agent: enforcement may still be in place. Report the pins.
            let pins = Pins::new(&args.paths.bpffs);
            match egret::datapath::Maps::from_pins(&pins) {
                Ok(maps) => {
                    let cgroups = egret::state_dir::recorded_cgroups(&args.paths.state_dir);
                    egret::status::from_pins(&maps, &pins, &cgroups, &args.paths.state_dir)
                }
                Err(e) => {
                    eprintln!(
                        "egret status: no agent on {} and {}",
                        args.paths.socket.display(),
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
    match (args.json, args.format) {
        (true, _) | (_, Format::Json) => println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        ),
        (_, Format::Prometheus) => print!("{}", egret::metrics::render(&status)),
        (_, Format::Text) => print!("{}", egret::status::render(&status)),
    }
    ExitCode::SUCCESS
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Prometheus,
}
