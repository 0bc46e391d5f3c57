//! Every shipped policy example loads into a real agent: cgroups attached,
//! maps filled, events flowing. The examples' cgroups are moved under a test
//! cgroup and their names resolve against the test world's DNS fixture.

use std::path::{Path, PathBuf};

use egret_tests::{
    agent::{Agent, Pins, cli},
    cgroup::TestCgroup,
    job, privileged, world,
    world::World,
};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("policy-examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_loads_into_the_agent() {
    if !privileged("every_example_loads_into_the_agent") {
        return;
    }
    for example in examples() {
        let world = World::new();
        let cgroup = TestCgroup::new("egret-example");
        let top = cgroup.policy_path("");
        let text = std::fs::read_to_string(&example).expect("read example");
        let text = text
            .replace("cgroup: /egret.slice/", &format!("cgroup: {top}"))
            .replace("cgroup: /egret-demo/", &format!("cgroup: {top}egret-demo/"));
        // A slice names a cgroup at the root: moved under the test's too.
        let text: String = text
            .lines()
            .map(|line| match line.trim_start().strip_prefix("slice: ") {
                Some(slice) => {
                    let path = egret::policy::slice_cgroup(slice).expect("a slice name");
                    let indent = &line[..line.len() - line.trim_start().len()];
                    format!("{indent}cgroup: {top}{}\n", path.trim_start_matches('/'))
                }
                None => format!("{line}\n"),
            })
            .collect();
        assert!(
            text.contains(&top),
            "{}: every example's cgroup is rewritten",
            example.display()
        );
        let policy = world.path("policy.yaml");
        world::write_file(&policy, &text);
        let pins = Pins::new(&world);
        let agent = Agent::start(
            &world,
            &pins,
            &policy,
            &["--create-cgroups", "--dns-upstream", world::DNS],
        );
        let status = cli(&world, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
        let runners = v["runners"].as_array().expect("runners");
        assert!(!runners.is_empty(), "{}: {v}", example.display());
        for r in runners {
            assert_eq!(
                r["programs_attached"],
                egret::datapath::PROGRAMS.len(),
                "{}: {r}",
                example.display()
            );
            let cg = r["cgroup"]
                .as_str()
                .expect("cgroup")
                .trim_start_matches(&top);
            // Metadata is refused in every runner of every example.
            let procs = cgroup.procs(cg);
            let o = job::one(&world.host, Some(&procs), "tcp:169.254.169.254:80");
            assert!(
                o.eperm(),
                "{} runner {}: {o:?}",
                example.display(),
                r["name"]
            );
        }
        drop(agent);
    }
}
