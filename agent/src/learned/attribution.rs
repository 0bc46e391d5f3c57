//! Which names brought a runner to an address: what events name as the
//! `host` of a connect.

use super::*;

impl Learning {
    /// Remembers that an audit-mode runner's job resolved `name`, which no
    /// allow entry covers, to `ips`.
    pub fn note_audited(&mut self, runner: u32, name: &str, ips: &[IpAddr]) {
        if self.audited.len() + ips.len() > AUDITED_KEPT {
            self.audited.clear();
        }
        for ip in ips {
            let names = self.audited.entry((runner, *ip)).or_default();
            if !names.iter().any(|n| n == name) && names.len() < NAMES_PER_ADDRESS {
                names.push(name.to_owned());
            }
        }
    }

    /// Which host names this runner resolved to `ip`, for event attribution.
    pub fn hosts_for(&self, runner: u32, ip: IpAddr) -> Option<String> {
        let mut names: Vec<&str> = self
            .tracked
            .iter()
            .filter(|t| t.runner == runner && t.ips.contains_key(&ip))
            .map(|t| t.host.as_str())
            .chain(
                self.proxied
                    .get(&(runner, ip))
                    .into_iter()
                    .flat_map(|p| p.names.iter())
                    .chain(self.audited.get(&(runner, ip)).into_iter().flatten())
                    .map(String::as_str),
            )
            .collect();
        names.sort_unstable();
        names.dedup();
        (!names.is_empty()).then(|| names.join(","))
    }
}
