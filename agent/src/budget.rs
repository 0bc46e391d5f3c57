//! A per-runner, per-second budget: how often one runner may have
//! something done for it (a /proc scan naming the process behind a refused
//! query, an event reported one by one), so no runner can make the agent
//! spin or flood its outputs. What the budget refused is counted, for
//! summaries.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct PerRunnerBudget {
    per_second: u32,
    /// Runner → the start of its current second, what it used in it, and
    /// what was refused since the last [`Self::take_refused`].
    windows: Mutex<HashMap<u32, (Instant, u32, u64)>>,
}

impl PerRunnerBudget {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            windows: Mutex::default(),
        }
    }

    /// Whether `runner` may have one more now; a refusal is counted.
    pub fn allow(&self, runner: u32, now: Instant) -> bool {
        let mut all = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (since, used, refused) = all.entry(runner).or_insert((now, 0, 0));
        if now.duration_since(*since) >= Duration::from_secs(1) {
            (*since, *used) = (now, 0);
        }
        if *used < self.per_second {
            *used += 1;
            true
        } else {
            *refused += 1;
            false
        }
    }

    /// What `runner` was refused since the last call.
    pub fn take_refused(&self, runner: u32) -> u64 {
        let mut all = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        all.get_mut(&runner)
            .map_or(0, |(_, _, refused)| std::mem::take(refused))
    }
}
