//! SIGHUP is a reload from the agent's first step: held until the
//! handler exists, then let through.

/// Blocks SIGHUP in the calling thread and every thread it starts after:
/// see [`release_sighup`].
pub fn hold_sighup() {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGHUP);
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&set),
        None,
    );
}

/// Lets SIGHUP through to this thread, where the handler now waits; one
/// that came while it was held is delivered now.
pub(super) fn release_sighup() {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGHUP);
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_UNBLOCK,
        Some(&set),
        None,
    );
}
