//! SIGHUP is a reload from the agent's first step: held until the
//! handler exists, then let through.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

fn sighup(how: SigmaskHow) {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    let _ = pthread_sigmask(how, Some(&set), None);
}

/// Blocks SIGHUP in the calling thread and every thread it starts after:
/// see [`release_sighup`].
pub fn hold_sighup() {
    sighup(SigmaskHow::SIG_BLOCK);
}

/// Lets SIGHUP through to this thread, where the handler now waits; one
/// that came while it was held is delivered now.
pub(super) fn release_sighup() {
    sighup(SigmaskHow::SIG_UNBLOCK);
}
