//! A cgroup link made and pinned with bpf(2) itself, for the one program
//! kind whose aya link cannot become a pinnable `FdLink` (aya 0.14 has no
//! conversion for `cgroup/setsockopt` links). Pinned, the link keeps the
//! program attached with no agent, like every other egret link.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: `BPF_CGROUP_SETSOCKOPT`.
pub const CGROUP_SETSOCKOPT: u32 = 22;

/// `bpf(cmd, attr, size)`; `attr` is the command's part of `union bpf_attr`.
fn bpf(cmd: libc::c_long, attr: &[u32]) -> io::Result<i64> {
    // SAFETY: `attr` is a live, initialised buffer of the size passed; the
    // kernel reads no more than that and treats it as the command's
    // attribute struct, whose layout the callers build.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `BPF_LINK_CREATE` of `prog` on the cgroup `target`: the new link's fd.
pub fn create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    // prog_fd, target_fd, attach_type, flags, then the unused unions.
    let attr = [
        prog.as_raw_fd() as u32,
        target.as_raw_fd() as u32,
        attach_type,
        0,
        0,
        0,
        0,
        0,
    ];
    let fd = bpf(BPF_LINK_CREATE, &attr)?;
    // SAFETY: the kernel just returned this descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_PIN` of a link at `path` on a bpffs.
pub fn pin(link: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let pointer = path.as_ptr() as u64;
    // pathname (u64), bpf_fd, file_flags, path_fd.
    let attr = [
        pointer as u32,
        (pointer >> 32) as u32,
        link.as_raw_fd() as u32,
        0,
        0,
        0,
    ];
    bpf(BPF_OBJ_PIN, &attr).map(|_| ())
}
