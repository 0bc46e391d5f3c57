//! One-instruction BPF programs attached to a test cgroup, loaded with raw
//! bpf(2) calls: a program that only returns a verdict needs no object
//! file. The benchmarks measure the floor with one; the upgrade test plays
//! an older egret's programs with one.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Where a program attaches: its program type and attach type.
#[derive(Clone, Copy)]
pub struct Hook {
    prog_type: u32,
    attach_type: u32,
}

/// `cgroup/sock_create`.
pub const SOCK_CREATE: Hook = Hook {
    prog_type: 9,
    attach_type: 2,
};
/// `cgroup/connect4`.
pub const CONNECT4: Hook = Hook {
    prog_type: 18,
    attach_type: 10,
};
/// `cgroup/setsockopt`.
pub const SETSOCKOPT: Hook = Hook {
    prog_type: 25,
    attach_type: 22,
};
/// `cgroup_skb/egress`.
pub const EGRESS: Hook = Hook {
    prog_type: 8,
    attach_type: 1,
};

/// A program attached to a cgroup through a link, until dropped (or, once
/// pinned, until its pin is removed).
pub struct Attached {
    pub id: u32,
    _prog: OwnedFd,
    link: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<OwnedFd> {
    // SAFETY: the attr buffer outlives the call and is sized as the
    // kernel's union for every command used here.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned, owned only here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `return verdict;` for `hook`, named `name`, and attaches it to
/// the cgroup at `cgroup_dir`.
pub fn attach_returning(hook: Hook, verdict: u8, name: &str, cgroup_dir: &Path) -> Attached {
    // mov r0, verdict; exit
    let insns: [u64; 2] = [u64::from_le_bytes([0xb7, 0, 0, 0, verdict, 0, 0, 0]), 0x95];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = u64::from(hook.prog_type) | (2 << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    {
        let bytes: &mut [u8; 128] =
            // SAFETY: [u64; 16] and [u8; 128] have the same size; u8 has no
            // alignment needs.
            unsafe { &mut *attr.as_mut_ptr().cast::<[u8; 128]>() };
        // prog_name at byte 48 (15 bytes and a NUL), expected_attach_type
        // at 68.
        let name = &name.as_bytes()[..name.len().min(15)];
        bytes[48..48 + name.len()].copy_from_slice(name);
        bytes[68..72].copy_from_slice(&hook.attach_type.to_ne_bytes());
    }
    let prog = bpf(BPF_PROG_LOAD, &mut attr).expect("load a one-instruction program");
    let cgroup = std::fs::File::open(cgroup_dir).expect("open the cgroup");
    let mut attr = [0u64; 16];
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(cgroup.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(hook.attach_type);
    let link = bpf(BPF_LINK_CREATE, &mut attr).expect("attach it to the cgroup");
    // struct bpf_prog_info begins with type, then id.
    let mut info = [0u32; 64];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (256 << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: as in `bpf`; this command returns 0, not a descriptor.
    let got = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            128usize,
        )
    };
    assert_eq!(got, 0, "the program's info");
    Attached {
        id: info[1],
        _prog: prog,
        link,
    }
}

impl Attached {
    /// Pins the link at `path` (on a bpffs): it then outlives this process.
    pub fn pin_link(&self, path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        let mut attr = [0u64; 16];
        attr[0] = c.as_ptr() as u64;
        attr[1] = u64::from(self.link.as_raw_fd() as u32);
        // SAFETY: as in `bpf`; this command returns 0, not a descriptor.
        let got = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_mut_ptr(), 128usize) };
        assert_eq!(
            got,
            0,
            "pin {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}
