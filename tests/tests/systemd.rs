//! The agent under a service manager: a datagram socket stands in for
//! systemd's NOTIFY_SOCKET and records what the agent says, in order.
//! READY=1 comes once enforcement is in place, with a STATUS= line; a
//! SIGHUP sent while it starts is a reload, never its end; every reload is
//! RELOADING=1 then READY=1, and a rejected one says so in STATUS= and
//! fails `egret reload` (the unit's ExecReload=); WATCHDOG=1 comes as
//! WatchdogSec= asks; SIGTERM says STOPPING=1.

use std::{
    ffi::OsStr,
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use egret_tests::{
    agent::{Agent, cli},
    privileged,
    scenario::{self, Scenario},
    world,
};

const FORGE: &str = "- cidr: 203.0.113.10/32\n  ports: [443]\n";

/// The service manager's end: every message, as it came.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    /// Messages until one satisfies `done`, or the deadline; returns them.
    fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within 30 s; saw {:?}",
                self.seen
            );
            self.socket
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .unwrap();
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let message = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
            self.seen.push(message.clone());
            let finished = done(&message);
            got.push(message);
            if finished {
                return got;
            }
        }
    }

    /// The non-watchdog messages in `got`.
    fn lifecycle(got: &[String]) -> Vec<String> {
        got.iter()
            .filter(|m| m.as_str() != "WATCHDOG=1")
            .cloned()
            .collect()
    }
}

fn has(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

#[test]
fn the_agent_speaks_the_notify_protocol_in_order() {
    if !privileged("the_agent_speaks_the_notify_protocol_in_order") {
        return;
    }
    let s = Scenario::prepare("enforce", FORGE);
    let path = s.world.path("notify.sock");
    let mut manager = Manager {
        socket: UnixDatagram::bind(&path).expect("bind the notify socket"),
        seen: Vec::new(),
    };
    let mut agent = Agent::spawn_env(
        &s.world,
        &s.pins,
        &s.policy,
        &[],
        &[
            ("NOTIFY_SOCKET", path.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new("400000")),
        ],
        &[],
    );
    // A reload request racing the start: from the moment the agent blocks
    // or catches SIGHUP (its first step), a SIGHUP must be a reload.
    let pid = agent.pid().expect("agent pid");
    egret_tests::poll_until(
        "the agent to take charge of SIGHUP",
        Duration::from_secs(10),
        || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            ["SigBlk:", "SigCgt:"].iter().any(|field| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                    .is_some_and(|mask| mask & 1 != 0)
            })
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let got = manager.until("READY=1", |m| has(m, "READY=1"));
    let ready = got.last().unwrap();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=enforcing 1 runner, policy sha256:")),
        "{ready}"
    );
    agent
        .wait_ready(Duration::from_secs(30))
        .expect("the agent survived a SIGHUP during its start");

    // The reload the SIGHUP asked for, then one through `egret reload`:
    // RELOADING=1 (with the monotonic time systemd wants), then READY=1.
    for _ in 0..2 {
        let reload = std::thread::scope(|scope| {
            let asked = scope.spawn(|| cli(&s.world, &["reload"]));
            let got = manager.until("READY=1 after RELOADING=1", |m| {
                has(m, "READY=1")
                    && Manager::lifecycle(&[m.to_owned()]).len() == 1
                    && m.contains("STATUS=")
            });
            (asked.join().unwrap(), got)
        });
        let (out, got) = reload;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let life = Manager::lifecycle(&got);
        let reloading = life
            .iter()
            .position(|m| has(m, "RELOADING=1"))
            .unwrap_or_else(|| panic!("RELOADING=1 before READY=1: {life:?}"));
        assert!(life[reloading].contains("MONOTONIC_USEC="), "{life:?}");
        assert!(has(life.last().unwrap(), "READY=1"), "{life:?}");
    }

    // A rejected policy: `egret reload` fails, and STATUS says the running
    // policy stays.
    world::write_file(&s.policy, "version: 1\nrunners: [\n");
    let (out, got) = std::thread::scope(|scope| {
        let asked = scope.spawn(|| cli(&s.world, &["reload"]));
        let got = manager.until("READY=1 after a rejected reload", |m| {
            has(m, "READY=1") && m.contains("rejected")
        });
        (asked.join().unwrap(), got)
    });
    assert_ne!(out.code, 0, "a rejected policy fails the reload");
    assert!(
        Manager::lifecycle(&got)
            .iter()
            .any(|m| has(m, "RELOADING=1"))
    );
    assert!(
        got.last().unwrap().contains("running policy kept"),
        "{got:?}"
    );
    world::write_file(
        &s.policy,
        &scenario::policy(&s.runner_cgroup, "enforce", FORGE),
    );

    // WatchdogSec= of 0.4 s: a ping at least every 0.2 s or so.
    let start = Instant::now();
    let pings = manager.until("WATCHDOG=1 three times", {
        let count = std::cell::Cell::new(0);
        move |m| {
            if m == "WATCHDOG=1" {
                count.set(count.get() + 1);
            }
            count.get() == 3
        }
    });
    assert!(start.elapsed() < Duration::from_secs(2), "{pings:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    manager.until("STOPPING=1", |m| has(m, "STOPPING=1"));
    let (code, logs) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{logs}");
}

/// The system calls a `SystemCallFilter=` line allows: its names, and the
/// members of its groups as this machine's systemd lists them.
fn allowed_by(filter: &[String]) -> std::collections::HashSet<String> {
    let mut allowed = std::collections::HashSet::new();
    let mut groups: Vec<String> = Vec::new();
    for item in filter {
        if item.starts_with('@') {
            groups.push(item.clone());
        } else {
            allowed.insert(item.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    while let Some(group) = groups.pop() {
        if !seen.insert(group.clone()) {
            continue;
        }
        let out = std::process::Command::new("systemd-analyze")
            .args(["syscall-filter", &group])
            .output()
            .expect("systemd-analyze syscall-filter");
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let item = line.trim();
            if item.is_empty() || item.starts_with('#') {
                continue;
            }
            if item.starts_with('@') {
                groups.push(item.to_owned());
            } else {
                allowed.insert(item.to_owned());
            }
        }
    }
    allowed
}

/// Every system call the agent makes through a start, a job's DNS lookups,
/// connects and denials, a reload, a status request and a stop is one the
/// unit's `SystemCallFilter=` lets through: under systemd the filter would
/// kill the agent on the first one it does not.
#[test]
fn the_agent_stays_within_the_units_system_call_filter() {
    if !privileged("the_agent_stays_within_the_units_system_call_filter") {
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/systemd/egret.service"
    ))
    .expect("unit file");
    let filter: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .flat_map(|l| l.split_whitespace().map(str::to_owned))
        .collect();
    assert!(!filter.is_empty(), "the unit sets no SystemCallFilter=");
    assert!(
        filter.iter().all(|f| !f.starts_with('~')),
        "deny lists are not modelled here: {filter:?}"
    );
    let allowed = allowed_by(&filter);
    assert!(
        allowed.contains("bpf") && allowed.contains("openat"),
        "{filter:?}"
    );

    let s = Scenario::prepare("enforce", FORGE);
    let trace = s.world.path("agent.strace");
    let mut agent = Agent::spawn_env(
        &s.world,
        &s.pins,
        &s.policy,
        &[],
        &[],
        &[
            OsStr::new("strace"),
            OsStr::new("-f"),
            OsStr::new("-qq"),
            OsStr::new("-o"),
            trace.as_os_str(),
        ],
    );
    agent
        .wait_ready(Duration::from_secs(60))
        .expect("the traced agent becomes ready");
    let o = s.job(&[
        "tcp:203.0.113.10:443",
        "tcp:198.51.100.66:443",
        "dns:registry.test:A:udp@203.0.113.53:53",
        "dns:exfil.attacker.test:A:tcp@203.0.113.53:53",
    ]);
    assert!(o[0].ok() && o[1].eperm(), "{o:?}");
    assert_eq!(cli(&s.world, &["reload"]).code, 0);
    assert_eq!(cli(&s.world, &["status"]).code, 0);
    // strace runs the agent as its child: signal the agent itself.
    let traced =
        std::fs::read_to_string(format!("/proc/{}/task/{0}/children", agent.pid().unwrap()))
            .unwrap_or_default();
    let agent_pid: i32 = traced
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the traced agent's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let (code, logs) = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{logs}");

    let text = std::fs::read_to_string(&trace).expect("the trace");
    let mut used: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && rest[name.len()..].starts_with('(')).then_some(name)
        })
        .collect();
    used.sort();
    used.dedup();
    assert!(
        used.len() > 20,
        "the trace holds the agent's calls: {used:?}"
    );
    let outside: Vec<&String> = used.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        outside.is_empty(),
        "the agent makes system calls SystemCallFilter={} does not allow: {outside:?}",
        filter.join(" ")
    );
}

/// The fields of one entry in journald's native protocol: `KEY=value\n`,
/// or `KEY\n`, a 64-bit little-endian length, the value and `\n`.
fn journal_fields(mut entry: &[u8]) -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    while !entry.is_empty() {
        let Some(end) = entry.iter().position(|b| *b == b'=' || *b == b'\n') else {
            break;
        };
        let key = String::from_utf8_lossy(&entry[..end]).into_owned();
        let rest = &entry[end + 1..];
        let (value, next) = if entry[end] == b'=' {
            let stop = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            (&rest[..stop], stop + 1)
        } else {
            let len = u64::from_le_bytes(rest[..8].try_into().expect("a length")) as usize;
            (&rest[8..8 + len], 8 + len + 1)
        };
        fields.insert(key, String::from_utf8_lossy(value).into_owned());
        entry = rest.get(next..).unwrap_or_default();
    }
    fields
}

/// Under systemd stderr is the journal (JOURNAL_STREAM names it): logs go
/// to journald as native entries with their priority, and stdout keeps
/// nothing but event lines. journald itself cannot run here (no systemd
/// as PID 1), so the agent runs in a mount namespace of its own where
/// /run/systemd/journal/socket is a datagram socket this test reads.
#[test]
fn logs_go_to_the_journal_with_their_levels_and_events_stay_json() {
    if !privileged("logs_go_to_the_journal_with_their_levels_and_events_stay_json") {
        return;
    }
    let s = Scenario::prepare("audit", FORGE);
    let dir = s.world.path("journal");
    std::fs::create_dir_all(&dir).expect("journal dir");
    let journal = UnixDatagram::bind(dir.join("socket")).expect("bind the journal socket");
    journal
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let script = "mount -t tmpfs egret-test /run && mkdir -p /run/systemd/journal \
                  && mount --bind \"$EGRET_JOURNAL_DIR\" /run/systemd/journal \
                  && JOURNAL_STREAM=$(stat -L -c %d:%i /proc/$$/fd/2) && export JOURNAL_STREAM \
                  && exec \"$0\" \"$@\"";
    let agent = Agent::spawn_env(
        &s.world,
        &s.pins,
        &s.policy,
        &[],
        &[("EGRET_JOURNAL_DIR", dir.as_os_str())],
        &[
            OsStr::new("unshare"),
            OsStr::new("--mount"),
            OsStr::new("--propagation"),
            OsStr::new("private"),
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new(script),
        ],
    );
    let mut entries: Vec<std::collections::HashMap<String, String>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 65_536];
    let message = |e: &std::collections::HashMap<String, String>, text: &str| {
        e.get("MESSAGE").is_some_and(|m| m.contains(text))
    };
    while !entries.iter().any(|e| message(e, "egret agent ready")) {
        assert!(
            Instant::now() < deadline,
            "no 'ready' entry in the journal; entries {entries:?}; stderr {}",
            agent.logs()
        );
        if let Ok(n) = journal.recv(&mut buf) {
            entries.push(journal_fields(&buf[..n]));
        }
    }
    // tracing-journald's levels: info is notice (5), warn is warning (4).
    let ready = entries
        .iter()
        .find(|e| message(e, "egret agent ready"))
        .unwrap();
    assert_eq!(
        ready.get("PRIORITY").map(String::as_str),
        Some("5"),
        "{ready:?}"
    );
    let warning = entries
        .iter()
        .find(|e| message(e, "audit mode"))
        .unwrap_or_else(|| panic!("the audit-mode warning: {entries:?}"));
    assert_eq!(
        warning.get("PRIORITY").map(String::as_str),
        Some("4"),
        "{warning:?}"
    );
    assert!(
        agent.logs().trim().is_empty(),
        "nothing on stderr: {}",
        agent.logs()
    );

    // Events: JSON on stdout (the harness fails on any other line).
    let o = s.job(&["tcp:198.51.100.66:443"]);
    assert!(o[0].ok(), "audit mode lets it through: {o:?}");
    let event = agent
        .wait_event(Duration::from_secs(10), |e| e["dst"] == "198.51.100.66")
        .expect("an audit event on stdout");
    assert_eq!(event["action"], "audit");
    assert_eq!(event["schema"], 1);
}
