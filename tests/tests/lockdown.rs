//! Incident lockdown: instant, agent-independent, recorded.

use std::time::{Duration, Instant};

use egret_tests::{
    agent::{cli, cli_wrapped},
    privileged,
    scenario::Scenario,
    world::{self, World},
};

const ALLOW: &str = "\
- cidr: 203.0.113.10/32
  ports: [443]
  proto: tcp
  forge: true
- host: registry.test
  ports: [443]
";

#[test]
fn lockdown_denies_at_once_and_unlock_restores() {
    if !privileged("lockdown_denies_at_once_and_unlock_restores") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    assert!(s.job(&["tcp:203.0.113.20:443"])[0].ok());

    let out = cli(
        &s.world,
        &[
            "lockdown",
            "--runner",
            "ci",
            "--reason",
            "suspected compromise",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let returned = Instant::now();
    // The very first connect after the command returns is refused: the map
    // write completed before it returned.
    let first = &s.job(&["tcp:203.0.113.20:443"])[0];
    let elapsed = returned.elapsed();
    assert!(first.eperm(), "first connect after lockdown: {first:?}");
    eprintln!(
        "first EPERM observed {elapsed:?} after the command returned (includes spawning the job)"
    );
    assert!(out.stdout.contains("LOCKDOWN of ci"), "{}", out.stdout);

    let o = s.job(&[
        "tcp:203.0.113.10:443",
        "tcp:127.0.0.1:9",
        "udp-sendto:198.51.100.66:53",
    ]);
    assert!(
        o.iter().all(|o| o.eperm()),
        "everything is denied, loopback included: {o:?}"
    );
    let ev = s
        .wait_event(|e| e["reason"] == "lockdown")
        .expect("lockdown event");
    assert_eq!(ev["runner"], "ci");

    let out = cli(&s.world, &["unlock", "--runner", "ci"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let o = s.job(&["tcp:203.0.113.20:443", "tcp:203.0.113.10:443"]);
    assert!(o.iter().all(|o| o.ok()), "after unlock: {o:?}");

    let status = cli(&s.world, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    let log = v["recent_lockdowns"].as_array().expect("audit entries");
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["action"], "lockdown");
    assert_eq!(log[0]["reason"], "suspected compromise");
    assert_eq!(log[0]["user"], "root");
    assert_eq!(log[1]["action"], "unlock");
}

#[test]
fn keep_forge_leaves_only_the_forge() {
    if !privileged("keep_forge_leaves_only_the_forge") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let out = cli(&s.world, &["lockdown", "--keep-forge"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let o = s.job(&[
        "tcp:203.0.113.10:443",
        "tcp:203.0.113.20:443",
        "tcp:169.254.169.254:80",
        "tcp:10.0.0.5:22",
    ]);
    assert!(o[0].ok(), "the forge stays reachable: {:?}", o[0]);
    assert!(o[1].eperm() && o[2].eperm() && o[3].eperm(), "{o:?}");
    assert_eq!(cli(&s.world, &["unlock"]).code, 0);
    assert!(s.job(&["tcp:203.0.113.20:443"])[0].ok());
}

#[test]
fn lockdown_works_without_an_agent_and_a_new_agent_keeps_it() {
    if !privileged("lockdown_works_without_an_agent_and_a_new_agent_keeps_it") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    s.kill_agent();
    let out = cli(&s.world, &["lockdown", "--runner", "ci"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(s.job(&["tcp:203.0.113.10:443"])[0].eperm());

    let status = cli(&s.world, &["status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert!(v["agent"].is_null(), "no agent: {v}");
    assert!(v["runners"][0]["lockdown"].is_object(), "{v}");

    s.start_agent();
    assert!(
        s.job(&["tcp:203.0.113.10:443"])[0].eperm(),
        "a new agent keeps the lockdown"
    );
    let v: serde_json::Value =
        serde_json::from_str(&cli(&s.world, &["status", "--json"]).stdout).expect("json");
    assert!(v["agent"].is_object());
    assert!(v["runners"][0]["lockdown"].is_object(), "{v}");
    assert_eq!(cli(&s.world, &["unlock"]).code, 0);
    assert!(s.job(&["tcp:203.0.113.10:443"])[0].ok());
}

#[test]
fn freeze_stops_the_job_in_place_and_unlock_thaws_it() {
    if !privileged("freeze_stops_the_job_in_place_and_unlock_thaws_it") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let job = s.start_job(&["sleep:200", "tcp:203.0.113.10:443"]);
    let out = cli(&s.world, &["lockdown", "--runner", "ci", "--freeze"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("froze"), "{}", out.stdout);
    let events =
        std::fs::read_to_string(s.cgroup.dir("ci").join("cgroup.events")).expect("cgroup.events");
    let frozen_deadline = Instant::now() + Duration::from_secs(5);
    let mut frozen = events.contains("frozen 1");
    while !frozen && Instant::now() < frozen_deadline {
        std::thread::sleep(Duration::from_millis(50));
        frozen = std::fs::read_to_string(s.cgroup.dir("ci").join("cgroup.events"))
            .unwrap_or_default()
            .contains("frozen 1");
    }
    assert!(frozen, "the runner cgroup is frozen");
    let out = cli(&s.world, &["unlock", "--runner", "ci"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("thawed"), "{}", out.stdout);
    let o = job.wait();
    assert!(
        o[1].ok(),
        "after thaw the job goes on, and is unlocked: {o:?}"
    );
}

#[test]
fn a_lockdown_with_a_deadline_lapses_by_itself() {
    if !privileged("a_lockdown_with_a_deadline_lapses_by_itself") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    assert_eq!(cli(&s.world, &["lockdown", "--for", "2s"]).code, 0);
    assert!(s.job(&["tcp:203.0.113.10:443"])[0].eperm());
    let deadline = Instant::now() + Duration::from_secs(8);
    while !s.job(&["tcp:203.0.113.10:443"])[0].ok() {
        assert!(Instant::now() < deadline, "lockdown --for 2s did not lapse");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The agent notices and records the expiry.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&cli(&s.world, &["status", "--json"]).stdout).expect("json");
        if v["recent_lockdowns"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["action"] == "expired"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "expiry not recorded: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn unknown_runner_is_a_user_error() {
    if !privileged("unknown_runner_is_a_user_error") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let out = cli(&s.world, &["lockdown", "--runner", "nope"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no runner named 'nope'") && out.stderr.contains("known: ci"),
        "{}",
        out.stderr
    );
}

#[test]
fn lockdown_ends_connections_opened_before_it() {
    if !privileged("lockdown_ends_connections_opened_before_it") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    // Connected, banner read, then waiting for more for up to 20 s: the
    // lockdown lands while it waits, and the wait ends with the error.
    let held = s.start_job(&["tcp-wait:203.0.113.10:443:20000"]);
    s.world.wait_established("203.0.113.10:443");
    let out = cli(&s.world, &["lockdown", "--runner", "ci"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("ended 1 open connection of the jobs"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("walking"),
        "found through the job's own descriptor, with no table walk: {}",
        out.stdout
    );
    // (The lockdown may land before the job has read the fixture's banner;
    // the read it is in then ends.)
    let held = &held.wait()[0];
    assert_eq!(
        held.errno,
        Some(libc::ECONNABORTED),
        "connected before the lockdown, then ended by it, not by a timeout: {held:?}"
    );
    // With --keep-forge, a connection to the forge keeps working.
    assert_eq!(cli(&s.world, &["unlock"]).code, 0);
    let held = s.start_job(&["tcp-hold:203.0.113.10:443:1500"]);
    s.world.wait_established("203.0.113.10:443");
    let out = cli(&s.world, &["lockdown", "--keep-forge"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("kept 1 to the forge"), "{}", out.stdout);
    let held = &held.wait()[0];
    assert!(
        held.ok(),
        "the forge connection survives --keep-forge: {held:?}"
    );
}

/// A connect whose handshake is in flight when the lockdown lands (its SYN
/// unanswered: the fixture drops it) fails at once with ECONNABORTED,
/// rather than at the end of its own timeout.
#[test]
fn lockdown_ends_a_handshake_in_flight() {
    if !privileged("lockdown_ends_a_handshake_in_flight") {
        return;
    }
    let s = Scenario::start(
        "enforce",
        "- cidr: 203.0.113.10/32\n  ports: [8444]\n  proto: tcp\n",
    );
    drop_handshakes_to(&s.world, 8444);
    let pending = s.start_job(&["tcp:203.0.113.10:8444"]);
    s.world.wait_connecting("203.0.113.10:8444");
    let out = cli(&s.world, &["lockdown", "--runner", "ci"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("ended 1 open connection of the jobs"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("walking"),
        "named through the job's descriptor even before it connected: {}",
        out.stdout
    );
    let pending = &pending.wait()[0];
    assert_eq!(
        pending.errno,
        Some(libc::ECONNABORTED),
        "the handshake in flight is ended by the lockdown, not by its timeout: {pending:?}"
    );
}

/// Run without CAP_SYS_PTRACE, the command may not borrow a job's
/// descriptors; it says so, walks the kernel's socket tables instead, and
/// the held connection still ends.
#[test]
fn a_lockdown_without_cap_sys_ptrace_walks_the_socket_tables() {
    if !privileged("a_lockdown_without_cap_sys_ptrace_walks_the_socket_tables") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let held = s.start_job(&["tcp-wait:203.0.113.10:443:20000"]);
    s.world.wait_established("203.0.113.10:443");
    let out = cli_wrapped(
        &s.world,
        &["setpriv", "--bounding-set", "-sys_ptrace", "--"],
        &["lockdown", "--runner", "ci"],
    );
    assert!(
        out.stdout
            .contains("found them by walking the kernel's socket tables")
            && out.stdout.contains("CAP_SYS_PTRACE"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("ended 1 open connection of the jobs"),
        "{}",
        out.stdout
    );
    // Nor may it open the job's network namespace: it searches its own,
    // where this job runs, and exits 2 saying what it could not search.
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the network namespace of 1 job process could not be opened"),
        "{}",
        out.stderr
    );
    let held = &held.wait()[0];
    assert_eq!(held.errno, Some(libc::ECONNABORTED), "{held:?}");
}

/// Two UDP sockets of a job share one address (SO_REUSEPORT), so the name
/// the lockdown destroys a socket by can reach the other one; both still
/// end, each blocked read with ECONNABORTED.
#[test]
fn lockdown_ends_both_sockets_of_a_reuseport_pair() {
    if !privileged("lockdown_ends_both_sockets_of_a_reuseport_pair") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let pair = s.start_job(&["udp-reuse-wait:127.0.0.1:7600:20000"]);
    s.world.wait_udp_bound("127.0.0.1:7600", 2);
    let out = cli(&s.world, &["lockdown", "--runner", "ci"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("ended 2 open connections of the jobs"),
        "{}",
        out.stdout
    );
    let pair = &pair.wait()[0];
    assert_eq!(
        (pair.errno, pair.count),
        (Some(libc::ECONNABORTED), Some(2)),
        "both reads end with ECONNABORTED: {pair:?}"
    );
}

/// The fixture's internet drops every SYN to `port`, so a connect there
/// stays in flight.
fn drop_handshakes_to(world: &World, port: u16) {
    let file = world.path("drop-handshakes.nft");
    world::write_file(
        &file,
        &format!(
            "table inet egret_test_drop {{\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    tcp dport {port} drop\n  }}\n}}\n"
        ),
    );
    let mut nft = std::process::Command::new("nft");
    nft.arg("-f").arg(&file);
    let status = world.internet.spawn(&mut nft, None).wait().expect("nft");
    assert!(status.success(), "loading the drop rule");
}

/// A connection to an address that is allowed, but not as the forge, is
/// ended by `--keep-forge`; the pinned state and the command do it with no
/// agent running.
#[test]
fn keep_forge_ends_every_other_connection_even_with_no_agent() {
    if !privileged("keep_forge_ends_every_other_connection_even_with_no_agent") {
        return;
    }
    let mut s = Scenario::start(
        "enforce",
        "- cidr: 203.0.113.10/32\n  ports: [443]\n  proto: tcp\n  forge: true\n- cidr: 203.0.113.11/32\n  ports: [443]\n",
    );
    s.kill_agent();
    let forge = s.start_job(&["tcp-wait:203.0.113.10:443:3000"]);
    let other = s.start_job(&["tcp-wait:203.0.113.11:443:20000"]);
    s.world.wait_established("203.0.113.10:443");
    s.world.wait_established("203.0.113.11:443");
    let out = cli(&s.world, &["lockdown", "--keep-forge"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        other.wait()[0].errno,
        Some(libc::ECONNABORTED),
        "the registry connection is ended"
    );
    assert_eq!(
        forge.wait()[0].errno,
        Some(libc::EAGAIN),
        "the forge connection stays open until its own wait ends"
    );
}

#[test]
fn a_freeze_that_fails_is_audited_and_the_lockdown_holds() {
    if !privileged("a_freeze_that_fails_is_audited_and_the_lockdown_holds") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    // With the agent gone and the runner's cgroup removed, there is nothing
    // to freeze; the pins still enforce on whatever remains attached.
    s.kill_agent();
    let dir = s.cgroup.dir("ci");
    std::fs::remove_dir(&dir).expect("remove the empty runner cgroup");
    let out = cli(
        &s.world,
        &["lockdown", "--runner", "ci", "--freeze", "--reason", "IR-7"],
    );
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("LOCKDOWN of ci"), "{}", out.stdout);
    assert!(
        out.stderr.contains("freeze: the cgroup of runner 'ci'")
            && out.stderr.contains("the lockdown is in force"),
        "{}",
        out.stderr
    );
    let log = std::fs::read_to_string(s.world.path("state").join("lockdown.log")).expect("log");
    let last: serde_json::Value =
        serde_json::from_str(log.lines().last().expect("an entry")).expect("json");
    assert_eq!(last["action"], "lockdown", "{last}");
    assert_eq!(last["reason"], "IR-7", "{last}");
    assert!(
        last["failures"][0]
            .as_str()
            .is_some_and(|f| f.starts_with("freeze:")),
        "{last}"
    );
    let status = cli(&s.world, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status");
    assert!(v["runners"][0]["lockdown"].is_object(), "{v}");
    // Unlock thaws nothing and says why, and the lockdown is over.
    let out = cli(&s.world, &["unlock", "--runner", "ci"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("thaw:"), "{}", out.stderr);
    let log = std::fs::read_to_string(s.world.path("state").join("lockdown.log")).expect("log");
    let last: serde_json::Value =
        serde_json::from_str(log.lines().last().expect("an entry")).expect("json");
    assert_eq!(last["action"], "unlock", "{last}");
    assert!(last["failures"].is_array(), "{last}");
    std::fs::create_dir(&dir).expect("put the cgroup back for cleanup");
}

#[test]
fn status_without_an_agent_names_each_runners_cgroup() {
    if !privileged("status_without_an_agent_names_each_runners_cgroup") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    s.kill_agent();
    let out = cli(&s.world, &["status", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status");
    assert!(v["agent"].is_null(), "{v}");
    assert_eq!(v["runners"][0]["cgroup"], s.runner_cgroup.as_str(), "{v}");
}

#[test]
fn every_command_takes_the_same_path_options() {
    if !privileged("every_command_takes_the_same_path_options") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let flags = |cmd: &[&str]| {
        let mut args: Vec<String> = cmd.iter().map(|a| (*a).to_owned()).collect();
        for (flag, path) in [
            ("--bpffs", s.world.path("bpffs")),
            ("--state-dir", s.world.path("state")),
            ("--socket", s.world.path("egret.sock")),
        ] {
            args.push(flag.to_owned());
            args.push(path.display().to_string());
        }
        std::process::Command::new(egret_tests::workspace_bin("egret"))
            .args(&args)
            .output()
            .expect("egret")
    };
    for cmd in [
        &["status"][..],
        &["events"],
        &["reload"],
        &["lockdown", "--runner", "ci"],
        &["unlock", "--runner", "ci"],
    ] {
        let out = flags(cmd);
        assert!(
            out.status.success(),
            "egret {cmd:?} with every path flag: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
