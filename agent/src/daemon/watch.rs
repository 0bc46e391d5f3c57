//! Noticing edits to the policy files without inotify: polled, settled.

use std::path::PathBuf;

use crate::policy;

/// How often the policy files are checked for changes.
pub(super) const POLICY_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Notices edits to the policy file or directory by polling names, sizes,
/// inodes and modification times, and reports a change once it has stopped
/// changing (an editor's write-then-rename, `git checkout` of many files).
pub(super) struct PolicyWatch {
    path: PathBuf,
    applied: Fingerprint,
    pending: Option<Fingerprint>,
}

/// Per file: path, inode, size, mtime seconds and nanoseconds.
type Fingerprint = Vec<(PathBuf, u64, u64, i64, i64)>;

impl PolicyWatch {
    pub(super) fn new(path: &std::path::Path) -> Self {
        let path = path.to_owned();
        let applied = Self::fingerprint(&path);
        Self {
            path,
            applied,
            pending: None,
        }
    }

    /// Over the same files `policy::load` reads; a directory that cannot
    /// be listed fingerprints as empty, which differs from any good state.
    fn fingerprint(path: &std::path::Path) -> Fingerprint {
        use std::os::unix::fs::MetadataExt as _;
        policy::policy_files(path)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| {
                let m = std::fs::metadata(&f).ok()?;
                Some((f, m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
            })
            .collect()
    }

    /// True once after the files changed and then held still for one poll.
    pub(super) fn changed_and_settled(&mut self) -> bool {
        let now = Self::fingerprint(&self.path);
        match self.pending.take() {
            Some(prev) if prev == now => {
                self.applied = now;
                true
            }
            _ if now != self.applied => {
                self.pending = Some(now);
                false
            }
            _ => false,
        }
    }
}
