//! `cargo xtask bench dns`: the proxy against the upstream and dnsmasq.

use super::*;

/// The benchmark upstream: the default zone served from memory.
pub(crate) const FAST_DNS: &str = "203.0.113.54";
/// Every query asks a different name, as a build resolving its many
/// dependencies does, so no forwarder can merge identical queries in flight.
pub(crate) const LOAD_NAME: &str = "q{n}.bench.test";
pub(crate) const FLOOD_NAME: &str = "c{c}-q{n}.bench.test";
/// dnsmasq on the host's loopback, forwarding to [`FAST_DNS`].
pub(crate) const DNSMASQ: &str = "127.0.0.1:5300";

pub(crate) fn bench_dns(rate: u64, ms: u64, clients: u32, rounds: u32, one_name: bool) -> ExitCode {
    let (load_name, flood_name) = if one_name {
        ("same.bench.test", "same.bench.test")
    } else {
        (LOAD_NAME, FLOOD_NAME)
    };
    let mut world = World::new();
    world.start_fast_dns(FAST_DNS);
    let mut cgroup = TestCgroup::new("egret-bench");
    let guarded = cgroup.child("egret");
    let (_pins, _agent) = guard(
        &world,
        "bench",
        &guarded,
        &format!(
            "    dns:\n      upstream: [{FAST_DNS}]\n    allow:\n      - host: \"*.bench.test\"\n        ports: [443]\n"
        ),
    );
    let Some(dnsmasq) = which_dnsmasq() else {
        eprintln!("dnsmasq not found: `cargo xtask setup` installs dnsmasq-base");
        return ExitCode::from(2);
    };
    let mut cmd = std::process::Command::new(dnsmasq);
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-daemon",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--port=5300",
        // A forwarder like the proxy: no cache to answer from.
        "--cache-size=0",
        "--dns-forward-max=1000",
        "--pid-file=",
        "--user=root",
        "--log-facility=-",
        &format!("--server={FAST_DNS}"),
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut dnsmasq = world.host.spawn(&mut cmd, None);
    std::thread::sleep(Duration::from_millis(500));

    let upstream = format!("{FAST_DNS}:53");
    // (label, cgroup, server the client asks)
    let paths: [(&str, Option<&str>, &str); 3] = [
        ("upstream directly", None, &upstream),
        ("dnsmasq forwarder", None, DNSMASQ),
        ("egret DNS proxy", Some("egret"), &upstream),
    ];
    let mut results: Vec<PathSamples> = (0..paths.len()).map(|_| PathSamples::default()).collect();
    for _ in 0..rounds {
        for (i, (label, rel, server)) in paths.iter().enumerate() {
            let procs = rel.map(|r| cgroup.procs(r));
            let load = job::one(
                &world.host,
                procs.as_deref(),
                &format!("dns-load:{rate}:{ms}:{load_name}:{server}"),
            );
            assert!(load.ok(), "{label}: {load:?}");
            let flood = job::one(
                &world.host,
                procs.as_deref(),
                &format!("dns-flood:{ms}:{clients}:{flood_name}:{server}"),
            );
            assert!(flood.ok(), "{label}: {flood:?}");
            let r = &mut results[i];
            r.p50_us.push(load.p50_ns.unwrap_or(0) as f64 / 1000.0);
            r.p99_us.push(load.p99_ns.unwrap_or(0) as f64 / 1000.0);
            r.qps.push(flood.qps.unwrap_or(0) as f64);
            r.lost += load.count.unwrap_or(0) - load.oks.unwrap_or(0);
        }
    }
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();

    println!(
        "egret bench dns: A queries {} under an allowed *.bench.test, {rounds} rounds; latency at {rate} queries/s for {ms} ms, throughput with {clients} clients",
        if one_name {
            "all for one name"
        } else {
            "each for another name"
        }
    );
    println!(
        "  {:<20} {:>10} {:>10} {:>12} {:>8}",
        "path", "p50 (us)", "p99 (us)", "queries/s", "lost"
    );
    let mut medians = Vec::new();
    for ((label, _, _), r) in paths.iter().zip(results.iter_mut()) {
        let m = (
            median(&mut r.p50_us),
            median(&mut r.p99_us),
            median(&mut r.qps),
        );
        println!(
            "  {label:<20} {:>10.0} {:>10.0} {:>12.0} {:>8}",
            m.0, m.1, m.2, r.lost
        );
        medians.push(m);
    }
    println!(
        "  added by the proxy: p50 {:+.0} us, p99 {:+.0} us (target: p99 under 1000 us)",
        medians[2].0 - medians[0].0,
        medians[2].1 - medians[0].1
    );
    println!(
        "  throughput, proxy / dnsmasq: {:.0}% (target >= 100%)",
        100.0 * medians[2].2 / medians[1].2.max(1.0)
    );
    ExitCode::SUCCESS
}

/// What the runs of one path measured.
#[derive(Default)]
pub(crate) struct PathSamples {
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    qps: Vec<f64>,
    lost: u64,
}

pub(crate) fn which_dnsmasq() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}
