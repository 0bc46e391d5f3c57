//! `egret verify`: whether egret's kernel programs hold the calling
//! process, asked of the kernel itself (`egret_common::probe`), with no
//! agent, no socket and no file the job could write.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use egret_common::probe;

/// What the probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// egret judges this process's connections and enforces its policy.
    Enforcing,
    /// egret judges them but only reports (an audit-mode runner).
    Auditing,
    /// egret holds this process and refuses it everything: a lockdown, or
    /// a runner the agent has not configured yet.
    Refused,
    /// No egret program judged the probe: the process is not under egret.
    NotHeld,
}

impl Held {
    /// The one line `egret verify` prints.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Enforcing => "egret enforces its policy on this process",
            Self::Auditing => {
                "egret only audits this process (its runner is in audit mode): nothing is refused"
            }
            Self::Refused => {
                "egret refuses this process everything: its runner is under lockdown, or has no policy yet"
            }
            Self::NotHeld => {
                "this process is not under egret: no egret program judged its connections (agent never started, runner cgroup not attached, or the job runs outside it)"
            }
        }
    }
}

/// Asks the kernel, waiting at most `wait` for the answer to arrive.
pub fn probe(wait: Duration) -> io::Result<Held> {
    let (enforcing, auditing) = answer_sockets()?;
    let port = enforcing.local_addr()?.port();
    let asker = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    match asker.connect(SocketAddrV4::new(Ipv4Addr::from(probe::ADDR_V4), port)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => return Ok(Held::Refused),
        Err(e) => return Err(e),
    }
    // Each run sends a token of its own, so nothing left over from another
    // run can pass for the answer.
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).map_err(|e| io::Error::other(e.to_string()))?;
    // Without egret nothing listens at the probe address: loopback answers
    // "port unreachable" at once, and the asker's socket says so.
    let _ = asker.send(&token);
    for s in [&enforcing, &auditing, &asker] {
        s.set_nonblocking(true)?;
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 32];
    loop {
        for (socket, held) in [(&enforcing, Held::Enforcing), (&auditing, Held::Auditing)] {
            if let Ok(n) = socket.recv(&mut buf)
                && buf[..n] == token
            {
                return Ok(held);
            }
        }
        let refused = match asker.recv(&mut buf) {
            Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
            Ok(_) => false,
        };
        if refused || Instant::now() >= deadline {
            return Ok(Held::NotHeld);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sockets on both answer addresses, on one port.
fn answer_sockets() -> io::Result<(UdpSocket, UdpSocket)> {
    let mut last = None;
    for _ in 0..16 {
        let enforcing = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::from(probe::ENFORCING_V4), 0))?;
        let port = enforcing.local_addr()?.port();
        match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::from(probe::AUDITING_V4), port)) {
            Ok(auditing) => return Ok((enforcing, auditing)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port on loopback")))
}
