//! `--events-file`: every event line, also appended to a file that rotates
//! at a size bound (`PATH`, then `PATH.1`), so a record of what jobs did
//! survives the agent and needs no journald.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

pub struct EventFile {
    path: PathBuf,
    max_bytes: u64,
    /// The open file and how many bytes it holds.
    open: Mutex<(File, u64)>,
    warned: AtomicBool,
}

impl EventFile {
    /// Appends to `path` (created if missing); at `max_bytes` it becomes
    /// `path.1`, replacing the one before, so the two hold at most twice
    /// `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        let file = append_to(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes: max_bytes.max(1),
            open: Mutex::new((file, size)),
            warned: AtomicBool::new(false),
        })
    }

    /// Writes one line. A failing disk costs the file its lines, never the
    /// event stream: the first failure is logged, the rest are not.
    pub fn append(&self, line: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let result = (|| {
            if open.1 > 0 && open.1 + line.len() as u64 + 1 > self.max_bytes {
                let rotated = rotated(&self.path);
                std::fs::rename(&self.path, &rotated)?;
                *open = (append_to(&self.path)?, 0);
            }
            open.0.write_all(line.as_bytes())?;
            open.0.write_all(b"\n")?;
            open.1 += line.len() as u64 + 1;
            Ok::<(), io::Error>(())
        })();
        if let Err(e) = result
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the events file; events still go to stdout and followers");
        }
    }
}

fn append_to(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Where a full file goes.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_rotates_at_its_bound_and_keeps_one_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let f = EventFile::open(&path, 100).expect("open");
        for i in 0..30 {
            f.append(&format!("{{\"n\":{i:04}}}"));
        }
        let now = std::fs::read_to_string(&path).expect("current");
        let old = std::fs::read_to_string(rotated(&path)).expect("rotated");
        assert!(
            now.len() <= 100 && old.len() <= 100,
            "{} {}",
            now.len(),
            old.len()
        );
        assert!(now.ends_with("{\"n\":0029}\n"), "{now}");
        // Nothing lost across the rotation: the old file ends where the
        // current one begins.
        let last_old: u32 = old.lines().last().expect("line")[5..9].parse().expect("n");
        let first_now: u32 = now.lines().next().expect("line")[5..9].parse().expect("n");
        assert_eq!(first_now, last_old + 1);
        // A restarted agent goes on appending.
        let again = EventFile::open(&path, 100).expect("reopen");
        again.append("{\"n\":9999}");
        assert!(
            std::fs::read_to_string(&path)
                .expect("read")
                .contains("9999")
        );
    }
}
