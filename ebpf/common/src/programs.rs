//! The kernel programs by name: what the agent loads, attaches and pins
//! (the link pin files are named after them).

pub const CONNECT4: &str = "egret_connect4";
pub const CONNECT6: &str = "egret_connect6";
pub const SENDMSG4: &str = "egret_sendmsg4";
pub const SENDMSG6: &str = "egret_sendmsg6";
pub const RECVMSG4: &str = "egret_recvmsg4";
pub const RECVMSG6: &str = "egret_recvmsg6";
pub const GETPEERNAME4: &str = "egret_getpeername4";
pub const GETPEERNAME6: &str = "egret_getpeername6";
pub const SOCK_CREATE: &str = "egret_sock_create";
pub const POST_BIND4: &str = "egret_post_bind4";
pub const POST_BIND6: &str = "egret_post_bind6";
/// `cgroup/bind4`, `cgroup/bind6`: no joining a listener that is not the
/// runner's own (`SO_REUSEPORT`).
pub const BIND4: &str = "egret_bind4";
pub const BIND6: &str = "egret_bind6";
/// The packet-level backstop (`cgroup_skb/egress`).
pub const EGRESS: &str = "egret_egress";
/// `cgroup/setsockopt`: options that would carry data past the hooks.
pub const SETSOCKOPT: &str = "egret_setsockopt";

/// Every program, in the order the agent attaches them.
pub const ALL: [&str; 15] = [
    CONNECT4,
    CONNECT6,
    SENDMSG4,
    SENDMSG6,
    RECVMSG4,
    RECVMSG6,
    GETPEERNAME4,
    GETPEERNAME6,
    SOCK_CREATE,
    BIND4,
    BIND6,
    POST_BIND4,
    POST_BIND6,
    SETSOCKOPT,
    EGRESS,
];
