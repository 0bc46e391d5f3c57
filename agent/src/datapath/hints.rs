//! The hint rows the verdict reads before a lookup
//! (`egret_common::maps::hint`). A hint goes up before the entry it stands
//! for is written and comes down only after the entry is gone, so a
//! verdict never skips a lookup that could match.

use std::collections::HashSet;

use aya::maps::{Array, MapData, MapError};
use egret_common::{
    maps::{ExactKey, hint},
    state::GLOBAL_RUNNER,
};

use crate::compile::{Plan, TrieKey};

/// The CIDR and baseline hints a plan needs: runner 0's row for the
/// baseline, each runner's own row for its CIDR entries.
pub fn plan_hints<'a>(plan: &Plan, baseline: impl Iterator<Item = &'a TrieKey>) -> HashSet<u32> {
    let mut want = HashSet::new();
    for (len, net) in baseline {
        hint::slots_of(*len, net, |slot| {
            want.insert(hint::index(GLOBAL_RUNNER, hint::CIDRS, slot));
        });
    }
    for (len, key) in plan.cidrs.keys() {
        let runner = u32::from_be_bytes(key.runner_be);
        hint::slots_of(len.saturating_sub(32), &key.addr, |slot| {
            want.insert(hint::index(runner, hint::CIDRS, slot));
        });
    }
    want
}

/// The rows a plan's sync sets and clears, with what is known to be set.
pub struct Hints {
    pub map: Array<MapData, u8>,
    /// Hints this agent set for CIDRs and the baseline. A previous agent's
    /// are not known, so they are never cleared: a stale hint costs a
    /// lookup, nothing else.
    raised: HashSet<u32>,
}

impl Hints {
    pub fn new(map: Array<MapData, u8>) -> Self {
        Self {
            map,
            raised: HashSet::new(),
        }
    }

    /// Sets every hint in `want` not set yet: before the entries go in.
    pub fn raise(&mut self, want: &HashSet<u32>) -> Result<(), MapError> {
        let new: Vec<u32> = want.difference(&self.raised).copied().collect();
        for index in new {
            self.map.set(index, 1, 0)?;
            self.raised.insert(index);
        }
        Ok(())
    }

    /// Clears the hints this agent set that `want` no longer has: after the
    /// entries are gone.
    pub fn lower(&mut self, want: &HashSet<u32>) -> Result<(), MapError> {
        let stale: Vec<u32> = self.raised.difference(want).copied().collect();
        for index in stale {
            self.map.set(index, 0, 0)?;
            self.raised.remove(&index);
        }
        Ok(())
    }
}

/// Sets the learned-address hints of `keys`, before they are written.
/// These are never cleared.
pub fn raise_learned<'a>(
    map: &mut Array<MapData, u8>,
    keys: impl Iterator<Item = &'a ExactKey>,
) -> Result<(), MapError> {
    let indices: HashSet<u32> = keys
        .map(|k| hint::index(k.runner, hint::LEARNED, hint::slot(&k.addr)))
        .collect();
    for index in indices {
        map.set(index, 1, 0)?;
    }
    Ok(())
}

/// The DNS proxy's handle on the learned-address map: every write raises
/// the addresses' hints first.
pub struct LearnedWriter {
    learned: aya::maps::HashMap<MapData, ExactKey, egret_common::maps::Learned>,
    hints: Array<MapData, u8>,
}

impl LearnedWriter {
    pub fn open(pins: &super::Pins) -> Result<Self, MapError> {
        let open = |name: &str| -> Result<aya::maps::Map, MapError> {
            aya::maps::Map::from_map_data(MapData::from_pin(pins.map(name))?)
        };
        Ok(Self {
            learned: open(egret_common::maps::LEARNED)?.try_into()?,
            hints: open(egret_common::maps::HINTS)?.try_into()?,
        })
    }

    pub fn insert(
        &mut self,
        entries: &[(ExactKey, egret_common::maps::Learned)],
    ) -> Result<(), MapError> {
        raise_learned(&mut self.hints, entries.iter().map(|(k, _)| k))?;
        for (key, value) in entries {
            self.learned.insert(key, value, 0)?;
        }
        Ok(())
    }
}
