//! The jobs each runner ran lately and how often each was denied, for
//! `egret status`.

use std::{collections::HashMap, sync::Mutex};

use serde::{Deserialize, Serialize};

use super::JobIdentity;

/// Jobs remembered per runner; the one denied longest ago goes first.
pub const JOBS_KEPT: usize = 10;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecentJob {
    pub job: JobIdentity,
    /// Denials (and audits) reported for the job since the agent started.
    pub denials: u64,
    /// RFC 3339 time of the latest.
    pub last: String,
}

#[derive(Default)]
pub struct RecentJobs {
    by_runner: Mutex<HashMap<String, Vec<RecentJob>>>,
}

impl RecentJobs {
    /// Counts one denial of `job` on `runner`, at `time` (RFC 3339).
    pub fn note(&self, runner: &str, job: &JobIdentity, time: &str) {
        let mut by_runner = self.by_runner.lock().unwrap_or_else(|e| e.into_inner());
        let jobs = by_runner.entry(runner.to_owned()).or_default();
        let at = match jobs.iter().position(|r| r.job == *job) {
            Some(i) => i,
            None => {
                if jobs.len() == JOBS_KEPT {
                    jobs.remove(0);
                }
                jobs.push(RecentJob {
                    job: job.clone(),
                    denials: 0,
                    last: String::new(),
                });
                jobs.len() - 1
            }
        };
        let mut entry = jobs.remove(at);
        entry.denials += 1;
        entry.last = time.to_owned();
        jobs.push(entry);
    }

    /// A runner's jobs, the latest denied last.
    pub fn of(&self, runner: &str) -> Vec<RecentJob> {
        self.by_runner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(runner)
            .cloned()
            .unwrap_or_default()
    }
}
