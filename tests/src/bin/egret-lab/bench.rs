//! What the benchmarks share: a guarded runner, sysctls, map filling.

use super::*;

/// Writes a policy of one runner, `name` at `cgroup` with the given
/// settings (indented YAML lines), and starts an agent enforcing it.
/// Bind the pair so the agent drops first: `let (pins, agent) = ...`.
pub(crate) fn guard(world: &World, name: &str, cgroup: &str, settings: &str) -> (Pins, Agent) {
    let policy = world.path("bench.yaml");
    world::write_file(
        &policy,
        &format!("version: 1\nrunners:\n  - name: {name}\n    cgroup: {cgroup}\n{settings}"),
    );
    let pins = Pins::new(world);
    let agent = Agent::start(world, &pins, &policy, &[]);
    (pins, agent)
}

/// Benchmarks open many short connections: gives the namespace the whole
/// ephemeral port range.
pub(crate) fn widen_port_range(ns: &egret_tests::netns::Netns) {
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range",
    ]);
    let status = ns.spawn(&mut cmd, None).wait().expect("sysctl");
    assert!(status.success(), "widening the port range in {}", ns.name);
}

/// Fills the pinned learned-IP map the way the agent's DNS proxy would
/// (hints first), so the kernel programs run against 10,000 exact entries.
pub(crate) fn load_exact_ips(pins: &Pins, count: u32) -> usize {
    let egret_pins = egret::datapath::Pins::new(&pins.bpffs);
    let maps = egret::datapath::Maps::from_pins(&egret_pins).expect("open pinned maps");
    let (_, record) = maps
        .runner_records()
        .into_iter()
        .find(|(n, _)| n == "bench")
        .expect("bench runner is pinned");
    let mut rules = PortRules {
        count: 1,
        ..Default::default()
    };
    rules.rules[0] = PortRule::new(443, 443, proto::TCP);
    let expires_ns = egret::clock::monotonic_ns() + Duration::from_secs(3600).as_nanos() as u64;
    let entries: Vec<(ExactKey, Learned)> = (0..count)
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(12, (i >> 16) as u8, (i >> 8) as u8, i as u8);
            let key = ExactKey {
                runner: record.id,
                addr: egret::compile::addr_of(ip.into()),
            };
            (key, Learned { expires_ns, rules })
        })
        .collect();
    egret::datapath::LearnedWriter::open(&egret_pins)
        .expect("open the learned map")
        .insert(&entries)
        .expect("insert learned");
    maps.count_learned(record.id)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
