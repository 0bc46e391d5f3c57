//! The status as Prometheus metrics: served on `--metrics-listen` and
//! printed by `egret status --format prometheus` (for node_exporter's
//! textfile collector). Labels are runners, reasons, maps and outcomes
//! only, never addresses, names or job ids, so the series stay few.

pub mod serve;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::status::Status;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Registers a family and hands it back for filling.
fn family<
    M: Default
        + Clone
        + prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, M> {
    let f = Family::<Labels, M>::default();
    registry.register(name, help, f.clone());
    f
}

/// The kernel's per-runner counters that are denials, by the reason label
/// they get.
const DENIALS: [(&str, &str); 7] = [
    ("denied_not_allowed", "not_allowed"),
    ("denied_metadata", "metadata"),
    ("denied_lateral", "lateral"),
    ("denied_lockdown", "lockdown"),
    ("denied_socket_kind", "socket_kind"),
    ("denied_dns", "dns"),
    ("denied_socket_option", "socket_option"),
];

/// The Prometheus text exposition of `status`.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("egret");
    let up = Gauge::<i64>::default();
    registry.register(
        "up",
        "1 when the agent answered; 0 when this comes from the pins alone",
        up.clone(),
    );
    up.set(i64::from(status.agent.is_some()));
    let build = family::<Gauge>(&mut registry, "build_info", "The egret version, as a label");
    build
        .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);

    let allowed = family::<Counter>(
        &mut registry,
        "allowed",
        "Connections and datagrams let through by policy",
    );
    let denied = family::<Counter>(&mut registry, "denied", "Attempts refused, by reason");
    let audited = family::<Counter>(
        &mut registry,
        "audited",
        "Attempts an audit-mode runner would have refused",
    );
    let lost = family::<Counter>(
        &mut registry,
        "events_lost",
        "Events lost because the kernel's ring buffer was full (the verdicts stood)",
    );
    let errors = family::<Counter>(
        &mut registry,
        "program_errors",
        "Program-internal failures, each one denied",
    );
    let dns = family::<Counter>(
        &mut registry,
        "dns_queries",
        "DNS queries the runner's proxy handled, by outcome",
    );
    let rebinding = family::<Counter>(
        &mut registry,
        "dns_rebinding_answers_dropped",
        "Answers dropped by the DNS rebinding guard",
    );
    let entries = family::<Gauge>(
        &mut registry,
        "map_entries",
        "Entries the runner holds in a map",
    );
    let capacity = family::<Gauge>(
        &mut registry,
        "map_capacity",
        "Entries a map can hold, shared by every runner",
    );
    let lockdown = family::<Gauge>(
        &mut registry,
        "lockdown",
        "1 while the runner is locked down",
    );
    let jobs = family::<Gauge>(
        &mut registry,
        "jobs_recently_denied",
        "CI jobs of the runner denied lately",
    );
    let privileged = family::<Gauge>(
        &mut registry,
        "privileged_processes",
        "Job processes holding NET_RAW, NET_ADMIN or SYS_ADMIN",
    );

    for r in &status.runners {
        let runner = r.name.as_str();
        let one = labels(&[("runner", runner)]);
        let count = |name: &str| r.counters.get(name).copied().unwrap_or(0);
        for (family, counter) in [
            (&allowed, "allowed"),
            (&audited, "audited"),
            (&lost, "events_dropped"),
            (&errors, "errors"),
        ] {
            family.get_or_create(&one).inc_by(count(counter));
        }
        for (counter, reason) in DENIALS {
            denied
                .get_or_create(&labels(&[("runner", runner), ("reason", reason)]))
                .inc_by(count(counter));
        }
        for (outcome, n) in [
            ("answered", r.dns.answered),
            ("refused", r.dns.refused),
            ("failed", r.dns.failed),
            ("quota", r.dns.quota),
        ] {
            dns.get_or_create(&labels(&[("runner", runner), ("outcome", outcome)]))
                .inc_by(n);
        }
        rebinding.get_or_create(&one).inc_by(r.dns.stripped);
        for (map, n) in [("cidr", r.cidr_entries), ("learned", r.learned_entries)] {
            entries
                .get_or_create(&labels(&[("runner", runner), ("map", map)]))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for (family, value) in [
            (&lockdown, i64::from(r.lockdown.is_some())),
            (&jobs, r.recent_jobs.len() as i64),
            (&privileged, r.privileged_processes.len() as i64),
        ] {
            family.get_or_create(&one).set(value);
        }
    }
    for (map, n) in [
        ("cidr", egret_common::maps::CIDRS_CAPACITY),
        ("learned", egret_common::maps::LEARNED_CAPACITY),
    ] {
        capacity
            .get_or_create(&labels(&[("map", map)]))
            .set(i64::from(n));
    }
    if let Some(agent) = &status.agent {
        let reloads = family::<Counter>(
            &mut registry,
            "reloads",
            "Policy reloads since the agent started, by result",
        );
        reloads
            .get_or_create(&labels(&[("result", "ok")]))
            .inc_by(agent.reloads_ok);
        reloads
            .get_or_create(&labels(&[("result", "failed")]))
            .inc_by(agent.reloads_failed);
        if let Some(at) = agent
            .last_reload
            .as_ref()
            .and_then(|r| humantime::parse_rfc3339(&r.at).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        {
            let last = Gauge::<i64>::default();
            registry.register(
                "last_reload_timestamp_seconds",
                "When the policy was last reloaded, ok or not",
                last.clone(),
            );
            last.set(at.as_secs() as i64);
        }
    }
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests;
