//! Enforcement outlives the agent: kill it, restart it, and only
//! `egret teardown` lifts the restrictions.

use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use egret_tests::{
    agent::{self, Agent},
    privileged,
    scenario::{self, Scenario},
    world,
};

/// The forge on 443 by address, a registry by name.
const ALLOW: &str = scenario::FORGE_AND_REGISTRY;

#[test]
fn sigkill_leaves_enforcement_in_place_and_a_restart_resumes_it() {
    if !privileged("sigkill_leaves_enforcement_in_place_and_a_restart_resumes_it") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    s.kill_agent();

    let o = s.job(&[
        "tcp:169.254.169.254:80",
        "tcp:198.51.100.66:443",
        "tcp:10.0.0.5:22",
        "tcp:203.0.113.10:443",
        "tcp:203.0.113.20:443",
    ]);
    assert!(
        o[0].eperm() && o[1].eperm() && o[2].eperm(),
        "denials hold with the agent dead: {o:?}"
    );
    assert!(
        o[3].ok() && o[4].ok(),
        "allowed targets (CIDR and learned) still work: {o:?}"
    );

    // Denials while the agent was down are not lost: the pinned ring buffer
    // keeps them for the next agent.
    s.start_agent();
    assert!(
        s.wait_event(|e| e["dst"] == "198.51.100.66" && e["pid"] == o[1].pid)
            .is_some(),
        "event from the downtime delivered after restart: {:?}",
        s.agent().events()
    );
    assert!(
        s.agent().logs().contains("re-adopted pinned programs"),
        "{}",
        s.agent().logs()
    );
    let o = s.job(&[
        "tcp:169.254.169.254:80",
        "tcp:203.0.113.10:443",
        "tcp:203.0.113.21:443",
    ]);
    assert!(
        o[0].eperm() && o[1].ok() && o[2].ok(),
        "same state after restart: {o:?}"
    );
}

#[test]
fn restarts_under_load_never_open_a_denied_target_nor_close_an_allowed_one() {
    if !privileged("restarts_under_load_never_open_a_denied_target_nor_close_an_allowed_one") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    let denied = s.start_job(&["hammer:198.51.100.66:443:4000"]);
    let allowed = s.start_job(&["hammer:203.0.113.10:443:4000"]);
    let learned = s.start_job(&["hammer:203.0.113.20:443:4000"]);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        s.kill_agent();
        std::thread::sleep(Duration::from_millis(300));
        s.start_agent();
    }
    let denied = &denied.wait()[0];
    let allowed = &allowed.wait()[0];
    let learned = &learned.wait()[0];
    assert_eq!(
        denied.oks,
        Some(0),
        "denied target reached during restarts: {denied:?}"
    );
    assert!(denied.eperms.unwrap_or(0) > 10, "{denied:?}");
    assert_eq!(
        (allowed.eperms, allowed.others),
        (Some(0), Some(0)),
        "{allowed:?}"
    );
    assert!(allowed.oks.unwrap_or(0) > 10, "{allowed:?}");
    assert_eq!(
        (learned.eperms, learned.others),
        (Some(0), Some(0)),
        "{learned:?}"
    );
}

#[test]
fn teardown_is_the_only_way_out() {
    if !privileged("teardown_is_the_only_way_out") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    s.kill_agent();
    assert!(s.job(&["tcp:169.254.169.254:80"])[0].eperm());
    // Where the code keeps the pins of this ABI version.
    let abi = egret::datapath::Pins::new(&s.pins.bpffs).abi_dir();
    assert!(
        abi.ends_with(format!("v{}", egret_common::ABI_VERSION)) && abi.exists(),
        "{}",
        abi.display()
    );
    let (code, out) = agent::teardown(&s.pins);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("jobs are unrestricted"), "{out}");
    let o = s.job(&[
        "tcp:169.254.169.254:80",
        "tcp:198.51.100.66:443",
        "tcp:10.0.0.5:22",
    ]);
    assert!(
        o.iter().all(|o| o.ok()),
        "after teardown the cgroup is unrestricted: {o:?}"
    );
    assert!(!abi.exists(), "pins removed: {}", abi.display());
    let (code, out) = agent::teardown(&s.pins);
    assert_eq!(code, 0, "a second teardown is harmless: {out}");
}

#[test]
fn a_bad_policy_is_a_user_error() {
    if !privileged("a_bad_policy_is_a_user_error") {
        return;
    }
    let s = Scenario::prepare("enforce", "- cidr: 203.0.113.10/33\n");
    let mut a = Agent::spawn(&s.world, &s.pins, &s.policy, &[]);
    let (code, logs) = a.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{logs}");
    assert!(
        logs.contains("policy.yaml:9:15: error: '203.0.113.10/33' is not a CIDR"),
        "{logs}"
    );
    let abi = egret::datapath::Pins::new(&s.pins.bpffs).abi_dir();
    assert!(!abi.exists(), "nothing was loaded: {}", abi.display());
}

#[test]
fn a_missing_cgroup_is_an_environment_error() {
    if !privileged("a_missing_cgroup_is_an_environment_error") {
        return;
    }
    let s = Scenario::prepare("enforce", "");
    let policy = s.world.path("missing.yaml");
    world::write_file(
        &policy,
        &scenario::policy(&format!("{}/nope", s.runner_cgroup), "enforce", ""),
    );
    let mut a = Agent::spawn(&s.world, &s.pins, &policy, &[]);
    let (code, logs) = a.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(2), "{logs}");
    assert!(
        logs.contains("does not exist") && logs.contains("--create-cgroups"),
        "{logs}"
    );

    let mut a = Agent::spawn(&s.world, &s.pins, &policy, &["--create-cgroups"]);
    a.wait_ready(Duration::from_secs(20))
        .expect("--create-cgroups starts");
    assert!(s.cgroup.dir("ci/nope").is_dir());
}

#[test]
fn non_root_is_refused_plainly() {
    if !privileged("non_root_is_refused_plainly") {
        return;
    }
    let s = Scenario::prepare("enforce", "");
    let out = Command::new(egret_tests::workspace_bin("egret"))
        .arg("agent")
        .arg("--policy")
        .arg(&s.policy)
        .arg("--bpffs")
        .arg(&s.pins.bpffs)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run egret as nobody");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
}

/// An upgrade changes the pin layout (the ABI version). What the previous
/// egret left attached would go on enforcing the policy of the day of the
/// upgrade, which no reload reaches; the new agent detaches it once its
/// own programs hold the runner, and teardown removes every version's.
#[test]
fn an_agent_detaches_what_an_older_egret_left_attached() {
    if !privileged("an_agent_detaches_what_an_older_egret_left_attached") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    s.kill_agent();
    // The older egret: a connect4 program refusing everything, its link
    // pinned where an ABI before this one kept its links.
    let older = format!("v{}", egret_common::ABI_VERSION - 1);
    let links = s.pins.bpffs.join(&older).join("links").join("1");
    let plant_older = |s: &Scenario| {
        std::fs::create_dir_all(&links).expect("older links dir");
        let old = egret_tests::bpf::attach_returning(
            egret_tests::bpf::CONNECT4,
            0,
            "egret_connect4",
            &s.cgroup.dir("ci"),
        );
        old.pin_link(&links.join("egret_connect4"));
        drop(old);
    };
    plant_older(&s);
    let forge = "tcp:203.0.113.10:443";
    assert!(
        s.job(&[forge])[0].eperm(),
        "the older program still refuses what the policy allows"
    );
    s.start_agent();
    assert!(
        !s.pins.bpffs.join(&older).exists(),
        "the older pins are gone once the agent is up"
    );
    assert!(
        s.job(&[forge])[0].ok(),
        "and with them the older program: the policy decides again"
    );
    assert!(
        s.agent
            .as_ref()
            .expect("agent")
            .logs()
            .contains("detached and removed the pins another egret version left"),
        "the agent says what it did"
    );

    // Teardown removes another version's pins too.
    s.kill_agent();
    plant_older(&s);
    let (code, out) = agent::teardown(&s.pins);
    assert_eq!(code, 0, "{out}");
    assert!(!s.pins.bpffs.join(&older).exists(), "{out}");
    assert!(
        s.job(&[forge])[0].ok(),
        "nothing of either version holds the job"
    );
}
