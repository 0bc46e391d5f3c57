//! `egret doctor`: the runner host checked against what egret needs and
//! what the runner security guides ask.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use egret::{
    control::{self, ControlError},
    datapath::Pins,
    doctor::{self, Finding},
};

use super::Paths;

const GITLAB_CONFIG: &str = "/etc/gitlab-runner/config.toml";
const DOCKER_CONFIG: &str = "/etc/docker/daemon.json";

#[derive(clap::Args)]
pub struct Args {
    /// GitLab Runner's configuration [default: /etc/gitlab-runner/config.toml,
    /// when it exists].
    #[arg(long, value_name = "PATH")]
    pub gitlab_config: Option<PathBuf>,
    /// Docker's daemon configuration [default: /etc/docker/daemon.json; its
    /// defaults when Docker is installed and the file is not there].
    #[arg(long, value_name = "PATH")]
    pub docker_config: Option<PathBuf>,
    /// A GitHub Actions runner's directory (where config.sh ran); repeat
    /// for several [default: /opt/actions-runner and /home/*/actions-runner,
    /// those that exist].
    #[arg(long, value_name = "DIR")]
    pub github_runner: Vec<PathBuf>,
    /// The egret policy, to match runners' cgroup_parent against when no
    /// agent answers.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// `human` (one line per check, with the fix) or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub format: String,
    #[command(flatten)]
    pub paths: Paths,
}

pub fn run(args: &Args) -> ExitCode {
    match findings(args) {
        Ok(findings) => {
            if args.format == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&findings).unwrap_or_default()
                );
            } else {
                print!("{}", doctor::render(&findings));
            }
            ExitCode::from(doctor::exit_code(&findings))
        }
        Err(why) => {
            eprintln!("egret doctor: {why}");
            ExitCode::from(2)
        }
    }
}

fn findings(args: &Args) -> Result<Vec<Finding>, String> {
    let request = serde_json::json!({ "v": control::PROTOCOL_VERSION, "cmd": "status" });
    let (status, answered) = match control::request(&args.paths.socket, &request) {
        Ok((reply, _)) => (serde_json::from_value(reply["status"].clone()).ok(), true),
        Err(ControlError::NoAgent(_)) => {
            let pins = Pins::new(&args.paths.bpffs);
            let status = egret::datapath::Maps::from_pins(&pins).ok().map(|maps| {
                let cgroups = egret::state_dir::recorded_cgroups(&args.paths.state_dir);
                egret::status::from_pins(&maps, &pins, &cgroups, &args.paths.state_dir)
            });
            (status, false)
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut policy: Vec<(String, String)> = status
        .as_ref()
        .map(|s: &egret::status::Status| {
            s.runners
                .iter()
                .filter_map(|r| Some((r.name.clone(), r.cgroup.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    if let Some(path) = &args.policy {
        let loaded = egret::policy::load(path).map_err(|e| e.to_string())?;
        policy = loaded
            .policy
            .runners
            .iter()
            .map(|r| (r.name.clone(), r.cgroup.clone()))
            .collect();
    }
    let host = doctor::host::HostFacts::read(status, answered);
    let systemd_v2 = host.cgroup2.as_deref() == Some("/sys/fs/cgroup")
        && Path::new("/run/systemd/system").is_dir();
    let mut out = doctor::host::check(&host);

    let gitlab = args.gitlab_config.clone().or_else(|| {
        Path::new(GITLAB_CONFIG)
            .exists()
            .then(|| GITLAB_CONFIG.into())
    });
    if let Some(path) = gitlab {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        out.extend(doctor::gitlab::check(&path, &text, &policy));
    }

    let github = if args.github_runner.is_empty() {
        doctor::github::default_dirs(Path::new("/"))
    } else {
        args.github_runner.clone()
    };
    for dir in github {
        out.extend(doctor::github::check(&dir, Path::new("/"), &policy));
    }

    let docker_installed = ["/usr/bin/dockerd", "/usr/sbin/dockerd"]
        .iter()
        .any(|p| Path::new(p).exists());
    let docker = args.docker_config.clone().or_else(|| {
        (docker_installed || Path::new(DOCKER_CONFIG).exists()).then(|| DOCKER_CONFIG.into())
    });
    if let Some(path) = docker {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.docker_config.is_none() => {
                None
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        out.extend(doctor::docker::check(&path, text.as_deref(), systemd_v2));
    }
    Ok(out)
}
