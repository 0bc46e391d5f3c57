//! egret: an eBPF egress firewall for self-hosted CI runners.
//!
//! One module per concern, in the order data flows through them:
//! - `policy` reads and validates YAML into a `Policy`; `baseline` holds
//!   what no policy can open;
//! - `compile` turns a policy into a `Plan`: what every map must hold;
//! - `datapath` owns the pinned programs and maps and syncs them to a plan
//!   (the verdict the kernel takes on them is `egret_common::verdict`);
//! - `resolver` looks up the policy's hostnames and `dnsproxy` answers the
//!   jobs' DNS for allowed names only; both feed `learned`, the addresses
//!   DNS made reachable;
//! - `events` reads the kernel's denials, names them and fans them out to
//!   subscribers; `control` serves them and the other requests of the CLI;
//! - `lockdown` is incident mode, `status` the report of it all;
//! - `learn` reads recorded events back: the policy jobs needed, and what
//!   a candidate policy would break;
//! - `runners` and `mountinfo` find cgroups, `state_dir` holds what the
//!   agent keeps on disk, `clock` is the kernel's clock;
//! - `daemon` ties them together for `egret agent`.

pub mod baseline;
pub mod budget;
pub mod clock;
pub mod compile;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod dnsproxy;
pub mod docker;
pub mod doctor;
pub mod events;
pub mod jobs;
pub mod learn;
pub mod learned;
pub mod lockdown;
pub mod metrics;
pub mod mountinfo;
pub mod policy;
pub mod privileged;
pub mod resolver;
pub mod runners;
pub mod state_dir;
pub mod status;
pub mod verify;

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
