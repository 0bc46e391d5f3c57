//! egret: an eBPF egress firewall for self-hosted CI runners.
//!
//! One module per concern: `policy` reads YAML, `baseline` holds what no
//! policy can open, `runners` maps runners to cgroups, `datapath` owns the
//! pinned programs and maps, `resolver` turns hostnames into addresses,
//! `dnsproxy` answers the jobs' DNS for allowed names only, `events`
//! streams denials, `control` serves the CLI, `lockdown` is incident mode,
//! `daemon` ties them together for `egret agent`.

pub mod baseline;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod dnsproxy;
pub mod events;
pub mod lockdown;
pub mod policy;
pub mod resolver;
pub mod runners;
pub mod status;

/// A filesystem or socket operation that failed: what, where, and why.
/// Every module's error type carries it as its `Io` variant.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct IoError {
    pub op: &'static str,
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// For `map_err`: the operation and the path, waiting for the error.
    pub fn at(
        op: &'static str,
        path: impl AsRef<std::path::Path>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.as_ref().to_owned();
        move |source| Self { op, path, source }
    }
}

/// Default locations; every one can be overridden on the command line so
/// several agents (or tests) can run side by side.
pub mod paths {
    pub const BPFFS: &str = "/sys/fs/bpf/egret";
    pub const SOCKET: &str = "/run/egret/egret.sock";
    pub const STATE_DIR: &str = "/var/lib/egret";
}
