// Empty on purpose: this lets the agent list the eBPF crate as a
// build-dependency, so cargo rebuilds the agent when the programs change.
#![no_std]
