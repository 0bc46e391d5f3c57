//! The control socket: status, live events, abuse resistance; and the agent
//! restarting over and over under load.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{net::UnixStream, process::CommandExt as _},
    process::Command,
    time::Duration,
};

use egret_tests::{agent::cli, privileged, scenario::Scenario};

const ALLOW: &str = "\
- cidr: 203.0.113.10/32
  ports: [443]
  proto: tcp
";

fn follow(s: &Scenario) -> BufReader<UnixStream> {
    let mut stream = UnixStream::connect(s.world.path("egret.sock")).expect("connect");
    stream
        .write_all(b"{\"v\":1,\"cmd\":\"events\",\"follow\":true}\n")
        .expect("request");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).expect("header");
    assert!(header.contains("\"ok\":true"), "{header}");
    reader
}

fn raw(s: &Scenario, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(s.world.path("egret.sock")).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = stream.write_all(request);
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

fn healthy(s: &Scenario) {
    let out = cli(&s.world, &["status", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(v["agent"].is_object(), "the agent answers: {v}");
    assert!(
        s.job(&["tcp:169.254.169.254:80"])[0].eperm(),
        "the datapath still enforces"
    );
}

#[test]
fn two_followers_both_see_a_denial() {
    if !privileged("two_followers_both_see_a_denial") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let mut a = follow(&s);
    let mut b = follow(&s);
    let o = &s.job(&["tcp:198.51.100.66:443"])[0];
    assert!(o.eperm());
    for reader in [&mut a, &mut b] {
        let mut line = String::new();
        reader.read_line(&mut line).expect("event line");
        let e: serde_json::Value = serde_json::from_str(&line).expect("event json");
        assert_eq!(
            (e["dst"].as_str(), e["pid"].as_u64()),
            (Some("198.51.100.66"), Some(u64::from(o.pid)))
        );
    }
    // Without --follow, the recent events are there too, filtered by runner.
    let out = cli(&s.world, &["events", "--json", "--runner", "ci"]);
    assert!(out.stdout.contains("198.51.100.66"), "{}", out.stdout);
    let out = cli(&s.world, &["events", "--json", "--runner", "other"]);
    assert!(!out.stdout.contains("198.51.100.66"), "{}", out.stdout);
    let out = cli(&s.world, &["events"]);
    assert!(
        out.stdout.contains("DENY") && out.stdout.contains("198.51.100.66:443"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_follower_that_never_reads_is_cut_off_without_hurting_others() {
    if !privileged("a_follower_that_never_reads_is_cut_off_without_hurting_others") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let stuck = follow(&s);
    let mut live = follow(&s);
    // Enough denials to fill the stuck client's socket buffer and backlog.
    let flood = s.start_job(&["hammer:198.51.100.66:443:3000"]);
    let mut seen = 0u64;
    let mut line = String::new();
    while seen < 200 {
        line.clear();
        live.read_line(&mut line)
            .expect("the live follower keeps receiving");
        if line.contains("198.51.100.66") {
            seen += 1;
        }
    }
    let flooded = &flood.wait()[0];
    assert!(flooded.eperms.unwrap_or(0) > 200, "{flooded:?}");
    // The stuck client was dropped: draining it ends in EOF or a notice.
    let mut stuck = stuck;
    let mut buf = Vec::new();
    let _ = stuck.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let logs = s.agent().logs();
    assert!(
        logs.contains("disconnected an events subscriber"),
        "agent logs the cut-off (read {} bytes from the stuck client):\n{logs}",
        text.len()
    );
    healthy(&s);
}

#[test]
fn protocol_abuse_gets_errors_and_the_agent_stays_healthy() {
    if !privileged("protocol_abuse_gets_errors_and_the_agent_stays_healthy") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let huge = vec![b'x'; 1024 * 1024];
    assert!(raw(&s, &huge).contains("longer than"), "1 MB line refused");
    assert!(raw(&s, b"not json\n").contains("invalid request"));
    assert!(raw(&s, b"{\"v\":99,\"cmd\":\"status\"}\n").contains("version 99 is not supported"));
    assert!(raw(&s, b"{\"v\":1,\"cmd\":\"rm -rf\"}\n").contains("unknown command"));
    assert!(raw(&s, b"\x00\xff\xfe\n").contains("invalid request"));
    // A client that connects and says nothing is timed out, not waited on forever.
    let idle = UnixStream::connect(s.world.path("egret.sock")).expect("connect");
    healthy(&s);
    drop(idle);
    // Many clients at once: past the limit they are turned away at once,
    // and once the idle ones time out the agent serves again.
    let crowd: Vec<UnixStream> = (0..80)
        .map(|_| UnixStream::connect(s.world.path("egret.sock")).expect("connect"))
        .collect();
    for c in &crowd {
        c.set_nonblocking(true).expect("nonblocking");
    }
    // Each connection past the limit is told so at once: polled for until
    // the agent has answered them all.
    let mut turned_away = 0;
    egret_tests::poll_until(
        "the agent turning away every client past its limit",
        Duration::from_secs(5),
        || {
            turned_away += crowd
                .iter()
                .filter(|c| {
                    let mut buf = [0u8; 128];
                    (&**c).read(&mut buf).is_ok_and(|n| {
                        String::from_utf8_lossy(&buf[..n]).contains("too many clients")
                    })
                })
                .count();
            turned_away >= 80 - 64
        },
    );
    assert!(
        s.job(&["tcp:169.254.169.254:80"])[0].eperm(),
        "the datapath does not care"
    );
    // Once the idle ones time out (5 s), the agent serves again.
    egret_tests::poll_until(
        "the agent serving again after idle clients timed out",
        Duration::from_secs(10),
        || cli(&s.world, &["status", "--json"]).code == 0,
    );
    healthy(&s);
    drop(crowd);
    // A peer that is not root is refused.
    let out = Command::new(egret_tests::workspace_bin("egret"))
        .args(["status", "--socket"])
        .arg(s.world.path("egret.sock"))
        .uid(65534)
        .gid(65534)
        .output()
        .expect("status as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("ermission denied"), "{err}");
    healthy(&s);
}

#[test]
fn reload_over_the_socket_applies_a_valid_policy_and_rejects_a_broken_one() {
    if !privileged("reload_over_the_socket_applies_a_valid_policy_and_rejects_a_broken_one") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    assert!(s.job(&["tcp:203.0.113.20:443"])[0].eperm());
    let text = std::fs::read_to_string(&s.policy).expect("policy");
    egret_tests::world::write_file(&s.policy, &format!("{text}      - cidr: 203.0.113.20/32\n"));
    let out = cli(&s.world, &["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        s.job(&["tcp:203.0.113.20:443"])[0].ok(),
        "new entry applied"
    );

    egret_tests::world::write_file(&s.policy, "version: 1\nrunners: [\n");
    let out = cli(&s.world, &["reload"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("rejected"), "{}", out.stderr);
    assert!(
        s.job(&["tcp:203.0.113.20:443"])[0].ok(),
        "enforcement exactly as it was"
    );
    assert!(s.job(&["tcp:198.51.100.66:443"])[0].eperm());
    let v: serde_json::Value =
        serde_json::from_str(&cli(&s.world, &["status", "--json"]).stdout).expect("json");
    assert_eq!(v["agent"]["last_reload"]["ok"], false, "{v}");
}

#[test]
fn status_counters_match_what_the_job_did() {
    if !privileged("status_counters_match_what_the_job_did") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    s.job(&[
        "tcp:203.0.113.10:443",
        "tcp:203.0.113.10:443",
        "tcp:203.0.113.10:443",
        "tcp:169.254.169.254:80",
        "tcp:[fd00:ec2::254]:80",
        "tcp:10.0.0.5:22",
        "tcp:198.51.100.66:443",
        "udp-sendto:198.51.100.66:443",
    ]);
    let out = cli(&s.world, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let r = &v["runners"][0];
    assert_eq!(r["name"], "ci");
    assert_eq!(r["programs_attached"], egret::datapath::PROGRAMS.len());
    assert_eq!(r["cidr_entries"], 1);
    let c = &r["counters"];
    assert_eq!(c["allowed"], 3, "{c}");
    assert_eq!(c["denied_metadata"], 2, "{c}");
    assert_eq!(c["denied_lateral"], 1, "{c}");
    assert_eq!(c["denied_not_allowed"], 2, "{c}");
    assert_eq!(c["events_dropped"], 0, "{c}");
    assert!(
        v["agent"]["policy_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{v}"
    );
    let human = cli(&s.world, &["status"]).stdout;
    assert!(human.contains("runner ci (id 1): attached"), "{human}");
}

#[test]
fn twenty_restarts_under_load() {
    if !privileged("twenty_restarts_under_load") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    let denied = s.start_job(&["hammer:198.51.100.66:443:9000"]);
    let allowed = s.start_job(&["hammer:203.0.113.10:443:9000"]);
    for _ in 0..20 {
        s.kill_agent();
        s.start_agent();
    }
    let denied = &denied.wait()[0];
    let allowed = &allowed.wait()[0];
    assert_eq!(denied.oks, Some(0), "denied target reached: {denied:?}");
    assert_eq!(
        allowed.eperms,
        Some(0),
        "allowed target refused: {allowed:?}"
    );
    assert!(allowed.oks.unwrap_or(0) > 100, "{allowed:?}");
}

/// `--events-file`: every event also lands in a file, the same JSON as on
/// stdout, rotating at its bound with nothing lost between the two files.
#[test]
fn events_are_recorded_in_a_rotating_file() {
    if !privileged("events_are_recorded_in_a_rotating_file") {
        return;
    }
    let mut s = Scenario::prepare("enforce", "- cidr: 203.0.113.10/32\n  ports: [443]\n");
    let path = s.world.path("events.jsonl");
    let arg = path.display().to_string();
    s.start_agent_with(&["--events-file", &arg, "--events-file-max", "4K"]);
    let attempts: Vec<String> = (0..30)
        .map(|_| "tcp:198.51.100.66:443".to_owned())
        .collect();
    let attempts: Vec<&str> = attempts.iter().map(String::as_str).collect();
    let o = s.job(&attempts);
    assert!(o.iter().all(|o| o.eperm()), "{o:?}");
    let stdout = s
        .agent()
        .wait_events(std::time::Duration::from_secs(5), |e| {
            (e.len() >= 30).then(|| e.to_vec())
        })
        .expect("30 events on stdout");
    let read = |p: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let rotated = s.world.path("events.jsonl.1");
    for p in [&path, &rotated] {
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0 && size <= 4096, "{}: {size} bytes", p.display());
    }
    let mut recorded = read(&rotated);
    recorded.extend(read(&path));
    // The newest events, in order, exactly as stdout has them.
    let tail = &stdout[stdout.len() - recorded.len()..];
    assert_eq!(recorded, tail);
}
