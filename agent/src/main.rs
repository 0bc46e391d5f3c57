use std::{io::IsTerminal as _, os::unix::fs::MetadataExt as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _};

mod cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let default = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Under systemd, logs go to the journal with their levels, as
    // structured entries; events stay JSON lines on stdout, so
    // `journalctl -o cat` shows them clean.
    let journald = stderr_is_journal()
        .then(|| tracing_journald::layer().ok())
        .flatten();
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init(),
        None => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .init(),
    }
    cli::run(cli)
}

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM`
/// names its device and inode (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
