//! `--metrics-listen` in the test world: a scrape after a job did known
//! things shows exactly those counts, the text parses with a Prometheus
//! parser and matches `egret status --format prometheus`, and a flood of
//! scrapes leaves enforcement and the DNS proxy as they were.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use egret_tests::{
    agent::cli,
    netns::Netns,
    poll_until, privileged,
    scenario::{FORGE_AND_REGISTRY, Scenario},
};

/// The world's host namespace is fresh; any port is free there.
const PORT: u16 = 9464;

fn get(host: &Netns, path: &'static str) -> (u16, String) {
    host.run_in(move || {
        let mut s =
            TcpStream::connect(("127.0.0.1", PORT)).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: egret\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (code, body)
    })
}

fn scrape(host: &Netns) -> prometheus_parse::Scrape {
    let (code, body) = get(host, "/metrics");
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

#[test]
fn a_scrape_counts_what_a_job_did() {
    if !privileged("a_scrape_counts_what_a_job_did") {
        return;
    }
    let mut s = Scenario::prepare("enforce", FORGE_AND_REGISTRY);
    let listen = format!("127.0.0.1:{PORT}");
    s.start_agent_with(&["--metrics-listen", &listen]);
    let host = &s.world.host;
    let before = scrape(host);
    let denied = |sc: &prometheus_parse::Scrape, reason| {
        value(
            sc,
            "egret_denied_total",
            &[("runner", "ci"), ("reason", reason)],
        )
    };
    let dns = |sc: &prometheus_parse::Scrape, outcome| {
        value(
            sc,
            "egret_dns_queries_total",
            &[("runner", "ci"), ("outcome", outcome)],
        )
    };
    let o = s.job(&[
        "tcp:203.0.113.10:443",
        "tcp:198.51.100.66:443",
        "tcp:198.51.100.66:80",
        "tcp:169.254.169.254:80",
        "dns:registry.test:A:udp@203.0.113.53:53",
        "dns:exfil.attacker.test:A:udp@203.0.113.53:53",
    ]);
    assert!(
        o[0].ok() && o[1].eperm() && o[2].eperm() && o[3].eperm(),
        "{o:?}"
    );
    assert_eq!(o[5].rcode.as_deref(), Some("Refused"));
    // A scrape is reused for a second: poll until the job shows.
    let mut after = scrape(host);
    poll_until(
        "the job's denials in a scrape",
        Duration::from_secs(10),
        || {
            after = scrape(host);
            denied(&after, "metadata") > denied(&before, "metadata")
                && dns(&after, "refused") > dns(&before, "refused")
        },
    );
    assert_eq!(
        denied(&after, "not_allowed") - denied(&before, "not_allowed"),
        2.0
    );
    assert_eq!(
        denied(&after, "metadata") - denied(&before, "metadata"),
        1.0
    );
    assert_eq!(dns(&after, "refused") - dns(&before, "refused"), 1.0);
    assert_eq!(dns(&after, "answered") - dns(&before, "answered"), 1.0);
    let allowed =
        |sc: &prometheus_parse::Scrape| value(sc, "egret_allowed_total", &[("runner", "ci")]);
    assert!(allowed(&after) - allowed(&before) >= 1.0);
    assert_eq!(value(&after, "egret_up", &[]), 1.0);
    assert_eq!(
        value(
            &after,
            "egret_map_entries",
            &[("runner", "ci"), ("map", "cidr")]
        ),
        1.0
    );
    assert_eq!(value(&after, "egret_lockdown", &[("runner", "ci")]), 0.0);

    // The same numbers from the command line, for the textfile collector.
    let out = cli(&s.world, &["status", "--format", "prometheus"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let offline = prometheus_parse::Scrape::parse(out.stdout.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    assert_eq!(denied(&offline, "metadata"), denied(&after, "metadata"));
    assert_eq!(get(host, "/other").0, 404);
}

#[test]
fn a_flood_of_scrapes_leaves_enforcement_and_dns_alone() {
    if !privileged("a_flood_of_scrapes_leaves_enforcement_and_dns_alone") {
        return;
    }
    let mut s = Scenario::prepare("enforce", FORGE_AND_REGISTRY);
    let listen = format!("127.0.0.1:{PORT}");
    s.start_agent_with(&["--metrics-listen", &listen]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let ns = std::fs::File::open(s.world.host.path()).expect("netns");
            let stop = stop.clone();
            std::thread::spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                assert_ne!(egret_tests::netns::current(), egret_tests::netns::initial());
                let mut served = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(mut c) = TcpStream::connect(("127.0.0.1", PORT)) {
                        let _ = c.write_all(
                            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        );
                        let mut sink = Vec::new();
                        if c.read_to_end(&mut sink).is_ok() && sink.starts_with(b"HTTP/1.1 200") {
                            served += 1;
                        }
                    }
                }
                served
            })
        })
        .collect();
    let actions: Vec<&str> = std::iter::repeat_n(
        [
            "dns-connect:registry.test:A:443:udp@203.0.113.53:53",
            "tcp:198.51.100.66:443",
        ],
        20,
    )
    .flatten()
    .collect();
    let o = s.job(&actions);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u32 = flooders
        .into_iter()
        .map(|t| t.join().expect("flooder"))
        .sum();
    for (i, outcome) in o.iter().enumerate() {
        if i % 2 == 0 {
            assert!(
                outcome.banner.is_some(),
                "the registry through the proxy, under the flood: {outcome:?}"
            );
        } else {
            assert!(
                outcome.eperm(),
                "the attacker, under the flood: {outcome:?}"
            );
        }
    }
    assert!(served > 0, "the endpoint answered during the flood");
    assert_eq!(get(&s.world.host, "/metrics").0, 200, "and after it");
}
