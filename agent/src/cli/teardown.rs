//! `egret teardown`: the one way enforcement ends.

use std::process::ExitCode;

use egret::datapath::{self, Pins};

use super::{Paths, chain};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: Paths,
}

pub fn run(args: &Args) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("egret teardown: must run as root");
        return ExitCode::from(2);
    }
    match datapath::teardown(&Pins::new(&args.paths.bpffs)) {
        Ok(true) => {
            println!(
                "egret: removed all programs, links and maps under {}; jobs are unrestricted",
                args.paths.bpffs.display()
            );
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!(
                "egret: nothing to remove under {}",
                args.paths.bpffs.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egret teardown: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}
