//! Per-runner state the programs read on every verdict.

/// Runner ids index [`crate::maps::STATE`]. Id 0 is the host-wide entry that
/// carries a lockdown of every runner at once; runners start at 1.
pub const GLOBAL_RUNNER: u32 = 0;
pub const MAX_RUNNERS: u32 = 256;
/// Longest runner name the pinned name table holds.
pub const RUNNER_NAME_LEN: usize = 64;

pub mod flags {
    /// Set once the agent has written the runner's policy. Until then every
    /// verdict is deny, so a half-configured runner fails closed.
    pub const CONFIGURED: u32 = 1 << 0;
    /// Denials at the lateral and default steps become audited allows.
    pub const AUDIT: u32 = 1 << 1;
    /// Incident mode: deny everything.
    pub const LOCKDOWN: u32 = 1 << 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnerState {
    pub flags: u32,
    /// Port of this runner's DNS proxy on loopback, 0 while it has none.
    pub dns_proxy_port: u16,
    pub _pad: u16,
    /// CLOCK_MONOTONIC ns after which a lockdown lapses by itself; 0 = never.
    pub lockdown_until_ns: u64,
}
const _: () = assert!(core::mem::size_of::<RunnerState>() == 16);

impl RunnerState {
    #[inline(always)]
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    #[inline(always)]
    pub const fn locked_down(&self, now_ns: u64) -> bool {
        self.has(flags::LOCKDOWN)
            && (self.lockdown_until_ns == 0 || now_ns < self.lockdown_until_ns)
    }
}

/// Key of the pinned name table: a runner name, NUL padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerName {
    pub bytes: [u8; RUNNER_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<RunnerName>() == RUNNER_NAME_LEN);

impl RunnerName {
    /// `None` when the name is empty or too long for the table.
    pub fn new(name: &str) -> Option<Self> {
        let src = name.as_bytes();
        if src.is_empty() || src.len() > RUNNER_NAME_LEN {
            return None;
        }
        let mut bytes = [0u8; RUNNER_NAME_LEN];
        bytes[..src.len()].copy_from_slice(src);
        Some(Self { bytes })
    }

    pub fn as_str(&self) -> &str {
        let end = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(RUNNER_NAME_LEN);
        core::str::from_utf8(&self.bytes[..end]).unwrap_or("")
    }
}

/// Value of the pinned name table: the id a runner's programs were built with
/// and the cgroup they were attached to, so a restarted agent (or the lockdown
/// command with no agent at all) finds them again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnerRecord {
    pub id: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<RunnerRecord>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_lapses_at_its_deadline() {
        let mut s = RunnerState {
            flags: flags::CONFIGURED | flags::LOCKDOWN,
            ..Default::default()
        };
        assert!(s.locked_down(5));
        s.lockdown_until_ns = 10;
        assert!(s.locked_down(9));
        assert!(!s.locked_down(10));
    }

    #[test]
    fn names_round_trip_and_are_bounded() {
        assert_eq!(
            RunnerName::new("gitlab-docker").unwrap().as_str(),
            "gitlab-docker"
        );
        assert!(RunnerName::new("").is_none());
        assert!(RunnerName::new(&"x".repeat(RUNNER_NAME_LEN + 1)).is_none());
    }
}
