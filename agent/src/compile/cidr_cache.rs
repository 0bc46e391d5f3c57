//! Compiled CIDR entries kept per runner, by a fingerprint of what they
//! were compiled from, so a reload that leaves a runner's 10,000 CIDRs as
//! they were does not merge them again.

use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
};

use super::*;

/// One runner's compiled entries and what they came from.
struct Compiled {
    fingerprint: u64,
    entries: HashMap<CidrEntryKey, PortRules>,
}

/// Per runner id: its entries as last compiled.
#[derive(Default)]
pub struct CidrCache {
    runners: HashMap<u32, Compiled>,
}

/// What one runner's compiled entries depend on: its rules, its name (which
/// an error names) and the lateral ranges.
fn fingerprint(runner: &RunnerCidrs<'_>, lateral: &[IpNet]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    runner.name.hash(&mut h);
    lateral.hash(&mut h);
    for rule in runner.cidrs {
        rule.net.hash(&mut h);
        rule.ports.hash(&mut h);
    }
    h.finish()
}

impl CidrCache {
    pub(super) fn compile(
        &mut self,
        runners: &[RunnerCidrs<'_>],
        lateral: &[IpNet],
    ) -> Result<HashMap<CidrEntryKey, PortRules>, CompileError> {
        self.runners
            .retain(|id, _| runners.iter().any(|r| r.id == *id));
        let mut out = HashMap::new();
        for runner in runners {
            let fingerprint = fingerprint(runner, lateral);
            match self.runners.get(&runner.id) {
                Some(c) if c.fingerprint == fingerprint => {
                    out.extend(c.entries.iter().map(|(k, v)| (*k, *v)));
                }
                _ => {
                    let entries = compile_cidrs(std::slice::from_ref(runner), lateral)?;
                    out.extend(entries.iter().map(|(k, v)| (*k, *v)));
                    self.runners.insert(
                        runner.id,
                        Compiled {
                            fingerprint,
                            entries,
                        },
                    );
                }
            }
        }
        Ok(out)
    }
}
