//! Hot reload in the test world: file edits take effect on their own, a
//! broken edit changes nothing, runners come and go.

use std::time::{Duration, Instant};

use egret_tests::{
    agent::cli,
    privileged,
    scenario::{self, Scenario},
    world,
};

const BEFORE: &str = "\
- host: gitlab.test
  ports: [443]
- cidr: 203.0.113.11/32
  ports: [443]
";
const AFTER: &str = "\
- host: registry.test
  ports: [443]
- cidr: 203.0.113.11/32
  ports: [443]
";

/// Polls until `check` holds; returns how long it took.
fn until(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what} did not happen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn editing_the_file_applies_it_and_a_broken_edit_changes_nothing() {
    if !privileged("editing_the_file_applies_it_and_a_broken_edit_changes_nothing") {
        return;
    }
    let s = Scenario::start("enforce", BEFORE);
    assert!(s.job(&["tcp:203.0.113.10:443"])[0].ok());
    assert!(s.job(&["tcp:203.0.113.20:443"])[0].eperm());
    // A destination allowed before and after must never be refused meanwhile.
    let steady = s.start_job(&["hammer:203.0.113.11:443:4000"]);
    std::thread::sleep(Duration::from_millis(200));

    world::write_file(
        &s.policy,
        &scenario::policy(&s.runner_cgroup, "enforce", AFTER),
    );
    let written = Instant::now();
    let opened = until("the new host becoming reachable", || {
        s.job(&["tcp:203.0.113.20:443"])[0].ok()
    });
    let closed = until("the old host being refused", || {
        s.job(&["tcp:203.0.113.10:443"])[0].eperm()
    });
    eprintln!(
        "reload by file edit: new host reachable after {opened:?}, old host refused {:?} after the write",
        written.elapsed().min(opened + closed)
    );

    world::write_file(
        &s.policy,
        "version: 1\nrunners:\n  - name: ci\n    cgroup: [\n",
    );
    // Give the watcher time to see it and reject it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.agent().logs().contains("new policy rejected") {
        assert!(
            Instant::now() < deadline,
            "broken policy not noticed:\n{}",
            s.agent().logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = s.job(&[
        "tcp:203.0.113.20:443",
        "tcp:203.0.113.10:443",
        "tcp:203.0.113.11:443",
    ]);
    assert!(
        o[0].ok() && o[1].eperm() && o[2].ok(),
        "enforcement exactly as before the broken edit: {o:?}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&cli(&s.world, &["status", "--json"]).stdout).expect("json");
    assert_eq!(
        v["agent"]["last_reload"]["ok"], false,
        "status shows the rejection: {v}"
    );
    assert!(
        v["agent"]["last_reload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("policy.yaml:4:13")),
        "with the location: {v}"
    );

    let steady = &steady.wait()[0];
    assert_eq!(
        (steady.eperms, steady.others),
        (Some(0), Some(0)),
        "{steady:?}"
    );
}

#[test]
fn reload_attaches_new_runners_and_detaches_removed_ones() {
    if !privileged("reload_attaches_new_runners_and_detaches_removed_ones") {
        return;
    }
    // No file watching: only `egret reload` and SIGHUP may apply edits.
    let mut s = Scenario::prepare("enforce", BEFORE);
    s.start_agent_with(&["--no-watch"]);
    let second = s.cgroup.child("second");
    assert!(
        s.job_in("second", &["tcp:169.254.169.254:80"])[0].ok(),
        "not a runner yet"
    );

    let two = format!(
        "{}  - name: second\n    cgroup: {second}\n    allow:\n      - cidr: 198.51.100.66/32\n",
        scenario::policy(&s.runner_cgroup, "enforce", BEFORE)
    );
    world::write_file(&s.policy, &two);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        s.job_in("second", &["tcp:169.254.169.254:80"])[0].ok(),
        "--no-watch: nothing applied yet"
    );
    assert_eq!(cli(&s.world, &["reload"]).code, 0);
    let o = s.job_in(
        "second",
        &[
            "tcp:169.254.169.254:80",
            "tcp:198.51.100.66:443",
            "tcp:203.0.113.11:443",
        ],
    );
    assert!(
        o[0].eperm() && o[1].ok() && o[2].eperm(),
        "the new runner has its own policy: {o:?}"
    );
    assert!(
        s.job(&["tcp:198.51.100.66:443"])[0].eperm(),
        "runners do not share allowlists"
    );

    // SIGHUP does the same as `egret reload`.
    let with_attacker = two.replace(
        "      - cidr: 203.0.113.11/32\n",
        "      - cidr: 203.0.113.11/32\n      - cidr: 198.51.100.66/32\n",
    );
    assert_ne!(with_attacker, two);
    world::write_file(&s.policy, &with_attacker);
    let pid = nix::unistd::Pid::from_raw(s.agent().pid().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    until("SIGHUP applying the edit", || {
        s.job(&["tcp:198.51.100.66:443"])[0].ok()
    });

    let only_second = format!(
        "version: 1\nrunners:\n  - name: second\n    cgroup: {second}\n    allow:\n      - cidr: 198.51.100.66/32\n"
    );
    world::write_file(&s.policy, &only_second);
    let out = cli(&s.world, &["reload"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        s.job(&["tcp:169.254.169.254:80"])[0].ok(),
        "the removed runner's cgroup is released"
    );
    assert!(s.job_in("second", &["tcp:169.254.169.254:80"])[0].eperm());
    let v: serde_json::Value =
        serde_json::from_str(&cli(&s.world, &["status", "--json"]).stdout).expect("json");
    let names: Vec<&str> = v["runners"]
        .as_array()
        .expect("runners")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, vec!["second"]);
}

/// A name taken out of the policy is refused as soon as the reload ends,
/// also at the addresses jobs already resolved it to; and an agent
/// restarted under another policy does not carry such addresses over,
/// while one restarted under the same policy does.
#[test]
fn a_removed_name_is_refused_at_the_addresses_jobs_resolved() {
    if !privileged("a_removed_name_is_refused_at_the_addresses_jobs_resolved") {
        return;
    }
    const WILDCARD: &str = "- host: \"*.pkg.test\"\n  ports: [443]\n";
    const FORGE: &str = "- cidr: 203.0.113.10/32\n  ports: [443]\n";
    let resolve_and_connect = "dns-connect:files.pkg.test:A:443:udp@203.0.113.53:53";
    let by_address = "tcp:203.0.113.22:443";
    let mut s = Scenario::start("enforce", &format!("{WILDCARD}{FORGE}"));
    assert!(s.job(&[resolve_and_connect])[0].ok());
    assert!(
        s.job(&[by_address])[0].ok(),
        "learned from the job's answer"
    );

    world::write_file(
        &s.policy,
        &scenario::policy(&s.runner_cgroup, "enforce", FORGE),
    );
    let out = cli(&s.world, &["reload"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let o = &s.job(&[by_address])[0];
    assert!(o.eperm(), "refused right after the reload: {o:?}");
    assert!(s.outsider(&[by_address])[0].ok(), "the refusal is egret's");

    // Learned again, then the agent restarts: under the same policy the
    // address stays; under one without the name it is refused at once.
    world::write_file(
        &s.policy,
        &scenario::policy(&s.runner_cgroup, "enforce", &format!("{WILDCARD}{FORGE}")),
    );
    assert_eq!(cli(&s.world, &["reload"]).code, 0);
    assert!(s.job(&[resolve_and_connect])[0].ok());
    s.kill_agent();
    s.start_agent();
    assert!(s.job(&[by_address])[0].ok(), "same policy: carried over");
    s.kill_agent();
    world::write_file(
        &s.policy,
        &scenario::policy(&s.runner_cgroup, "enforce", FORGE),
    );
    s.start_agent();
    let o = &s.job(&[by_address])[0];
    assert!(o.eperm(), "another policy: not carried over: {o:?}");
}
