//! The demo's second part, learn mode: the same runner, restarted in audit
//! mode with nothing allowed, records what a build job does; `egret
//! suggest` writes the policy it needed, `egret check` and `egret replay`
//! vouch for it, and enforced, the build passes while the attacker is
//! refused.

use egret_tests::agent;
use serde_json::Value;

use super::*;

/// Names the build resolves, beside the default zone's `files.pkg.test`.
const MORE_ZONE: &str = "a.pkg.test A 203.0.113.22 60\nb.pkg.test A 203.0.113.22 60\n";

/// What the build does: a registry and three packages by name through the
/// resolver it was given, the forge by address.
const BUILD: &[&str] = &[
    "dns-connect:registry.test:A:443:udp@203.0.113.53:53",
    "dns-connect:a.pkg.test:A:443:udp@203.0.113.53:53",
    "dns-connect:b.pkg.test:A:443:udp@203.0.113.53:53",
    "dns-connect:files.pkg.test:A:443:udp@203.0.113.53:53",
    "tcp:203.0.113.10:443",
];
const ATTACKS: &[&str] = &[
    "tcp:198.51.100.66:443",
    "dns-connect:attacker.test:A:443:udp@203.0.113.53:53",
];

fn audit_policy() -> String {
    format!(
        "version: 1\nrunners:\n  - name: ci\n    cgroup: /egret-demo/ci\n    mode: audit\n    \
         dns:\n      upstream: [{}]\n    allow: []\n",
        world::DNS
    )
}

fn show(title: &str, out: &agent::Cli) {
    println!("{title} (exit {}):", out.code);
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        println!("    {line}");
    }
}

/// Runs learn mode on `pins` for the runner whose `cgroup.procs` is given;
/// returns how many outcomes were not as expected.
pub(crate) fn learn(world: &World, pins: &Pins, procs: &std::path::Path) -> usize {
    let mut unexpected = 0;
    let mut expect = |ok: bool, what: &str| {
        if !ok {
            println!("  {what}   <-- UNEXPECTED");
            unexpected += 1;
        }
    };
    world.write_zone(&format!("{}{MORE_ZONE}", world::ZONE));
    let policy = world.path("learn.yaml");
    world::write_file(&policy, &audit_policy());
    let events = world.path("events.jsonl");
    let events_arg = events.display().to_string();
    let agent = Agent::start(world, pins, &policy, &["--events-file", &events_arg]);
    println!(
        "\nlearn mode: the agent restarted with runner ci in audit mode, nothing allowed, \
         recording to --events-file {}",
        events.display()
    );
    let outcomes = job::run(&world.host, Some(procs), BUILD);
    for (action, o) in BUILD.iter().zip(&outcomes) {
        println!(
            "  AUDITED {action:<56} reached \"{}\"",
            o.banner.as_deref().unwrap_or("")
        );
        expect(o.banner.is_some(), "a build step under audit");
    }
    let recorded = || -> Vec<Value> {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while recorded().iter().filter(|e| e["action"] == "audit").count() < 2 * BUILD.len() - 1 {
        if std::time::Instant::now() > deadline {
            for e in recorded() {
                println!("    {e}");
            }
            expect(false, "the recording of the build");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("  recorded {} events", recorded().len());

    let policy_arg = policy.display().to_string();
    let out = agent::cli(
        world,
        &[
            "suggest",
            "--runner",
            "ci",
            "--policy",
            &policy_arg,
            &events_arg,
        ],
    );
    show(
        "egret suggest --runner ci --policy learn.yaml events.jsonl",
        &out,
    );
    expect(out.code == 0, "egret suggest");
    let suggested = world.path("suggested.yaml");
    world::write_file(&suggested, &out.stdout);
    let suggested_arg = suggested.display().to_string();
    let check = agent::cli(world, &["check", &suggested_arg]);
    show("egret check suggested.yaml", &check);
    expect(check.code == 0, "egret check of the suggestion");
    let replay = agent::cli(world, &["replay", "--policy", &suggested_arg, &events_arg]);
    show("egret replay --policy suggested.yaml events.jsonl", &replay);
    expect(replay.code == 0, "egret replay of the suggestion");

    world::write_file(&policy, &out.stdout);
    let reload = agent::cli(world, &["reload"]);
    expect(reload.code == 0, "egret reload");
    println!("enforcing the suggestion: the same build, then an attacker");
    let all: Vec<&str> = BUILD.iter().chain(ATTACKS).copied().collect();
    let outcomes = job::run(&world.host, Some(procs), &all);
    for (i, (action, o)) in all.iter().zip(&outcomes).enumerate() {
        let refused = o.rcode.as_deref() == Some("Refused");
        let denied = o.eperm() || refused;
        println!(
            "  {} {action:<56} {}",
            if denied { "DENIED " } else { "ALLOWED" },
            if refused {
                "REFUSED by the runner's DNS proxy".to_owned()
            } else if denied {
                "EPERM".to_owned()
            } else {
                format!("reached \"{}\"", o.banner.as_deref().unwrap_or(""))
            }
        );
        expect(denied == (i >= BUILD.len()), action);
    }
    drop(agent);
    unexpected
}
