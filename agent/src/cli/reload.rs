//! `egret reload`: the agent re-reads its policy.

use std::process::ExitCode;

use egret::control::{self, ControlError};

use super::{Paths, chain};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: Paths,
}

pub fn run(args: &Args) -> ExitCode {
    let request = serde_json::json!({ "v": control::PROTOCOL_VERSION, "cmd": "reload" });
    match control::request(&args.paths.socket, &request) {
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
