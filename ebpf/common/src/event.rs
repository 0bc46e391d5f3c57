//! Records the programs push into the events ring buffer.

use crate::addr::Addr;

/// Why a destination was refused. Names match the event `reason` field.
pub mod reason {
    pub const NOT_ALLOWED: u8 = 1;
    pub const METADATA: u8 = 2;
    pub const LATERAL: u8 = 3;
    pub const LOCKDOWN: u8 = 4;
    pub const DNS_REFUSED: u8 = 5;
    pub const SOCKET_KIND: u8 = 6;
    /// A refused `setsockopt()`: `proto` holds the level, `port` the
    /// option number.
    pub const SOCKET_OPTION: u8 = 7;
    /// A runner reached its share of the learned-address map, which every
    /// runner shares: the name it asked for got SERVFAIL, and no other
    /// runner noticed.
    pub const QUOTA: u8 = 8;
    /// A job process holding CAP_NET_RAW, CAP_NET_ADMIN or CAP_SYS_ADMIN,
    /// found by the agent's scan: a report, not a denial.
    pub const PRIVILEGED_JOB: u8 = 9;

    /// Whether a denial of this reason is reported through the urgent
    /// ring buffer, which a flood of ordinary denials cannot fill.
    pub const fn urgent(code: u8) -> bool {
        matches!(code, METADATA | LOCKDOWN)
    }

    pub const fn name(code: u8) -> &'static str {
        match code {
            NOT_ALLOWED => "not_allowed",
            METADATA => "metadata",
            LATERAL => "lateral",
            LOCKDOWN => "lockdown",
            DNS_REFUSED => "dns_refused",
            SOCKET_KIND => "socket_kind",
            SOCKET_OPTION => "socket_option",
            QUOTA => "quota",
            PRIVILEGED_JOB => "privileged_job",
            _ => "unknown",
        }
    }
}

pub mod action {
    pub const DENY: u8 = 0;
    /// Audit mode: the connection went through, the event records that it
    /// would have been denied.
    pub const AUDIT: u8 = 1;

    pub const fn name(code: u8) -> &'static str {
        match code {
            AUDIT => "audit",
            _ => "deny",
        }
    }
}

/// The hook that produced an event.
pub mod hook {
    pub const CONNECT4: u8 = 1;
    pub const CONNECT6: u8 = 2;
    pub const SENDMSG4: u8 = 3;
    pub const SENDMSG6: u8 = 4;
    pub const SOCK_CREATE: u8 = 5;
    /// The packet-level backstop.
    pub const EGRESS: u8 = 6;
    /// The agent's DNS proxy (events it writes itself).
    pub const DNS_PROXY: u8 = 7;
    pub const SETSOCKOPT: u8 = 8;
    /// A bind onto a loopback or wildcard address where another runner's
    /// job, or a host service, already listens (`bind4`, `bind6`).
    pub const BIND: u8 = 9;
    /// The agent's look through a runner's processes.
    pub const PROCESS_SCAN: u8 = 10;

    pub const fn name(code: u8) -> &'static str {
        match code {
            DNS_PROXY => "dns_proxy",
            CONNECT4 => "connect4",
            CONNECT6 => "connect6",
            SENDMSG4 => "sendmsg4",
            SENDMSG6 => "sendmsg6",
            SOCK_CREATE => "sock_create",
            EGRESS => "egress",
            SETSOCKOPT => "setsockopt",
            BIND => "bind",
            PROCESS_SCAN => "process_scan",
            _ => "unknown",
        }
    }
}

pub const COMM_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC ns.
    pub time_ns: u64,
    /// cgroup v2 id (inode number) of the task: the job's own cgroup, which
    /// may be a descendant of the runner's.
    pub cgroup_id: u64,
    /// Thread-group id, what userspace calls the pid.
    pub pid: u32,
    pub runner: u32,
    pub port: u16,
    /// 4 or 6: the family of the socket, as the job used it.
    pub family: u8,
    /// IP protocol number (6 tcp, 17 udp, 1/58 icmp); 255 for protocols
    /// above 255 (MPTCP is 262).
    pub proto: u8,
    pub reason: u8,
    pub action: u8,
    pub hook: u8,
    /// `sock_create` events: the socket type (1 stream, 2 dgram, 3 raw, ...).
    pub sock_type: u8,
    /// The destination exactly as the job gave it (v4 sockets: mapped form).
    pub addr: Addr,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<Event>() == 64);
