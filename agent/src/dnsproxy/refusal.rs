//! `dns_refused` events, naming the process behind a refused query within
//! a budget.

use std::{net::SocketAddr, sync::Arc};

use super::*;
use crate::{
    events::{self},
    policy::Mode,
};

/// Process scans per runner per second that name the process behind a
/// refused query.
pub(super) const SCANS_PER_SECOND: u32 = 50;

/// Publishes a `dns_refused` event, naming the process behind the query
/// when it can be found among the runner's processes. `answers`: what an
/// audit-mode runner's job was let resolve the name to.
pub(super) async fn report_refusal(
    runner: &RunnerDns,
    shared: &Arc<Shared>,
    name: &str,
    transport: Transport,
    peer: SocketAddr,
    answers: Option<Vec<std::net::IpAddr>>,
) {
    let (runner, shared, name) = (runner.clone(), shared.clone(), name.to_owned());
    let scan = shared.scans.allow(runner.id, std::time::Instant::now());
    let _ = tokio::task::spawn_blocking(move || {
        // Beyond the budget (a job flooding refused names) the events still
        // come, without the process: scanning /proc per query would let a
        // job make the agent spin.
        let owner = scan
            .then(|| {
                crate::runners::socket_owner(
                    &runner.cgroup_dir,
                    transport == Transport::Tcp,
                    peer.port(),
                )
            })
            .flatten();
        let job = owner.as_ref().and_then(|o| {
            let wanted = crate::jobs::Wanted {
                pid: o.pid,
                cgroup_id: o.cgroup_id,
                runner_cgroup: crate::runners::relative(&shared.cgroup_root, &runner.cgroup_dir)?,
            };
            shared.jobs.resolve(&wanted, std::time::Instant::now())
        });
        let record = events::EventRecord {
            schema: events::SCHEMA,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            runner: runner.name.clone(),
            cgroup: owner
                .as_ref()
                .and_then(|o| crate::runners::relative(&shared.cgroup_root, &o.cgroup_dir)),
            cgroup_id: owner.as_ref().map_or(0, |o| o.cgroup_id),
            pid: owner.as_ref().map_or(0, |o| o.pid),
            comm: owner.as_ref().map_or_else(String::new, |o| o.comm.clone()),
            family: if peer.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
            proto: match transport {
                Transport::Udp => "udp".into(),
                Transport::Tcp => "tcp".into(),
            },
            dst: None,
            port: egret_common::port::DNS,
            socket_type: None,
            socket_option: None,
            capabilities: None,
            host: Some(name),
            answers,
            reason: egret_common::event::reason::name(egret_common::event::reason::DNS_REFUSED)
                .into(),
            action: match runner.mode {
                Mode::Enforce => "deny",
                Mode::Audit => "audit",
            }
            .into(),
            hook: egret_common::event::hook::name(egret_common::event::hook::DNS_PROXY).into(),
            job,
        };
        if let Some(job) = &record.job {
            shared.jobs.recent.note(&record.runner, job, &record.time);
        }
        events::publish(&record, &shared.hub);
    })
    .await;
}

/// Publishes a `quota` event: the runner asked for a name whose addresses
/// would take it past its share of the learned-address map.
pub(super) fn report_quota(
    runner: &RunnerDns,
    shared: &Shared,
    name: &str,
    over: crate::learned::OverQuota,
) {
    tracing::warn!(
        runner = %runner.name,
        host = name,
        held = over.held,
        quota = over.quota,
        "runner holds its whole share of the learned-address map; answering SERVFAIL"
    );
    let record = events::EventRecord {
        schema: events::SCHEMA,
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        runner: runner.name.clone(),
        cgroup: None,
        cgroup_id: 0,
        pid: 0,
        comm: String::new(),
        family: "ipv4".into(),
        proto: "udp".into(),
        dst: None,
        port: egret_common::port::DNS,
        socket_type: None,
        socket_option: None,
        capabilities: None,
        host: Some(name.to_owned()),
        answers: None,
        reason: egret_common::event::reason::name(egret_common::event::reason::QUOTA).into(),
        action: "deny".into(),
        hook: egret_common::event::hook::name(egret_common::event::hook::DNS_PROXY).into(),
        job: None,
    };
    events::publish(&record, &shared.hub);
}
