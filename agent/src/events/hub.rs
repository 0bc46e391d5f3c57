//! Event fan-out: live subscribers plus a bounded memory of recent events,
//! for `egret events` with and without `--follow`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

/// Events kept for `egret events` without `--follow`.
pub const RECENT_EVENTS: usize = 1000;
/// How far a follower may fall behind before it is cut off.
pub const FOLLOW_BACKLOG: usize = 4096;

/// One event as fanned out to subscribers.
pub struct EventLine {
    pub runner: String,
    /// The CI job's id, when the event names one.
    pub job: Option<String>,
    pub json: String,
}

/// Event fan-out: live subscribers plus a bounded memory of recent events.
pub struct Hub {
    tx: broadcast::Sender<Arc<EventLine>>,
    recent: Mutex<VecDeque<Arc<EventLine>>>,
    /// `--events-file`, when given.
    file: Option<super::file::EventFile>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(FOLLOW_BACKLOG).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
            file: None,
        }
    }
}

impl Hub {
    /// A hub that also appends every event to `file`.
    pub fn with_file(file: super::file::EventFile) -> Self {
        Self {
            file: Some(file),
            ..Self::default()
        }
    }

    pub fn publish(&self, line: EventLine) {
        if let Some(file) = &self.file {
            file.append(&line.json);
        }
        let line = Arc::new(line);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(line.clone());
        }
        // No subscriber is not an error.
        let _ = self.tx.send(line);
    }

    pub fn recent(&self) -> Vec<Arc<EventLine>> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// A live feed of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventLine>> {
        self.tx.subscribe()
    }
}
