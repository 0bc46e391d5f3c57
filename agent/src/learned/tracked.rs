//! The policy's exact hostnames, which the agent resolves itself: which
//! are tracked, what their answers taught, and when each is due again.

use super::*;

impl Learning {
    /// Replaces the set of tracked hosts, keeping what was learned for hosts
    /// that remain (same runner, name and upstream).
    pub fn set_hosts(&mut self, hosts: Vec<(u32, String, Vec<IpAddr>, HostRule)>) {
        let mut old: HashMap<(u32, String, Vec<IpAddr>), Tracked> = self
            .tracked
            .drain(..)
            .map(|t| ((t.runner, t.host.clone(), t.upstream.clone()), t))
            .collect();
        let now = Instant::now();
        for (runner, runner_name, upstream, rule) in hosts {
            let key = (runner, rule.name.clone(), upstream.clone());
            let tracked = match old.remove(&key) {
                Some(mut t) => {
                    t.ports = rule.ports;
                    t.runner_name = runner_name;
                    if t.private_answers != rule.private_answers {
                        t.private_answers = rule.private_answers;
                        t.ips.clear();
                        t.answered = false;
                        t.next_refresh = now;
                    }
                    t
                }
                None => Tracked {
                    runner,
                    runner_name,
                    host: rule.name,
                    ports: rule.ports,
                    private_answers: rule.private_answers,
                    upstream,
                    ips: HashMap::new(),
                    next_refresh: now,
                    answered: false,
                    failures: 0,
                },
            };
            // The same name listed twice for a runner (different ports) is
            // looked up once per entry; cheap, and keeps entries independent.
            self.tracked.push(tracked);
        }
    }

    /// Applies an answer to `tracked[index]`.
    pub fn apply(&mut self, index: usize, answer: Answer) {
        let Self {
            settings,
            nat64,
            tracked,
            ..
        } = self;
        let settings = *settings;
        let Some(t) = tracked.get_mut(index) else {
            return;
        };
        let now = Instant::now();
        match answer {
            Answer::Addresses { ips, ttl } => {
                let ttl = settings.clamp(ttl);
                let private_ok = t.private_answers;
                for ip in ips
                    .into_iter()
                    .filter(|ip| crate::baseline::answer_usable(*ip, private_ok, nat64))
                {
                    let until = now + ttl + settings.grace;
                    let slot = t.ips.entry(ip).or_insert(until);
                    *slot = (*slot).max(until);
                }
                t.next_refresh = now + ttl;
                t.answered = true;
                t.failures = 0;
            }
            Answer::NoAddress => {
                t.next_refresh = now + settings.floor;
                t.answered = true;
                t.failures = 0;
            }
            Answer::Failed(why) => {
                t.failures += 1;
                let backoff = settings.retry * t.failures.min(12);
                t.next_refresh = now + backoff;
                tracing::warn!(runner = %t.runner_name, host = %t.host, error = %why, "lookup failed; keeping what was learned before");
            }
        }
        t.ips.retain(|_, until| *until > now);
    }

    pub fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.tracked.len())
            .filter(|i| self.tracked[*i].next_refresh <= now)
            .collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let refresh = self.tracked.iter().map(|t| t.next_refresh);
        let expiry = self.tracked.iter().flat_map(|t| t.ips.values().copied());
        refresh.chain(expiry).min()
    }

    /// Runners all of whose hosts have had an answer: for those, learned
    /// entries no longer backed by an answer can be removed.
    pub fn settled(&self, runner: u32) -> bool {
        self.tracked
            .iter()
            .filter(|t| t.runner == runner)
            .all(|t| t.answered)
    }
}
