//! The exposition, read back with a real Prometheus text parser.

use std::collections::HashMap;

use super::*;
use crate::status::{AgentInfo, DnsCounts, ReloadResult, RunnerStatus};

fn status() -> Status {
    let counters = HashMap::from([
        ("allowed".to_owned(), 7),
        ("denied_not_allowed".to_owned(), 3),
        ("denied_metadata".to_owned(), 1),
        ("audited".to_owned(), 2),
        ("events_dropped".to_owned(), 0),
    ]);
    Status {
        agent: Some(AgentInfo {
            version: "0.1.0".into(),
            reloads_ok: 4,
            reloads_failed: 1,
            last_reload: Some(ReloadResult {
                at: "2026-12-02T10:00:00Z".into(),
                ok: false,
                error: Some("bad".into()),
            }),
            ..Default::default()
        }),
        runners: vec![RunnerStatus {
            name: "ci".into(),
            id: 1,
            counters,
            cidr_entries: 2,
            learned_entries: 5,
            dns: DnsCounts {
                answered: 9,
                refused: 4,
                failed: 1,
                stripped: 2,
                quota: 0,
            },
            lockdown: Some(serde_json::json!({"since": "now"})),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn parsed(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn every_counter_and_gauge_parses_with_its_value() {
    let text = render(&status());
    let s = parsed(&text);
    let ci = [("runner", "ci")];
    assert_eq!(value(&s, "egret_up", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "egret_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value(&s, "egret_allowed_total", &ci), 7.0);
    assert_eq!(
        value(
            &s,
            "egret_denied_total",
            &[("runner", "ci"), ("reason", "not_allowed")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "egret_denied_total",
            &[("runner", "ci"), ("reason", "metadata")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "egret_denied_total",
            &[("runner", "ci"), ("reason", "lateral")]
        ),
        0.0
    );
    assert_eq!(value(&s, "egret_audited_total", &ci), 2.0);
    assert_eq!(
        value(
            &s,
            "egret_dns_queries_total",
            &[("runner", "ci"), ("outcome", "answered")]
        ),
        9.0
    );
    assert_eq!(
        value(
            &s,
            "egret_dns_queries_total",
            &[("runner", "ci"), ("outcome", "refused")]
        ),
        4.0
    );
    assert_eq!(
        value(&s, "egret_dns_rebinding_answers_dropped_total", &ci),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "egret_map_entries",
            &[("runner", "ci"), ("map", "learned")]
        ),
        5.0
    );
    assert_eq!(
        value(&s, "egret_map_capacity", &[("map", "learned")]),
        f64::from(egret_common::maps::LEARNED_CAPACITY)
    );
    assert_eq!(value(&s, "egret_lockdown", &ci), 1.0);
    assert_eq!(value(&s, "egret_reloads_total", &[("result", "ok")]), 4.0);
    assert_eq!(
        value(&s, "egret_reloads_total", &[("result", "failed")]),
        1.0
    );
    assert_eq!(
        value(&s, "egret_last_reload_timestamp_seconds", &[]),
        1_796_205_600.0
    );
}

/// Labels are runners, reasons, maps, outcomes and results: nothing a job
/// controls can add a series.
#[test]
fn labels_are_bounded() {
    let s = parsed(&render(&status()));
    for sample in &s.samples {
        for (key, _) in sample.labels.iter() {
            assert!(
                ["runner", "reason", "map", "outcome", "result", "version"].contains(&key.as_str()),
                "{} has label {key}",
                sample.metric
            );
        }
    }
}

#[test]
fn without_an_agent_up_is_zero() {
    let mut st = status();
    st.agent = None;
    let s = parsed(&render(&st));
    assert_eq!(value(&s, "egret_up", &[]), 0.0);
    assert!(
        !s.samples
            .iter()
            .any(|x| x.metric.starts_with("egret_reloads"))
    );
}
