//! cgroup2 discovery and the mapping between runners and their cgroups.

use crate::{IoError, mountinfo};
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] std::io::Error),
    #[error(
        "no cgroup2 filesystem is mounted; egret needs cgroup v2 (boot with systemd.unified_cgroup_hierarchy=1, \
         or mount it: mount -t cgroup2 none /sys/fs/cgroup)"
    )]
    NoCgroup2,
    #[error(
        "runner '{runner}': cgroup {path} does not exist. Create it before the runner starts jobs \
         (for example with a systemd slice), or start the agent with --create-cgroups"
    )]
    Missing { runner: String, path: PathBuf },
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

/// The mount point of the cgroup2 hierarchy, read from /proc/self/mountinfo
/// (`/sys/fs/cgroup` on most hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let info = mountinfo::read().map_err(CgroupError::MountInfo)?;
    mountinfo::of_type(&info, "cgroup2").ok_or(CgroupError::NoCgroup2)
}

/// Absolute filesystem path of a policy cgroup (`/egret.slice/ci`).
pub fn cgroup_dir(root: &Path, cgroup: &str) -> PathBuf {
    root.join(cgroup.trim_start_matches('/'))
}

/// The cgroup v2 id, which is the inode number of its directory.
pub fn cgroup_id(dir: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|e| IoError::at("stat", dir)(e).into())
}

/// Makes sure a runner's cgroup exists, creating it when asked to.
pub fn ensure_cgroup(runner: &str, dir: &Path, create: bool) -> Result<(), CgroupError> {
    if dir.is_dir() {
        return Ok(());
    }
    if !create {
        return Err(CgroupError::Missing {
            runner: runner.to_owned(),
            path: dir.to_owned(),
        });
    }
    std::fs::create_dir_all(dir).map_err(IoError::at("create cgroup", dir))?;
    Ok(())
}

/// Finds the cgroup with `id` at or below `dir` and returns its path relative
/// to the cgroup2 root. Used to name the job cgroup in events; bounded so a
/// huge tree cannot stall event delivery.
pub fn find_by_id(root: &Path, dir: &Path, id: u64) -> Option<String> {
    walk_cgroups(dir, 10_000, |d| {
        let found = std::fs::metadata(d).is_ok_and(|m| m.ino() == id);
        found.then(|| relative(root, d)).flatten()
    })
}

/// A cgroup directory as policies and events name it: relative to the
/// cgroup2 root, with a leading `/`.
pub fn relative(root: &Path, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.display()))
}

/// Visits `dir` and the cgroups below it, depth first, until `visit`
/// returns something; gives up after `max_visits` cgroups so a huge tree
/// cannot stall the caller.
pub(crate) fn walk_cgroups<T>(
    dir: &Path,
    max_visits: usize,
    mut visit: impl FnMut(&Path) -> Option<T>,
) -> Option<T> {
    let mut stack = vec![dir.to_owned()];
    let mut visits = 0;
    while let Some(d) = stack.pop() {
        visits += 1;
        if visits > max_visits {
            return None;
        }
        if let Some(found) = visit(&d) {
            return Some(found);
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

/// The process of a runner's job that owns a socket.
#[derive(Debug)]
pub struct SocketOwner {
    pub pid: u32,
    pub comm: String,
    pub cgroup_dir: PathBuf,
    pub cgroup_id: u64,
}

/// Finds, among the processes in the cgroup tree at `dir`, the one holding
/// a TCP or UDP socket bound to `local_port` in its network namespace.
/// Bounded, best effort: used to name the process behind a refused DNS
/// query, whose socket is still open while it waits for the answer.
pub fn socket_owner(dir: &Path, tcp: bool, local_port: u16) -> Option<SocketOwner> {
    let tables: &[&str] = if tcp {
        &["tcp", "tcp6"]
    } else {
        &["udp", "udp6"]
    };
    let mut inodes_by_netns: std::collections::HashMap<PathBuf, Vec<u64>> = Default::default();
    walk_cgroups(dir, 2_000, |d| {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let Ok(netns) = std::fs::read_link(proc_dir.join("ns/net")) else {
                continue;
            };
            let inodes = inodes_by_netns.entry(netns).or_insert_with(|| {
                tables
                    .iter()
                    .flat_map(|t| {
                        let table = std::fs::read_to_string(proc_dir.join("net").join(t))
                            .unwrap_or_default();
                        sockets_on_port(&table, local_port)
                    })
                    .collect()
            });
            if inodes.is_empty() || !holds_socket(&proc_dir, inodes) {
                continue;
            }
            let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
            let cgroup_id = std::fs::metadata(d).map(|m| m.ino()).unwrap_or(0);
            return Some(SocketOwner {
                pid,
                comm: comm.trim_end().to_owned(),
                cgroup_dir: d.to_owned(),
                cgroup_id,
            });
        }
        None
    })
}

/// Inodes of the sockets in a `/proc/net/{tcp,udp}[6]` table whose local
/// port is `port`.
fn sockets_on_port(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            (u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

fn holds_socket(proc_dir: &Path, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_sockets_by_local_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
   12: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 424242 2 0000000000000000 0\n\
   13: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 515151 2 0000000000000000 0\n";
        assert_eq!(super::sockets_on_port(table, 0xD431), vec![424242]);
        assert_eq!(super::sockets_on_port(table, 53), vec![515151]);
        assert!(super::sockets_on_port(table, 80).is_empty());
    }
}
