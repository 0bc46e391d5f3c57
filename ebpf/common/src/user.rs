//! Userspace-only glue: `aya::Pod` for every type that crosses a map.

use crate::{
    event::Event,
    maps::{
        Baseline, BaselineEntry, CidrKey, DnsOrigin, ExactKey, Learned, Nat64Entry, PeerKey,
        SockNote,
    },
    rules::{PortRule, PortRules},
    state::{Lockdown, RunnerName, RunnerRecord, RunnerState},
};

// SAFETY: each type is #[repr(C)], Copy, and has explicit padding fields, so
// every byte is initialised and any bit pattern is a valid value.
unsafe impl aya::Pod for PortRule {}
unsafe impl aya::Pod for PortRules {}
unsafe impl aya::Pod for RunnerState {}
unsafe impl aya::Pod for Lockdown {}
unsafe impl aya::Pod for RunnerName {}
unsafe impl aya::Pod for RunnerRecord {}
unsafe impl aya::Pod for CidrKey {}
unsafe impl aya::Pod for ExactKey {}
unsafe impl aya::Pod for Learned {}
unsafe impl aya::Pod for BaselineEntry {}
unsafe impl aya::Pod for Baseline {}
unsafe impl aya::Pod for SockNote {}
unsafe impl aya::Pod for Event {}
unsafe impl aya::Pod for DnsOrigin {}
unsafe impl aya::Pod for Nat64Entry {}
unsafe impl aya::Pod for PeerKey {}
