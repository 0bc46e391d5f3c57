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
    /// Socket kinds the connect and sendmsg hooks cannot police, allowed by
    /// the runner's `sockets:` setting. Without them `socket()` gets EPERM.
    pub const SOCK_RAW: u32 = 1 << 2;
    pub const SOCK_SCTP: u32 = 1 << 4;
    /// `loopback: allow`: any loopback destination. Neither this nor
    /// LOOPBACK_DENY (the default, `loopback: own`): only listeners created
    /// inside the runner's own cgroup.
    pub const LOOPBACK_ALLOW: u32 = 1 << 5;
    /// `loopback: deny`: no loopback destination at all.
    pub const LOOPBACK_DENY: u32 = 1 << 6;
    /// `multicast: true`: jobs may join multicast groups, whose membership
    /// reports the kernel sends on their behalf.
    pub const MULTICAST: u32 = 1 << 7;
}

/// What the agent configures for a runner. Lockdown lives in a map of its
/// own ([`Lockdown`]) that only `egret lockdown`/`unlock` write, so an agent
/// rewriting a runner's state can never clear a lockdown by accident.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnerState {
    pub flags: u32,
    /// Port of this runner's DNS proxy, 0 while it has none (then every DNS
    /// query of its jobs is refused).
    pub dns_proxy_port: u16,
    pub _pad: u16,
    /// Network namespace cookie of the agent: jobs there reach the proxy on
    /// loopback.
    pub host_netns: u64,
    /// Where jobs in network namespaces of their own (containers) reach the
    /// proxy, IPv4 mapped; all zero when the policy names no such address,
    /// and then their DNS queries are refused.
    pub dns_listen: crate::addr::Addr,
}
const _: () = assert!(core::mem::size_of::<RunnerState>() == 32);

impl RunnerState {
    #[inline(always)]
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Whether `target:port` (normalised) is this runner's DNS proxy: its
    /// port on loopback, or on the address containers reach it at.
    #[inline(always)]
    pub fn is_dns_proxy(&self, target: &crate::addr::Addr, port: u16) -> bool {
        self.dns_proxy_port != 0
            && port == self.dns_proxy_port
            && (crate::addr::is_loopback(target) || *target == self.dns_listen)
    }
}

pub mod lockdown_flags {
    pub const ACTIVE: u32 = 1 << 0;
    /// Keep only allow rules marked `forge` reachable.
    pub const KEEP_FORGE: u32 = 1 << 1;
    /// The lockdown froze the runner's cgroup; ending it thaws.
    pub const FROZE: u32 = 1 << 2;
}

/// Incident mode for one runner (or, at [`GLOBAL_RUNNER`], for all).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lockdown {
    pub flags: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns when it began.
    pub since_ns: u64,
    /// CLOCK_MONOTONIC ns after which it lapses by itself; 0 = never.
    pub until_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Lockdown>() == 24);

impl Lockdown {
    #[inline(always)]
    pub const fn in_force(&self, now_ns: u64) -> bool {
        self.flags & lockdown_flags::ACTIVE != 0 && (self.until_ns == 0 || now_ns < self.until_ns)
    }

    #[inline(always)]
    pub const fn keeps_forge(&self) -> bool {
        self.flags & lockdown_flags::KEEP_FORGE != 0
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
        let mut l = Lockdown {
            flags: lockdown_flags::ACTIVE,
            ..Default::default()
        };
        assert!(l.in_force(5));
        l.until_ns = 10;
        assert!(l.in_force(9));
        assert!(!l.in_force(10));
        assert!(!Lockdown::default().in_force(0));
    }

    #[test]
    fn the_dns_proxy_is_its_port_on_loopback_or_the_listen_address() {
        use crate::addr::mapped_v4;
        let mut s = RunnerState::default();
        assert!(
            !s.is_dns_proxy(&mapped_v4([127, 0, 0, 1]), 0),
            "no proxy yet"
        );
        s.dns_proxy_port = 5300;
        s.dns_listen = mapped_v4([172, 17, 0, 1]);
        assert!(s.is_dns_proxy(&mapped_v4([127, 0, 0, 1]), 5300));
        assert!(s.is_dns_proxy(&crate::addr::LOOPBACK_V6, 5300));
        assert!(s.is_dns_proxy(&mapped_v4([172, 17, 0, 1]), 5300));
        assert!(!s.is_dns_proxy(&mapped_v4([127, 0, 0, 1]), 5301));
        assert!(!s.is_dns_proxy(&mapped_v4([203, 0, 113, 53]), 5300));
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
