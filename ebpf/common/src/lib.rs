//! The contract between egret's kernel programs and its agent.
//!
//! Everything the two sides must agree on lives here: map names, capacities,
//! key and value layouts, flag bits and reason codes. Types are `#[repr(C)]`
//! with explicit padding so that no byte of a key is left undefined (an
//! undefined byte in a hash key silently turns lookups into misses).
//!
//! Addresses are always stored as 16 bytes in network order. IPv4 addresses use
//! the IPv4-mapped form `::ffff:a.b.c.d`, so one map and one lookup serve both
//! families and a v6 socket aimed at a mapped address meets the same verdict as
//! a v4 socket aimed at the plain one.
#![no_std]

pub mod addr;
pub mod event;
pub mod maps;
#[cfg(feature = "object")]
pub mod object;
pub mod probe;
pub mod programs;
pub mod rules;
pub mod sockopt;
pub mod state;
pub mod verdict;

#[cfg(feature = "user")]
mod user;

/// Bumped whenever a layout below changes, so an upgraded agent never reads a
/// pinned map written with another layout: pins live in a directory named
/// after this version.
pub const ABI_VERSION: u32 = 6;

/// Ports with a meaning of their own to the programs.
pub mod port {
    /// DNS: every query a job sends, to any address, goes to its runner's
    /// proxy instead.
    pub const DNS: u16 = 53;
    /// DNS over TLS: never opened by a rule that does not name it.
    pub const DOT: u16 = 853;
}
