//! The probe `egret verify` uses to learn, from the kernel itself, whether
//! egret's programs judge the calling process.
//!
//! A UDP `connect()` to [`ADDR_V4`] is answered by the connect hook alone:
//! it rewrites the destination to [`ENFORCING_V4`] or [`AUDITING_V4`] (same
//! port) by the runner's mode, or refuses it with EPERM under a lockdown
//! or for a runner without a policy. Without egret the datagram goes to
//! [`ADDR_V4`] itself, on loopback, where nothing listens. A job cannot
//! fake the rewrite: `verify` binds the answer addresses itself.

/// In 127/8, so without egret the probe never leaves the host.
pub const ADDR_V4: [u8; 4] = [127, 69, 71, 84];
pub const ENFORCING_V4: [u8; 4] = [127, 0, 0, 1];
pub const AUDITING_V4: [u8; 4] = [127, 0, 0, 2];
