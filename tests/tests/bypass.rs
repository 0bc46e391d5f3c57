//! Bypass vectors: what a job tries to get past the connect and sendmsg
//! hooks. Jobs run as an unprivileged user, as the threat model assumes;
//! where only a job with capabilities could try (raw sockets, IP options),
//! the case runs the job as root and says so, so the kernel's own checks do
//! not get in the way: what refuses it is egret.

use std::time::Duration;

use egret_tests::{
    job, privileged,
    scenario::{Runners, Scenario},
    world,
};

const ALLOW: &str = "- cidr: 203.0.113.10/32\n  ports: [443]\n";

#[test]
fn socket_kinds_no_hook_can_judge_are_refused_at_socket() {
    if !privileged("socket_kinds_no_hook_can_judge_are_refused_at_socket") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    for action in ["ping:198.51.100.66", "mptcp:203.0.113.10:443"] {
        s.assert_egret_refuses(action);
    }
    // Root jobs: the kernel refuses raw sockets to unprivileged ones.
    for action in ["raw-icmp:198.51.100.66", "raw-udp:198.51.100.66"] {
        s.assert_egret_refuses_root(action);
    }
    let ev = s
        .wait_event(|e| {
            e["reason"] == "socket_kind" && e["proto"] == "icmp" && e["socket_type"] == "raw"
        })
        .expect("socket_kind event for the raw socket");
    assert_eq!(ev["hook"], "sock_create");
    // Ping sockets open, and each echo is judged by the egress backstop.
    let ev = s
        .wait_event(|e| {
            e["hook"] == "egress" && e["dst"] == "198.51.100.66" && e["proto"] == "icmp"
        })
        .expect("egress event for the ping");
    assert_eq!(ev["reason"], "not_allowed");

    // Ordinary TCP and UDP are untouched.
    let o = s.job(&["tcp:203.0.113.10:443", "udp-sendto:198.51.100.66:443"]);
    assert!(o[0].ok() && o[1].eperm(), "{o:?}");
}

#[test]
fn ping_is_judged_packet_by_packet() {
    if !privileged("ping_is_judged_packet_by_packet") {
        return;
    }
    let s = Scenario::start("enforce", "- cidr: 203.0.113.10/32\n");
    assert!(
        s.job(&["ping:203.0.113.10"])[0].ok(),
        "an address the policy allows for every protocol"
    );
    for action in [
        "ping:198.51.100.66",
        "ping:169.254.169.254",
        "ping:10.0.0.5",
    ] {
        s.assert_egret_refuses(action);
    }
    assert!(
        s.job(&["ping:127.0.0.1"])[0].ok(),
        "pinging the host itself reaches no service"
    );
}

#[test]
fn raw_sockets_a_runner_opts_into_are_still_judged_by_the_backstop() {
    if !privileged("raw_sockets_a_runner_opts_into_are_still_judged_by_the_backstop") {
        return;
    }
    let mut s = Scenario::prepare("enforce", "- cidr: 203.0.113.10/32\n");
    let text = std::fs::read_to_string(&s.policy).expect("policy");
    world::write_file(
        &s.policy,
        &text.replace(
            "    mode: enforce\n",
            "    mode: enforce\n    sockets: [raw]\n",
        ),
    );
    s.start_agent();
    // Root jobs: only they can open raw sockets at all.
    assert!(
        s.root_job(&["raw-icmp:203.0.113.10"])[0].ok(),
        "raw opted in, to an allowed address"
    );
    s.assert_egret_refuses_root("raw-icmp:198.51.100.66");
    s.assert_egret_refuses_root("raw-udp:169.254.169.254");
    let ev = s
        .wait_event(|e| e["hook"] == "egress" && e["dst"] == "169.254.169.254")
        .expect("egress event");
    assert_eq!(ev["reason"], "metadata");
    assert!(
        s.agent().logs().contains("may open raw IP sockets"),
        "{}",
        s.agent().logs()
    );
}

#[test]
fn sctp_sockets_are_refused_at_socket() {
    const TEST: &str = "sctp_sockets_are_refused_at_socket";
    if !privileged(TEST) {
        return;
    }
    // Whether this kernel has SCTP at all: asked outside any runner (a
    // socket() call sends nothing).
    // SAFETY: socket(2) with constant arguments; the descriptor is closed
    // at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        egret_tests::not_testable_here(
            TEST,
            &format!(
                "this kernel has no SCTP ({err}); egret's refusal cannot be told from the kernel's"
            ),
        );
        return;
    }
    // SAFETY: the descriptor just opened, closed once.
    unsafe { libc::close(fd) };
    let s = Scenario::start("enforce", ALLOW);
    let inside = &s.job(&["sctp:203.0.113.10:443"])[0];
    assert!(inside.eperm(), "{inside:?}");
    // Outside the runner the socket opens and the connect goes out (no
    // SCTP fixture answers it, so it fails some other way).
    let outside = &s.outsider(&["sctp:203.0.113.10:443"])[0];
    assert!(!outside.eperm(), "{outside:?}");
    s.wait_event(|e| e["reason"] == "socket_kind" && e["proto"] == "sctp")
        .expect("socket_kind event for SCTP");
}

#[test]
fn packet_sockets_need_a_capability_jobs_do_not_have() {
    if !privileged("packet_sockets_need_a_capability_jobs_do_not_have") {
        return;
    }
    // sock_create sees inet sockets only; AF_PACKET is refused by the kernel
    // to any job without CAP_NET_RAW, which the threat model requires.
    let s = Scenario::start("enforce", ALLOW);
    let o = &s.job(&["packet"])[0];
    assert!(o.eperm(), "{o:?}");
}

/// A job holding CAP_NET_RAW (root, as in a default Docker container) can
/// open an AF_PACKET socket that no hook sees: egret cannot hold it, so the
/// agent reports the process as `privileged_job` and lists it in `egret
/// status`, while an unprivileged job is never reported.
#[test]
fn a_job_holding_net_raw_is_reported_as_outside_the_boundary() {
    if !privileged("a_job_holding_net_raw_is_reported_as_outside_the_boundary") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let procs = s.cgroup.procs("ci");
    let plain = job::start(&s.world.host, Some(&procs), &["sleep:2500"]);
    // The labelled root case.
    let root = job::start_as_root(&s.world.host, Some(&procs), &["packet", "sleep:2500"]);
    let ev = s
        .wait_event(|e| e["reason"] == "privileged_job")
        .expect("a privileged_job event");
    assert_eq!(
        (ev["action"].as_str(), ev["hook"].as_str()),
        (Some("report"), Some("process_scan"))
    );
    let caps: Vec<&str> = ev["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(caps.contains(&"CAP_NET_RAW"), "{ev}");
    assert_eq!(
        ev["cgroup"].as_str(),
        Some(s.runner_cgroup.as_str()),
        "{ev}"
    );
    let status = egret_tests::agent::cli(&s.world, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    let listed = &v["runners"][0]["privileged_processes"];
    assert!(
        listed
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["pid"] == ev["pid"])),
        "{listed}"
    );
    let root_out = root.wait();
    assert!(root_out[0].ok(), "root opens AF_PACKET: {:?}", root_out[0]);
    assert_eq!(ev["pid"].as_u64(), Some(u64::from(root_out[0].pid)));
    let plain_out = plain.wait();
    assert!(
        s.agent()
            .events()
            .iter()
            .all(|e| e["reason"] != "privileged_job" || e["pid"] != plain_out[0].pid),
        "the unprivileged job, scanned while it slept, is never reported"
    );
    // Gone from the list once it ended.
    egret_tests::poll_until("the list to empty", Duration::from_secs(5), || {
        let status = egret_tests::agent::cli(&s.world, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
        v["runners"][0]["privileged_processes"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
}

#[test]
fn a_non_root_job_cannot_leave_its_cgroup() {
    if !privileged("a_non_root_job_cannot_leave_its_cgroup") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let root_procs = s.cgroup.root.join("cgroup.procs");
    let action = format!("escape:{}", root_procs.display());
    let mut cmd = std::process::Command::new(egret_tests::workspace_bin("egret-testkit"));
    cmd.args(["job", &action, "tcp:169.254.169.254:80"])
        .stdout(std::process::Stdio::piped());
    let out = s
        .world
        .host
        .spawn_as(&mut cmd, Some(&s.cgroup.procs("ci")), Some(65534))
        .wait_with_output()
        .expect("job");
    let o: Vec<job::Outcome> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("outcome"))
        .collect();
    assert_eq!(
        o[0].errno,
        Some(libc::EACCES),
        "moving to the root cgroup: {:?}",
        o[0]
    );
    assert!(o[1].eperm(), "still guarded afterwards: {:?}", o[1]);
}

#[test]
fn loopback_reaches_the_jobs_own_listeners_but_not_host_services() {
    if !privileged("loopback_reaches_the_jobs_own_listeners_but_not_host_services") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    s.world
        .serve_on_host(&["tcp:127.0.0.1:7000", "tcp:[::1]:7001"]);
    for action in [
        "tcp:127.0.0.1:7000",
        "tcp:[::1]:7001",
        "tcp:0.0.0.0:7000",
        "tcp:[::ffff:127.0.0.1]:7000",
    ] {
        s.assert_egret_refuses(action);
    }
    let ev = s
        .wait_event(|e| e["dst"] == "127.0.0.1" && e["port"] == 7000)
        .expect("event");
    assert_eq!(ev["reason"], "lateral");

    // The job's own servers: in the same process, and in another job
    // process of the same runner.
    let o = s.job(&[
        "self-loopback:127.0.0.1:0",
        "self-loopback:[::1]:0",
        "self-loopback:0.0.0.0:0",
    ]);
    assert!(o.iter().all(|o| o.ok()), "{o:?}");
    let server = s.start_job(&["listen:127.0.0.1:7100:1500"]);
    std::thread::sleep(Duration::from_millis(300));
    let client = &s.job(&["tcp:127.0.0.1:7100"])[0];
    assert!(client.ok(), "{client:?}");
    assert_eq!(client.banner.as_deref(), Some("job listener"));
    assert!(server.wait()[0].ok());

    // Once the job's listener is gone, the port is not the runner's any more:
    // a host service that takes it over stays out of reach.
    s.world.serve_on_host(&["tcp:127.0.0.1:7100"]);
    let after = &s.job(&["tcp:127.0.0.1:7100"])[0];
    assert!(after.eperm(), "{after:?}");
}

#[test]
fn loopback_allow_and_deny() {
    if !privileged("loopback_allow_and_deny") {
        return;
    }
    for (setting, host_ok, own_ok) in [("allow", true, true), ("deny", false, false)] {
        let mut s = Scenario::prepare("enforce", ALLOW);
        let text = std::fs::read_to_string(&s.policy).expect("policy");
        world::write_file(
            &s.policy,
            &text.replace(
                "    mode: enforce\n",
                &format!("    mode: enforce\n    loopback: {setting}\n"),
            ),
        );
        s.start_agent();
        s.world.serve_on_host(&["tcp:127.0.0.1:7000"]);
        let o = s.job(&["tcp:127.0.0.1:7000", "self-loopback:127.0.0.1:0"]);
        assert_eq!(
            (o[0].ok(), o[1].ok()),
            (host_ok, own_ok),
            "loopback: {setting}: {o:?}"
        );
    }
}

#[test]
fn fast_open_and_io_uring_meet_the_connect_hook() {
    if !privileged("fast_open_and_io_uring_meet_the_connect_hook") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    for action in [
        "tfo:198.51.100.66:443",
        "uring-connect:198.51.100.66:443",
        "tfo:169.254.169.254:80",
        "uring-connect:[fd00:ec2::254]:80",
    ] {
        s.assert_egret_refuses(action);
    }
    assert!(
        s.job(&["uring-connect:203.0.113.10:443"])[0].ok(),
        "an allowed target over io_uring"
    );
    assert!(
        s.wait_event(|e| e["dst"] == "198.51.100.66" && e["hook"] == "connect4")
            .is_some()
    );
}

#[test]
fn ipv6_link_local_with_a_scope_is_lateral() {
    if !privileged("ipv6_link_local_with_a_scope_is_lateral") {
        return;
    }
    let s = Scenario::start("enforce", "- cidr: ::/0\n");
    let o = &s.job(&["link-local:to-inet:22"])[0];
    assert!(o.eperm(), "{o:?}");
    let ev = s.wait_event(|e| e["dst"] == "fe80::1").expect("event");
    assert_eq!(ev["reason"], "lateral");
}

#[test]
fn a_socket_created_before_the_move_into_the_cgroup_is_not_covered() {
    if !privileged("a_socket_created_before_the_move_into_the_cgroup_is_not_covered") {
        return;
    }
    // A socket belongs to the cgroup it was created in. This test documents
    // the consequence (see docs/install.md and the threat model): whoever
    // starts jobs must place them in the cgroup before they create sockets
    // (egret's harness writes cgroup.procs before exec; runners use a
    // cgroup_parent or a systemd slice), and must not hand them sockets.
    let s = Scenario::start("enforce", ALLOW);
    let action = format!(
        "premove:169.254.169.254:80,{}",
        s.cgroup.procs("ci").display()
    );
    // As root: moving a process between cgroups is the runner's doing.
    let o = &job::run_as_root(&s.world.host, None, &[&action])[0];
    assert!(
        o.ok(),
        "the old socket keeps the cgroup it was made in: {o:?}"
    );
    assert_eq!(
        o.count,
        Some(1),
        "a socket made after the move is refused: {o:?}"
    );
}

/// A job listening on every address must not become a command channel: a
/// peer the policy does not allow (the internet, v4 or v6, or the neighbour
/// VM) cannot connect in, while the job's own clients on loopback still can.
#[test]
fn peers_outside_the_policy_cannot_connect_in() {
    if !privileged("peers_outside_the_policy_cannot_connect_in") {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let attack = |ns: &egret_tests::netns::Netns, target: &str| -> job::Outcome {
        job::run(ns, None, &[&format!("tcp-from:{target}")]).remove(0)
    };
    // Without egret: the same listener outside any runner is reached from
    // the internet and from the neighbour.
    let outside = job::start(
        &s.world.host,
        None,
        &["listen:0.0.0.0:7201:3000", "listen:[::]:7202:100"],
    );
    egret_tests::poll_until("the unguarded listener", Duration::from_secs(3), || {
        attack(&s.world.internet, "198.51.100.66@192.0.2.2:7201").ok()
    });
    assert_eq!(
        attack(&s.world.neighbour, "10.0.0.5@10.0.0.1:7201")
            .banner
            .as_deref(),
        Some("job listener")
    );
    assert_eq!(outside.wait()[0].count, Some(2));

    // With egret: the job's listeners on 0.0.0.0 and [::], up long enough
    // for every attempt below to time out against them (3 s each).
    let inside = s.start_job(&["listen:0.0.0.0:7200:15000"]);
    let inside6 = s.start_job(&["listen:[::]:7203:15000"]);
    let (mut served, mut served6) = (0, 0);
    egret_tests::poll_until(
        "the job's listeners, reached by the job itself on loopback",
        Duration::from_secs(3),
        || {
            let o = s.job(&["tcp:127.0.0.1:7200", "tcp:[::1]:7203"]);
            served += u64::from(o[0].ok());
            served6 += u64::from(o[1].ok());
            o.iter().all(job::Outcome::ok)
        },
    );
    for (ns, target) in [
        // The attacker's own address, v4 and v6, and the host's subnet.
        (&s.world.internet, "198.51.100.66@192.0.2.2:7200"),
        (&s.world.internet, "2001:db8::66@[2001:db8:ffff::2]:7203"),
        (&s.world.internet, "192.0.2.1@192.0.2.2:7200"),
        (&s.world.neighbour, "10.0.0.5@10.0.0.1:7200"),
    ] {
        let o = attack(ns, target);
        assert!(
            !o.ok() && o.banner.is_none(),
            "{target} reached the job's listener: {o:?}"
        );
    }
    for (peer, reason) in [
        ("198.51.100.66", "not_allowed"),
        ("2001:db8::66", "not_allowed"),
        // The host's own subnet is its network, like the neighbour's.
        ("192.0.2.1", "lateral"),
    ] {
        let ev = s
            .wait_event(|e| e["hook"] == "egress" && e["dst"] == peer)
            .unwrap_or_else(|| panic!("an event naming {peer}"));
        assert_eq!(ev["reason"], reason, "{ev}");
    }
    s.wait_event(|e| e["hook"] == "egress" && e["dst"] == "10.0.0.5" && e["reason"] == "lateral")
        .expect("an event naming the neighbour");
    // Only the job's own loopback clients were ever accepted.
    assert_eq!(inside.wait()[0].count, Some(served));
    assert_eq!(inside6.wait()[0].count, Some(served6));
}

/// Joining a multicast group makes the kernel send membership reports, with
/// the group the job chose, from a socket of its own: refused unless the
/// runner opts in. The ground truth is the namespace's membership table,
/// which is what the kernel reports.
#[test]
fn multicast_joins_are_refused_unless_the_runner_opts_in() {
    if !privileged("multicast_joins_are_refused_unless_the_runner_opts_in") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    for group in ["239.1.2.3", "ff0e::1:2"] {
        let action = format!("mcast-join:{group}");
        let inside = &s.job(&[&action])[0];
        assert!(inside.eperm() && inside.count == Some(0), "{inside:?}");
        let outside = &s.outsider(&[&action])[0];
        assert!(
            outside.ok() && outside.count == Some(1),
            "from outside the runner the join works and is listed: {outside:?}"
        );
    }
    let ev = s
        .wait_event(|e| e["reason"] == "socket_option" && e["socket_option"] == "IP_ADD_MEMBERSHIP")
        .expect("a socket_option event");
    assert_eq!(ev["hook"], "setsockopt", "{ev}");
    assert!(ev["dst"].is_null(), "{ev}");
    assert!(
        s.wait_event(|e| e["socket_option"] == "IPV6_JOIN_GROUP")
            .is_some()
    );
    // Routing and option headers, and a listener taking data before the
    // handshake, are refused whatever the policy says.
    s.assert_egret_refuses("tcp-fastopen");
    // Root jobs: the kernel refuses these options to unprivileged ones.
    for action in ["ip-options", "ipv6-rthdr"] {
        s.assert_egret_refuses_root(action);
    }

    // The opt-in.
    s.kill_agent();
    world::write_file(
        &s.policy,
        &egret_tests::scenario::policy(&s.runner_cgroup, "enforce", ALLOW).replace(
            "    mode: enforce\n",
            "    mode: enforce\n    multicast: true\n",
        ),
    );
    s.start_agent();
    let o = &s.job(&["mcast-join:239.1.2.3"])[0];
    assert!(o.ok() && o.count == Some(1), "{o:?}");
    assert!(s.root_job(&["ip-options"])[0].eperm(), "still refused");
}

/// A connected UDP socket sending with a control message (IP_TOS for ECN)
/// reaches the sendmsg hook with no address: judged by its connected peer,
/// not refused as 0.0.0.0:0.
#[test]
fn connected_udp_with_control_messages_is_judged_by_its_peer() {
    if !privileged("connected_udp_with_control_messages_is_judged_by_its_peer") {
        return;
    }
    let s = Scenario::start(
        "enforce",
        "- cidr: 203.0.113.10/32\n  ports: [443]\n- cidr: 2001:db8::10/128\n  ports: [443]\n",
    );
    for peer in ["203.0.113.10:443", "[2001:db8::10]:443"] {
        let o = &s.job(&[&format!("udp-cmsg:{peer}")])[0];
        assert!(o.ok(), "{peer}: {o:?}");
        assert_eq!(
            o.banner.as_deref(),
            Some("egret-probe"),
            "the echo came back"
        );
    }
    // A peer outside the policy is refused as before (at connect).
    let o = &s.job(&["udp-cmsg:198.51.100.66:443"])[0];
    assert!(o.eperm(), "{o:?}");
}

/// Owning a loopback port is owning one address: a job that binds
/// `[::1]:P` or `127.0.0.2:P` does not thereby reach a host service on
/// `127.0.0.1:P` (nor on `0.0.0.0:P` through loopback).
#[test]
fn a_listener_on_another_loopback_address_owns_nothing_else() {
    if !privileged("a_listener_on_another_loopback_address_owns_nothing_else") {
        return;
    }
    let mut s = Scenario::start("enforce", ALLOW);
    s.world
        .serve_on_host(&["tcp:127.0.0.1:7300", "tcp:127.0.0.1:7302"]);
    // The job's own listeners beside the host services.
    let decoys = [
        s.start_job(&["listen:[::1]:7300:4000"]),
        s.start_job(&["listen:127.0.0.2:7302:4000"]),
    ];
    egret_tests::poll_until("the job's decoy listeners", Duration::from_secs(3), || {
        s.job(&["tcp:[::1]:7300", "tcp:127.0.0.2:7302"])
            .iter()
            .all(job::Outcome::ok)
    });
    for action in [
        "tcp:127.0.0.1:7300",
        "tcp:127.0.0.1:7302",
        "tcp:0.0.0.0:7300",
    ] {
        s.assert_egret_refuses(action);
    }
    for decoy in decoys {
        assert!(decoy.wait()[0].ok());
    }
}

/// NAT64 prefixes other than the well-known one carry the metadata service
/// and the neighbours too, even under a policy that allows every address:
/// a declared prefix (an operator's own, or one cut from the local-use
/// block) is judged by the IPv4 address it carries; the rest of the
/// local-use block is a lateral range until declared.
#[test]
fn nat64_prefixes_carry_no_way_to_metadata_or_neighbours() {
    if !privileged("nat64_prefixes_carry_no_way_to_metadata_or_neighbours") {
        return;
    }
    let mut s = Scenario::prepare("enforce", "- cidr: 0.0.0.0/0\n- cidr: ::/0\n");
    world::write_file(
        &s.policy,
        &std::fs::read_to_string(&s.policy).expect("policy").replace(
            "version: 1\n",
            "version: 1\nnat64_prefixes: [2001:db8:64::/96, 64:ff9b:1::/96]\n",
        ),
    );
    s.start_agent();
    for (action, reason) in [
        ("tcp:[64:ff9b:1::a9fe:a9fe]:80", "metadata"),
        ("tcp:[64:ff9b:1::a00:5]:22", "lateral"),
        ("tcp:[2001:db8:64::a9fe:a9fe]:80", "metadata"),
        // Not declared: another local-use prefix, whatever its layout.
        ("tcp:[64:ff9b:1:1::a9fe:a9fe]:80", "lateral"),
    ] {
        s.assert_egret_refuses(action);
        let dst = action
            .trim_start_matches("tcp:[")
            .split(']')
            .next()
            .expect("address");
        let ev = s
            .wait_event(|e| e["dst"] == dst)
            .unwrap_or_else(|| panic!("an event for {dst}"));
        assert_eq!(ev["reason"], reason, "{ev}");
    }
}

/// AF_VSOCK (a hypervisor's sockets on VM runners) is outside every cgroup
/// hook: egret neither refuses nor reports it, which is why the runner's
/// unit must refuse it (docs/install.md). This shows the limit.
#[test]
fn af_vsock_is_outside_every_hook() {
    const TEST: &str = "af_vsock_is_outside_every_hook";
    if !privileged(TEST) {
        return;
    }
    let s = Scenario::start("enforce", ALLOW);
    let outside = s.outsider(&["vsock"]).remove(0);
    if outside.errno == Some(libc::EAFNOSUPPORT) {
        egret_tests::not_testable_here(TEST, "this kernel has no vsock transport");
        return;
    }
    let inside = s.job(&["vsock"]).remove(0);
    assert_eq!(
        (inside.result.as_str(), inside.errno),
        (outside.result.as_str(), outside.errno),
        "egret does not see AF_VSOCK: the same inside the runner as outside"
    );
}

/// Another runner's job cannot join a listener on the same loopback
/// address (SO_REUSEPORT, same user): its bind fails with EPERM and a
/// `bind` event, so it neither takes a share of the owner's connections
/// nor passes for the owner. The same bind outside any runner joins: the
/// refusal is egret's.
#[test]
fn a_listener_cannot_be_taken_over_by_another_runner() {
    if !privileged("a_listener_cannot_be_taken_over_by_another_runner") {
        return;
    }
    let r = Runners::start(&["a", "b"], "- cidr: 203.0.113.10/32", &[], |_| {});
    let job_in = |runner: &str, actions: &[&str]| r.job(runner, actions).remove(0);
    let owner = r.start_job("a", &["listen-reuse:127.0.0.1:7500:8000"]);
    egret_tests::poll_until("runner a's listener", Duration::from_secs(3), || {
        job_in("a", &["tcp:127.0.0.1:7500"]).ok()
    });
    let outside = job::run(&r.world.host, None, &["listen-reuse:127.0.0.1:7500:100"]).remove(0);
    assert!(
        outside.ok(),
        "outside any runner the bind joins: {outside:?}"
    );

    let taker = job_in("b", &["listen-reuse:127.0.0.1:7500:100"]);
    assert!(
        taker.eperm(),
        "runner b cannot join a's listener: {taker:?}"
    );
    let ev = r
        .agent
        .wait_event(Duration::from_secs(5), |e| e["hook"] == "bind")
        .expect("a bind event");
    assert_eq!(
        (
            ev["runner"].as_str(),
            ev["reason"].as_str(),
            ev["port"].as_u64()
        ),
        (Some("b"), Some("lateral"), Some(7500)),
        "{ev}"
    );
    let o = job_in("b", &["tcp:127.0.0.1:7500"]);
    assert!(o.eperm(), "runner b does not reach a's listener: {o:?}");
    let o = job_in("a", &["tcp:127.0.0.1:7500"]);
    assert_eq!(o.banner.as_deref(), Some("job listener"), "{o:?}");
    // The owner binding beside its own listener is no takeover.
    let again = job_in("a", &["listen-reuse:127.0.0.1:7500:100"]);
    assert!(again.ok(), "{again:?}");
    assert!(owner.wait()[0].ok());
}
