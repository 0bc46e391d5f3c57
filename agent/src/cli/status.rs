//! `egret status`: from the agent, or from the pins when it is down.

use std::process::ExitCode;

use egret::{
    control::{self, ControlError},
    datapath::Pins,
};

use super::{Paths, chain};

#[derive(clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
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
