//! What the agent tells its service manager, through the notify protocol
//! (sd-notify): READY=1 once enforcement is in place, RELOADING=1 and
//! READY=1 around a reload, a one-line STATUS=, and WATCHDOG=1 while the
//! main loop turns, when the unit sets WatchdogSec=. Outside systemd
//! (no NOTIFY_SOCKET) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

pub struct Systemd {
    /// Half the unit's WatchdogSec=, when it sets one.
    watchdog: Option<Duration>,
}

impl Systemd {
    /// As sd_watchdog_enabled(3): WATCHDOG_USEC asks for pings, unless a
    /// WATCHDOG_PID names another process. (sd-notify's own check also
    /// refuses when WATCHDOG_PID is unset, which the man page allows.)
    pub fn from_env() -> Self {
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.parse() == Ok(std::process::id()));
        let watchdog = usec
            .filter(|_| ours)
            .map(|usec| Duration::from_micros(usec / 2))
            .filter(|d| !d.is_zero());
        Self { watchdog }
    }

    /// How often to send WATCHDOG=1, if the unit asks for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Before a reload: systemd holds `systemctl reload` until READY=1.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self) {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping; enforcement stays pinned"),
        ]);
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}
