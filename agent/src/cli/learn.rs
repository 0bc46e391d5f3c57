//! What `suggest` and `replay` share: reading a recording and saying what
//! was in it.

use std::{path::PathBuf, process::ExitCode};

use egret::learn::recording::Recording;

/// Reads the recording, warning on stderr about every line that was not
/// an event and about events the agent summarised instead of writing.
pub fn read_recording(command: &str, paths: &[PathBuf]) -> Result<Recording, ExitCode> {
    let recording = Recording::read(paths).map_err(|e| {
        eprintln!("egret {command}: {e}");
        ExitCode::from(2)
    })?;
    for skipped in &recording.skipped {
        eprintln!("egret {command}: warning: {skipped}: line skipped");
    }
    if recording.suppressed > 0 {
        eprintln!(
            "egret {command}: warning: the agent summarised {} events instead of writing them \
             (a flood); the recording is incomplete",
            recording.suppressed
        );
    }
    if recording.events.is_empty() {
        eprintln!("egret {command}: no events in {}", listed(paths));
        return Err(ExitCode::from(2));
    }
    Ok(recording)
}

/// The runner asked for, or the recording's only one.
pub fn pick_runner(
    command: &str,
    recording: &Recording,
    asked: Option<&str>,
) -> Result<String, ExitCode> {
    let runners = recording.runners();
    match asked {
        Some(name) if runners.contains(&name) => Ok(name.to_owned()),
        Some(name) => {
            eprintln!(
                "egret {command}: the recording has no events of runner '{name}'; it has: {}",
                runners.join(", ")
            );
            Err(ExitCode::from(1))
        }
        None if runners.len() == 1 => Ok(runners[0].to_owned()),
        None => {
            eprintln!(
                "egret {command}: the recording holds several runners ({}); say which with --runner",
                runners.join(", ")
            );
            Err(ExitCode::from(1))
        }
    }
}

fn listed(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
