//! Shell completions and man pages, generated from the command line's own
//! definition so they never drift from it.

use std::{path::PathBuf, process::ExitCode};

use clap::CommandFactory as _;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(clap::Args)]
pub struct ManpagesArgs {
    /// Where to write egret.1 and egret-SUBCOMMAND.1.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn completions(args: &CompletionsArgs) -> ExitCode {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "egret", &mut std::io::stdout());
    ExitCode::SUCCESS
}

pub fn manpages(args: &ManpagesArgs) -> ExitCode {
    let cmd = super::Cli::command();
    if let Err(e) = std::fs::create_dir_all(&args.dir) {
        eprintln!("egret manpages: {}: {e}", args.dir.display());
        return ExitCode::from(2);
    }
    // egret.1, then one page per visible subcommand, named as man(1) looks
    // them up: `man egret-lockdown`.
    let mut pages = vec![("egret".to_owned(), cmd.clone())];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| {
        (
            format!("egret-{}", s.get_name()),
            s.clone().name(format!("egret-{}", s.get_name())),
        )
    }));
    for (name, page) in pages {
        let path = args.dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        if let Err(e) = clap_mangen::Man::new(page).render(&mut out) {
            eprintln!("egret manpages: {name}: {e}");
            return ExitCode::from(2);
        }
        if let Err(e) = std::fs::write(&path, out) {
            eprintln!("egret manpages: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
