//! Where egret's pins live: bpffs, the versioned directory layout, and
//! teardown, the one way enforcement ends.

use crate::IoError;
use std::path::{Path, PathBuf};

use egret_common::ABI_VERSION;

use super::*;

pub(super) const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Where egret's pins live.
#[derive(Clone, Debug)]
pub struct Pins {
    pub root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn abi_dir(&self) -> PathBuf {
        self.root.join(format!("v{ABI_VERSION}"))
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.abi_dir().join("maps")
    }
    pub fn links_dir(&self) -> PathBuf {
        self.abi_dir().join("links")
    }
    pub fn runner_links_dir(&self, id: u32) -> PathBuf {
        self.links_dir().join(id.to_string())
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
}

/// The filesystem's magic number. glibc types it signed, musl unsigned.
fn statfs_type(path: &Path) -> Option<u64> {
    nix::sys::statfs::statfs(path)
        .ok()
        .and_then(|s| u64::try_from(s.filesystem_type().0).ok())
}

/// Makes `root` a directory on a bpffs: fine as it is when it already is one
/// (or sits below a mounted bpffs such as /sys/fs/bpf); otherwise a private
/// bpffs is mounted right there.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    if statfs_type(root) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let existing_ancestor = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    std::fs::create_dir_all(root).map_err(IoError::at("create", root))?;
    if existing_ancestor != root && statfs_type(existing_ancestor) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    use nix::mount::{MsFlags, mount};
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| IoError::at("mount bpffs on", root)(e.into()))?;
    tracing::info!(path = %root.display(), "mounted a bpffs for egret's pins");
    if private_mount_namespace() {
        tracing::warn!(
            path = %root.display(),
            "this bpffs was mounted inside a private mount namespace (a sandboxed service?); \
             if that namespace goes away, so do the pins and enforcement. Mount bpffs on the host \
             (mount -t bpf bpf /sys/fs/bpf) before starting the agent"
        );
    }
    Ok(())
}

/// Whether this process runs in another mount namespace than PID 1.
fn private_mount_namespace() -> bool {
    let ns = |p: &str| std::fs::read_link(p).ok();
    match (ns("/proc/self/ns/mnt"), ns("/proc/1/ns/mnt")) {
        (Some(mine), Some(init)) => mine != init,
        _ => false,
    }
}

/// The pin directories another egret ABI left under `root` (`v<N>` other
/// than this one's): an upgrade's predecessor.
fn other_abi_dirs(pins: &Pins) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(&pins.root) else {
        return Vec::new();
    };
    let ours = pins.abi_dir();
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p != &ours
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix('v'))
                    .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                // Only what egret made: its state map or its links.
                && (p.join("maps").join(names::STATE).exists() || p.join("links").exists())
        })
        .collect()
}

/// Removes a pin directory, links first, so no program outlives the maps
/// it was judged against.
fn remove_abi_dir(dir: &Path) -> Result<()> {
    let links = dir.join("links");
    if links.exists() {
        std::fs::remove_dir_all(&links).map_err(IoError::at("remove", &links))?;
    }
    std::fs::remove_dir_all(dir).map_err(IoError::at("remove", dir))?;
    Ok(())
}

/// Detaches what an older (or newer) egret ABI left attached: its links
/// would go on enforcing the policy of the day the upgrade happened, which
/// no reload reaches. Called once this agent's own programs are attached,
/// so no runner has an unguarded moment. Returns the directories removed.
pub fn retire_other_abis(pins: &Pins) -> Result<Vec<PathBuf>> {
    let mut retired = Vec::new();
    for dir in other_abi_dirs(pins) {
        remove_abi_dir(&dir)?;
        retired.push(dir);
    }
    Ok(retired)
}

/// Removes every pin egret made under `root` (of every ABI) and, if egret
/// mounted the bpffs there, unmounts it. Unpinning the links detaches the
/// programs: this is the one way enforcement ends.
pub fn teardown(pins: &Pins) -> Result<bool> {
    let abi = pins.abi_dir();
    let others = other_abi_dirs(pins);
    let had_state = abi.exists() || !others.is_empty();
    for dir in others {
        remove_abi_dir(&dir)?;
    }
    if abi.exists() {
        remove_abi_dir(&abi)?;
    }
    if crate::mountinfo::is_mount_point(&pins.root) && statfs_type(&pins.root) == Some(BPF_FS_MAGIC)
    {
        let _ = nix::mount::umount2(&pins.root, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&pins.root);
    } else if pins.root.exists() {
        let _ = std::fs::remove_dir(&pins.root);
    }
    Ok(had_state)
}
