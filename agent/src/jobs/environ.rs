//! A job's identity from the CI system's variables in a process's
//! environment (NUL-separated `KEY=VALUE`, as `/proc/<pid>/environ` holds).

use super::{JobIdentity, Source};

/// The job these variables describe, GitLab's or GitHub's; `None` when
/// they name none.
pub fn from_environ(environ: &[u8]) -> Option<JobIdentity> {
    let vars: std::collections::HashMap<&str, &str> = environ
        .split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter(|entry| entry.starts_with("CI_") || entry.starts_with("GITHUB_"))
        .filter_map(|entry| entry.split_once('='))
        .collect();
    let get = |k: &str| {
        vars.get(k)
            .map(|v| (*v).to_owned())
            .filter(|v| !v.is_empty())
    };
    if let Some(id) = get("CI_JOB_ID") {
        return Some(JobIdentity {
            ci: "gitlab".into(),
            id,
            name: get("CI_JOB_NAME"),
            url: get("CI_JOB_URL"),
            project: get("CI_PROJECT_PATH"),
            pipeline: get("CI_PIPELINE_ID"),
            git_ref: get("CI_COMMIT_REF_NAME"),
            source: Source::Environ,
        });
    }
    let run = get("GITHUB_RUN_ID")?;
    let repository = get("GITHUB_REPOSITORY");
    let url = match (get("GITHUB_SERVER_URL"), &repository) {
        (Some(server), Some(repo)) => Some(format!(
            "{}/{repo}/actions/runs/{run}",
            server.trim_end_matches('/')
        )),
        _ => None,
    };
    Some(JobIdentity {
        ci: "github".into(),
        id: run.clone(),
        name: get("GITHUB_JOB"),
        url,
        project: repository,
        pipeline: Some(run),
        git_ref: get("GITHUB_REF_NAME"),
        source: Source::Environ,
    })
}
