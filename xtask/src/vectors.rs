//! The bypass vector table `cargo xtask test` prints: each vector of
//! docs/threat-model.md and the end-to-end tests that prove it closed.

/// The variable naming the file where a test records that this kernel
/// cannot show what it tests (the test world's `not_testable_here`).
pub const UNTESTABLE_LOG_VAR: &str = "EGRET_UNTESTABLE_LOG";

/// Bypass vectors and the end-to-end tests that prove each one closed (the
/// table of docs/threat-model.md).
const VECTORS: &[(&str, &[&str])] = &[
    (
        "cloud metadata, v4/v6, even under 0.0.0.0/0",
        &[
            "metadata_stays_closed_when_the_policy_allows_everything",
            "everything_else_gets_eperm",
        ],
    ),
    (
        "IPv4-mapped connect6 and sendmsg6",
        &["everything_else_gets_eperm"],
    ),
    (
        "NAT64 64:ff9b::/96 to metadata",
        &["metadata_stays_closed_when_the_policy_allows_everything"],
    ),
    (
        "lateral: private ranges, host subnets",
        &[
            "everything_else_gets_eperm",
            "a_policy_can_name_a_neighbour_explicitly",
        ],
    ),
    (
        "IPv6 link-local with a scope id",
        &["ipv6_link_local_with_a_scope_is_lateral"],
    ),
    (
        "unconnected and connected UDP",
        &["everything_else_gets_eperm"],
    ),
    (
        "TCP Fast Open sendto(MSG_FASTOPEN)",
        &["fast_open_and_io_uring_meet_the_connect_hook"],
    ),
    (
        "io_uring IORING_OP_CONNECT",
        &["fast_open_and_io_uring_meet_the_connect_hook"],
    ),
    (
        "raw IP sockets (ICMP, crafted UDP)",
        &["socket_kinds_no_hook_can_judge_are_refused_at_socket"],
    ),
    (
        "ping sockets (unconnected sendto): egress backstop",
        &["ping_is_judged_packet_by_packet"],
    ),
    (
        "raw sockets a runner opts into: egress backstop",
        &["raw_sockets_a_runner_opts_into_are_still_judged_by_the_backstop"],
    ),
    (
        "MPTCP and other socket kinds",
        &["socket_kinds_no_hook_can_judge_are_refused_at_socket"],
    ),
    ("SCTP", &["sctp_sockets_are_refused_at_socket"]),
    (
        "inbound TCP from peers outside the policy",
        &["peers_outside_the_policy_cannot_connect_in"],
    ),
    (
        "loopback ownership through another loopback address",
        &["a_listener_on_another_loopback_address_owns_nothing_else"],
    ),
    (
        "another runner taking over a loopback listener",
        &["a_listener_cannot_be_taken_over_by_another_runner"],
    ),
    (
        "one runner filling the learned-address map",
        &["one_runner_cannot_fill_the_learned_map_for_the_others"],
    ),
    (
        "multicast joins, IP options, routing headers, server TFO",
        &["multicast_joins_are_refused_unless_the_runner_opts_in"],
    ),
    (
        "NAT64 local-use and declared prefixes",
        &["nat64_prefixes_carry_no_way_to_metadata_or_neighbours"],
    ),
    (
        "connected UDP with control messages (was refused)",
        &["connected_udp_with_control_messages_is_judged_by_its_peer"],
    ),
    (
        "a dot inside a DNS label",
        &["a_dot_inside_a_label_does_not_pass_for_an_allowed_name"],
    ),
    (
        "a rare denial hidden in a flood",
        &["a_flood_of_denials_loses_no_rare_one_and_starves_no_one"],
    ),
    (
        "host services on loopback, 0.0.0.0, ::",
        &[
            "loopback_reaches_the_jobs_own_listeners_but_not_host_services",
            "loopback_allow_and_deny",
        ],
    ),
    (
        "non-root job leaving its cgroup",
        &["a_non_root_job_cannot_leave_its_cgroup"],
    ),
    (
        "connections opened before a lockdown",
        &[
            "lockdown_ends_connections_opened_before_it",
            "lockdown_ends_a_handshake_in_flight",
        ],
    ),
    (
        "agent killed or restarting",
        &[
            "sigkill_leaves_enforcement_in_place_and_a_restart_resumes_it",
            "twenty_restarts_under_load",
        ],
    ),
    (
        "DNS tunnelling through any resolver, UDP, TCP or IPv6",
        &["a_name_outside_the_policy_is_refused_and_never_leaves"],
    ),
    (
        "DNS over TLS (853) and public DoH resolvers",
        &["dns_over_tls_and_doh_resolvers_need_an_entry_naming_them"],
    ),
    (
        "DNS rebinding onto neighbours or metadata",
        &["private_and_metadata_answers_are_stripped"],
    ),
    (
        "DNS from a container's own network namespace",
        &[
            "a_job_in_its_own_network_namespace_resolves_and_connects",
            "without_a_listen_address_a_container_job_cannot_use_dns",
        ],
    ),
    (
        "rotating CDN addresses racing the connect",
        &["rotating_addresses_never_race_the_connect"],
    ),
    (
        "a job container reaching another job's containers (docker executor)",
        &[
            "a_job_container_reaches_its_service_on_the_default_bridge_and_nothing_else",
            "a_network_per_build_resolves_the_service_alias_through_the_proxy",
            "unlabelled_containers_are_grouped_by_their_network_only",
        ],
    ),
    (
        "job containers while the Docker daemon restarts",
        &["a_docker_restart_mid_job_keeps_enforcement_and_the_agent_catches_up"],
    ),
    (
        "a job holding NET_RAW/NET_ADMIN/SYS_ADMIN (reported as privileged_job)",
        &[
            "a_job_holding_net_raw_is_reported_as_outside_the_boundary",
            "root_with_net_raw_in_a_container_is_outside_egret_and_reported",
        ],
    ),
    (
        "socket made before joining the cgroup (residual, documented)",
        &["a_socket_created_before_the_move_into_the_cgroup_is_not_covered"],
    ),
];

/// What no egret hook sees, held by the kernel instead, and the test that
/// shows the kernel rule: not egret's proof, so not "proved".
const KERNEL_RULES: &[(&str, &str)] = &[
    (
        "AF_PACKET without CAP_NET_RAW (no cgroup hook sees it)",
        "packet_sockets_need_a_capability_jobs_do_not_have",
    ),
    (
        "AF_VSOCK (no cgroup hook sees it; the runner's unit refuses it)",
        "af_vsock_is_outside_every_hook",
    ),
];

/// Prints the table; false where a vector is neither proved nor marked
/// untestable here (a test failed, or the table names one that no longer
/// runs).
pub fn print_vectors(
    results: &std::collections::HashMap<String, String>,
    untestable: &[String],
    privileged: bool,
) -> bool {
    let mut all_shown = true;
    println!("\nbypass vectors (docs/threat-model.md):");
    for (vector, tests) in VECTORS {
        let outcome = if !privileged {
            "skipped (EGRET_SKIP_PRIVILEGED=1)".to_owned()
        } else if let Some(t) = tests.iter().find(|t| untestable.iter().any(|u| u == *t)) {
            format!("not testable here (see {t})")
        } else if tests
            .iter()
            .all(|t| results.get(*t).is_some_and(|r| r == "ok"))
        {
            "proved".to_owned()
        } else {
            let failing: Vec<String> = tests
                .iter()
                .map(|t| format!("{t}: {}", results.get(*t).map_or("not run", String::as_str)))
                .collect();
            all_shown = false;
            format!("NOT PROVED ({})", failing.join("; "))
        };
        println!("  {vector:<62} {outcome}");
    }
    for (vector, test) in KERNEL_RULES {
        let outcome = match results.get(*test).map(String::as_str) {
            _ if !privileged => "skipped (EGRET_SKIP_PRIVILEGED=1)".to_owned(),
            _ if untestable.iter().any(|u| u == test) => format!("not testable here (see {test})"),
            Some("ok") => "not egret's: see docs/threat-model.md".to_owned(),
            other => {
                all_shown = false;
                format!("NOT SHOWN ({test}: {})", other.unwrap_or("not run"))
            }
        };
        println!("  {vector:<62} {outcome}");
    }
    all_shown
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A renamed or removed test would leave its vector "not run" until
    /// the privileged suite ran: caught here instead, from the sources.
    #[test]
    fn every_test_the_table_names_exists() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tests");
        let sources: String = std::fs::read_dir(dir)
            .expect("tests/tests")
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        let named = VECTORS
            .iter()
            .flat_map(|(_, tests)| tests.iter())
            .chain(KERNEL_RULES.iter().map(|(_, test)| test));
        let missing: Vec<&&str> = named
            .filter(|t| !sources.contains(&format!("fn {t}(")))
            .collect();
        assert!(
            missing.is_empty(),
            "named but not in tests/tests: {missing:?}"
        );
    }
}
