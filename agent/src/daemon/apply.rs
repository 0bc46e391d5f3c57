//! Bringing the kernel in line with a policy: runner ids, the plan, the
//! DNS proxies, the maps, the learned addresses, then the attachments.

use super::*;

impl Agent {
    /// Brings the kernel in line with `policy`: registers its runners,
    /// compiles the plan, starts their DNS proxies, syncs the maps, then
    /// attaches. A runner seen for the first time has its maps and state
    /// written before its programs are attached, so it never runs a moment
    /// under an empty policy.
    pub(super) async fn apply(&mut self, policy: &Policy) -> Result<(), AgentError> {
        let subnets = baseline::host_subnets().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the host's interfaces; lateral baseline covers the standard ranges only");
            Vec::new()
        });
        let host = Host {
            cgroup_root: self.cgroup_root.clone(),
            subnets,
            netns: self.host_netns,
        };
        let mut ids = HashMap::new();
        for runner in &policy.runners {
            let dir = runners::cgroup_dir(&self.cgroup_root, &runner.cgroup);
            runners::ensure_cgroup(&runner.name, &dir, self.opts.create_cgroups)?;
            let taken: HashSet<u32> = ids.values().copied().collect();
            ids.insert(
                runner.name.clone(),
                self.datapath.runner_id(&runner.name, &taken)?,
            );
        }
        let mut plan = compile::plan_with(policy, &ids, &host, &mut self.cidr_cache)?;

        self.learning(|l| {
            l.nat64 = policy.nat64_prefixes.clone();
            l.set_runner_count(policy.runners.len());
        });
        self.track_hosts(policy, &ids);
        self.resolve_due().await;
        self.start_proxies(policy, &mut plan)?;
        let rules: HashMap<u32, Vec<policy::HostRule>> = policy
            .runners
            .iter()
            .map(|r| (ids[&r.name], r.host_rules()))
            .collect();
        {
            // Under the learning lock, as the DNS proxy writes the map.
            let learning = self.learning.clone();
            let mut learning = learning.lock().unwrap_or_else(|e| e.into_inner());
            let gone = learning.reconcile(&rules);
            self.datapath.remove_learned(&gone)?;
        }
        let changed = self.datapath.sync(&plan)?;
        tracing::debug!(changed, "maps synced to the plan");
        self.sync_learned(&plan.ids())?;
        for (name, how) in self.datapath.attach(&plan)? {
            match how {
                Attached::New => tracing::info!(runner = %name, "attached programs"),
                Attached::Readopted => tracing::info!(runner = %name, "re-adopted pinned programs"),
                Attached::Removed => {
                    tracing::info!(runner = %name, "runner no longer in policy; detached");
                }
            }
        }
        self.proxies.retain(&plan.ids());
        for runner in policy.runners.iter().filter(|r| r.mode == Mode::Audit) {
            tracing::warn!(runner = %runner.name, "runner is in audit mode: denials are reported, not enforced");
        }

        self.enricher.set_runners(
            plan.runners
                .iter()
                .map(|r| (r.id, (r.name.clone(), r.cgroup_dir.clone())))
                .collect(),
        );
        self.ids = ids;
        self.cgroups = plan
            .runners
            .iter()
            .map(|r| (r.name.clone(), r.cgroup.clone()))
            .collect();
        Ok(())
    }

    /// Every exact hostname of the policy, per runner, for the resolver.
    pub(super) fn track_hosts(&self, policy: &Policy, ids: &HashMap<String, u32>) {
        let hosts: Vec<(u32, String, Vec<IpAddr>, policy::HostRule)> = policy
            .runners
            .iter()
            .flat_map(|r| {
                let id = ids[&r.name];
                let upstream = if r.dns_upstream.is_empty() {
                    self.opts.dns_upstream.clone()
                } else {
                    r.dns_upstream.clone()
                };
                r.hosts
                    .iter()
                    .map(move |h| (id, r.name.clone(), upstream.clone(), h.clone()))
            })
            .collect();
        self.learning(|l| l.set_hosts(hosts));
    }

    /// Starts or updates each runner's DNS proxy, and puts its port in the
    /// runner's planned state. The proxy listens before the programs send
    /// it anything.
    pub(super) fn start_proxies(
        &mut self,
        policy: &Policy,
        plan: &mut Plan,
    ) -> Result<(), AgentError> {
        for (runner, planned) in policy.runners.iter().zip(plan.runners.iter_mut()) {
            let old = self
                .datapath
                .maps
                .runner_state(planned.id)
                .unwrap_or_default();
            planned.state.dns_proxy_port = self.proxies.ensure(
                RunnerDns {
                    id: planned.id,
                    name: runner.name.clone(),
                    mode: runner.mode,
                    rules: runner.host_rules(),
                    upstream: dnsproxy::upstream_servers(
                        &runner.dns_upstream,
                        &self.opts.dns_upstream,
                    ),
                    refuse_with: runner.dns_refuse,
                    listen: runner.dns_listen,
                    cgroup_dir: planned.cgroup_dir.clone(),
                    nat64: policy.nat64_prefixes.clone(),
                    stats: Arc::default(),
                },
                old.dns_proxy_port,
            )?;
        }
        Ok(())
    }

    /// Writes `<state-dir>/agent.json`: which agent applied which policy to
    /// which runners, and when. Best effort: enforcement never depends on it.
    pub(super) fn record_applied(&self, files: &[PathBuf]) {
        let mut runners: Vec<AppliedRunner> = self
            .ids
            .iter()
            .map(|(name, id)| AppliedRunner {
                name: name.clone(),
                id: *id,
                cgroup: self.cgroups.get(name).cloned().unwrap_or_default(),
            })
            .collect();
        runners.sort_by_key(|r| r.id);
        let record = AppliedRecord {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            applied_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            policy: self.opts.policy.clone(),
            digest: self.digest.clone(),
            files: files.to_vec(),
            bpffs: self.opts.pins.root.clone(),
            runners,
        };
        if let Err(e) = record.write(&self.opts.state_dir) {
            tracing::warn!(error = %e, "cannot record the applied policy");
        }
    }

    /// Looks up every host whose refresh is due, all at once.
    pub(super) async fn resolve_due(&mut self) {
        let due: Vec<(usize, Vec<IpAddr>, String)> = self.learning(|l| {
            l.due(Instant::now())
                .into_iter()
                .map(|i| (i, l.tracked[i].upstream.clone(), l.tracked[i].host.clone()))
                .collect()
        });
        if due.is_empty() {
            return;
        }
        let mut lookups = JoinSet::new();
        for (index, upstream, host) in due {
            match self.resolvers.resolver(&upstream) {
                Ok(r) => {
                    lookups.spawn(async move { (index, resolver::lookup(&r, &host).await) });
                }
                Err(e) => self.learning(|l| l.apply(index, Answer::Failed(e.to_string()))),
            }
        }
        while let Some(done) = lookups.join_next().await {
            if let Ok((index, answer)) = done {
                self.learning(|l| l.apply(index, answer));
            }
        }
    }

    /// Syncs the learned-IP map for `runners`. Entries no answer backs any
    /// more are removed only for runners all of whose hosts have had an
    /// answer (a runner with no hosts has nothing to wait for).
    pub(super) fn sync_learned(&mut self, runners: &HashSet<u32>) -> Result<(), DatapathError> {
        // Held through the writes: the DNS proxy writes the same map under
        // this lock, so a sync never overwrites an answer it just learned.
        let learning = self.learning.clone();
        let mut learning = learning.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        learning.prune(now, runners);
        let settled: HashSet<u32> = runners
            .iter()
            .copied()
            .filter(|r| learning.settled(*r))
            .collect();
        let desired = learning.desired(now);
        let changed = self.datapath.sync_learned(&settled, &desired)?;
        tracing::debug!(changed, entries = desired.len(), "learned entries synced");
        Ok(())
    }

    pub(super) async fn refresh(&mut self) -> Result<(), DatapathError> {
        self.resolve_due().await;
        let runners: HashSet<u32> = self.ids.values().copied().collect();
        self.sync_learned(&runners)
    }
}
