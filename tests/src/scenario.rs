//! A world with one runner cgroup and an agent enforcing a policy on it: the
//! starting point of most end-to-end tests and of the demo.

use std::{path::PathBuf, time::Duration};

use crate::{
    agent::{Agent, Pins},
    cgroup::TestCgroup,
    job::{self, Outcome},
    world::{self, World},
};

pub const RUNNER: &str = "ci";

/// Allow entries most tests start from: the forge on TCP 443 by address,
/// and a registry by name (two addresses in the fixture zone).
pub const FORGE_AND_REGISTRY: &str = "\
- cidr: 203.0.113.10/32
  ports: [443]
  proto: tcp
- host: registry.test
  ports: [443]
";

/// Fields drop in order: the agent stops, the pins are torn down, the cgroup
/// is emptied and removed, then the namespaces go.
pub struct Scenario {
    pub agent: Option<Agent>,
    pub pins: Pins,
    pub cgroup: TestCgroup,
    pub world: World,
    pub policy: PathBuf,
    /// The runner's cgroup as the policy names it.
    pub runner_cgroup: String,
}

/// A policy with one runner `ci`, resolving through the world's DNS fixture.
pub fn policy(cgroup: &str, mode: &str, allow: &str) -> String {
    let mut text = format!(
        "version: 1\nrunners:\n  - name: {RUNNER}\n    cgroup: {cgroup}\n    mode: {mode}\n    dns:\n      upstream: [{}]\n    allow:\n",
        world::DNS
    );
    if allow.trim().is_empty() {
        text.push_str("      []\n");
    }
    for line in allow.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str("      ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

impl Scenario {
    /// World, cgroup and policy, no agent yet.
    pub fn prepare(mode: &str, allow: &str) -> Self {
        let world = World::new();
        let mut cgroup = TestCgroup::new("egret-test");
        let runner_cgroup = cgroup.child("ci");
        let policy = world.path("policy.yaml");
        world::write_file(&policy, &self::policy(&runner_cgroup, mode, allow));
        let pins = Pins::new(&world);
        Self {
            agent: None,
            pins,
            cgroup,
            world,
            policy,
            runner_cgroup,
        }
    }

    /// World, cgroup, policy and a ready agent.
    pub fn start(mode: &str, allow: &str) -> Self {
        let mut s = Self::prepare(mode, allow);
        s.start_agent();
        s
    }

    pub fn start_agent(&mut self) -> &mut Agent {
        self.start_agent_with(&[])
    }

    pub fn start_agent_with(&mut self, extra: &[&str]) -> &mut Agent {
        let agent = Agent::start(&self.world, &self.pins, &self.policy, extra);
        self.agent.insert(agent)
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
    }

    /// A job in the runner's cgroup, as an unprivileged user
    /// ([`job::JOB_UID`]).
    pub fn job(&self, actions: &[&str]) -> Vec<Outcome> {
        job::run(&self.world.host, Some(&self.cgroup.procs("ci")), actions)
    }

    /// A job in the runner's cgroup, left running in the background.
    pub fn start_job(&self, actions: &[&str]) -> job::Running {
        job::start(&self.world.host, Some(&self.cgroup.procs("ci")), actions)
    }

    /// A job in a cgroup below the runner's (a container, say).
    pub fn job_in(&self, rel: &str, actions: &[&str]) -> Vec<Outcome> {
        job::run(&self.world.host, Some(&self.cgroup.procs(rel)), actions)
    }

    /// The same actions from a process on the host outside any runner.
    pub fn outsider(&self, actions: &[&str]) -> Vec<Outcome> {
        job::run(&self.world.host, None, actions)
    }

    /// A job in the runner's cgroup running as root, with every capability:
    /// the labelled case of a runner that gives jobs root.
    pub fn root_job(&self, actions: &[&str]) -> Vec<Outcome> {
        job::run_as_root(&self.world.host, Some(&self.cgroup.procs("ci")), actions)
    }

    /// As [`Scenario::outsider`], as root.
    pub fn root_outsider(&self, actions: &[&str]) -> Vec<Outcome> {
        job::run_as_root(&self.world.host, None, actions)
    }

    /// Asserts `action` gets EPERM in the runner's job and works from a
    /// process outside any runner, so the refusal is egret's and not an
    /// artefact of the test world.
    pub fn assert_egret_refuses(&self, action: &str) {
        self.assert_refused_inside_only(action, job::run);
    }

    /// As [`Scenario::assert_egret_refuses`], for a job running as root:
    /// what the kernel refuses an unprivileged job anyway (raw sockets, IP
    /// options), egret must refuse a root one too.
    pub fn assert_egret_refuses_root(&self, action: &str) {
        self.assert_refused_inside_only(action, job::run_as_root);
    }

    fn assert_refused_inside_only(
        &self,
        action: &str,
        run: fn(&crate::netns::Netns, Option<&std::path::Path>, &[&str]) -> Vec<Outcome>,
    ) {
        let inside = &run(&self.world.host, Some(&self.cgroup.procs("ci")), &[action])[0];
        assert!(
            inside.eperm(),
            "{action} from the job: expected EPERM, got {inside:?}"
        );
        let outside = &run(&self.world.host, None, &[action])[0];
        assert!(
            outside.ok(),
            "{action} from outside the runner must work (else the EPERM proves nothing): {outside:?}"
        );
    }

    pub fn wait_event(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        self.agent().wait_event(Duration::from_secs(5), pred)
    }
}

/// Several runners on one host, each in a cgroup of its own with the same
/// allow entries, resolving through the world's DNS fixture: for what one
/// runner must never do to another. Fields drop as in [`Scenario`].
pub struct Runners {
    pub agent: Agent,
    pub pins: Pins,
    pub cgroup: TestCgroup,
    pub world: World,
}

impl Runners {
    /// Starts the agent on a policy giving each of `names` the `allow`
    /// entries (YAML list items), with `extra` agent arguments. `before`
    /// runs on the world first (to write a zone, say).
    pub fn start(names: &[&str], allow: &str, extra: &[&str], before: impl FnOnce(&World)) -> Self {
        let world = World::new();
        before(&world);
        let mut cgroup = TestCgroup::new("egret-test");
        let mut text = String::from("version: 1\nrunners:\n");
        for name in names {
            let dir = cgroup.child(name);
            text.push_str(&format!(
                "  - name: {name}\n    cgroup: {dir}\n    dns:\n      upstream: [{}]\n    allow:\n",
                world::DNS
            ));
            for line in allow.lines() {
                text.push_str(&format!("      {line}\n"));
            }
        }
        let policy = world.path("policy.yaml");
        world::write_file(&policy, &text);
        let pins = Pins::new(&world);
        let agent = Agent::start(&world, &pins, &policy, extra);
        Self {
            agent,
            pins,
            cgroup,
            world,
        }
    }

    /// Runs a job in `runner`'s cgroup and returns its outcomes.
    pub fn job(&self, runner: &str, actions: &[&str]) -> Vec<Outcome> {
        job::run(&self.world.host, Some(&self.cgroup.procs(runner)), actions)
    }

    pub fn start_job(&self, runner: &str, actions: &[&str]) -> job::Running {
        job::start(&self.world.host, Some(&self.cgroup.procs(runner)), actions)
    }
}
