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

/// Removes every pin egret made under `root` and, if egret mounted the bpffs
/// there, unmounts it. Unpinning the links detaches the programs: this is the
/// one way enforcement ends.
pub fn teardown(pins: &Pins) -> Result<bool> {
    let abi = pins.abi_dir();
    let had_state = abi.exists();
    if had_state {
        // Links first, so no program outlives the maps it was judged against.
        let links = pins.links_dir();
        if links.exists() {
            std::fs::remove_dir_all(&links).map_err(IoError::at("remove", &links))?;
        }
        std::fs::remove_dir_all(&abi).map_err(IoError::at("remove", &abi))?;
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
