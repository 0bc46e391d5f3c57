//! Typed handles on every pinned map.

use crate::IoError;

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf},
};
use egret_common::{
    addr::Addr,
    maps::{self as names, Baseline, CidrKey, ExactKey, Learned},
    rules::PortRules,
    state::{Lockdown, MAX_RUNNERS, RunnerName, RunnerRecord, RunnerState},
};

use super::*;

/// Handles on every pinned map.
pub struct Maps {
    pub state: Array<MapData, RunnerState>,
    pub lockdown: Array<MapData, Lockdown>,
    pub runners: BpfHashMap<MapData, RunnerName, RunnerRecord>,
    pub cidrs: LpmTrie<MapData, CidrKey, PortRules>,
    pub learned: BpfHashMap<MapData, ExactKey, Learned>,
    /// Metadata and lateral ranges, merged ([`crate::compile::Plan::baseline`]).
    pub baseline: LpmTrie<MapData, Addr, Baseline>,
    pub nat64: LpmTrie<MapData, Addr, egret_common::maps::Nat64Entry>,
    pub counters: PerCpuArray<MapData, u64>,
    pub hints: super::hints::Hints,
}

impl Maps {
    /// Opens the pins of a running (or crashed) installation without loading
    /// anything: what `lockdown`, `unlock` and `status` use with no agent.
    pub fn from_pins(pins: &Pins) -> Result<Self> {
        if !pins.map(names::STATE).exists() {
            return Err(DatapathError::NotInstalled(pins.root.clone()));
        }
        let mut open = |name: &'static str| -> Result<aya::maps::Map> {
            let data = MapData::from_pin(pins.map(name)).map_err(map_err(name))?;
            aya::maps::Map::from_map_data(data).map_err(map_err(name))
        };
        let runners = typed(names::RUNNERS, &mut open)?;
        Self::assemble(runners, &mut open)
    }

    pub(super) fn from_ebpf(ebpf: &mut Ebpf, pins: &Pins) -> Result<(Self, EventRings)> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let maps = Self::assemble(runner_table(pins)?, &mut take)?;
        let rings = EventRings {
            urgent: typed(names::URGENT_EVENTS, &mut take)?,
            bulk: typed(names::EVENTS, &mut take)?,
        };
        Ok((maps, rings))
    }

    /// The typed handles, whatever `source` draws the maps from (their pins,
    /// or a freshly loaded object).
    fn assemble(
        runners: BpfHashMap<MapData, RunnerName, RunnerRecord>,
        source: &mut impl FnMut(&'static str) -> Result<aya::maps::Map>,
    ) -> Result<Self> {
        Ok(Self {
            state: typed(names::STATE, source)?,
            lockdown: typed(names::LOCKDOWN, source)?,
            runners,
            cidrs: typed(names::CIDRS, source)?,
            learned: typed(names::LEARNED, source)?,
            baseline: typed(names::BASELINE, source)?,
            nat64: typed(names::NAT64, source)?,
            counters: typed(names::COUNTERS, source)?,
            hints: super::hints::Hints::new(typed(names::HINTS, source)?),
        })
    }

    pub fn runner_records(&self) -> Vec<(String, RunnerRecord)> {
        self.runners
            .iter()
            .filter_map(|kv| kv.ok())
            .map(|(name, rec)| (name.as_str().to_owned(), rec))
            .collect()
    }

    pub fn runner_state(&self, id: u32) -> Result<RunnerState> {
        self.state.get(&id, 0).map_err(map_err(names::STATE))
    }

    pub fn set_runner_state(&mut self, id: u32, state: RunnerState) -> Result<()> {
        self.state.set(id, state, 0).map_err(map_err(names::STATE))
    }

    pub fn lockdown_of(&self, id: u32) -> Result<Lockdown> {
        self.lockdown.get(&id, 0).map_err(map_err(names::LOCKDOWN))
    }

    pub fn set_lockdown(&mut self, id: u32, lockdown: Lockdown) -> Result<()> {
        self.lockdown
            .set(id, lockdown, 0)
            .map_err(map_err(names::LOCKDOWN))
    }

    /// Sum over CPUs of one counter slot.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    pub fn count_cidrs(&self, runner: u32) -> usize {
        self.cidrs
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.data().runner_be == runner.to_be_bytes())
            .count()
    }

    pub fn count_learned(&self, runner: u32) -> usize {
        self.learned
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.runner == runner)
            .count()
    }
}

/// One map from `source`, as its typed handle.
pub(super) fn typed<T>(
    name: &'static str,
    source: &mut impl FnMut(&'static str) -> Result<aya::maps::Map>,
) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    T::try_from(source(name)?).map_err(map_err(name))
}

/// The runner name table is used by userspace only (the programs know their
/// own id), so it is not part of the kernel object: create and pin it here.
pub(super) fn runner_table(pins: &Pins) -> Result<BpfHashMap<MapData, RunnerName, RunnerRecord>> {
    let path = pins.map(names::RUNNERS);
    if !path.exists() {
        let table = BpfHashMap::<MapData, RunnerName, RunnerRecord>::create(MAX_RUNNERS, 0)
            .map_err(map_err(names::RUNNERS))?;
        // Pinned under a staging name and renamed, so a crash never leaves a
        // half-made table where a later agent would trust it.
        let staging = pins.maps_dir().join(format!("{}_new", names::RUNNERS));
        let _ = std::fs::remove_file(&staging);
        table.pin(&staging).map_err(|source| DatapathError::Pin {
            path: staging.clone(),
            source,
        })?;
        std::fs::rename(&staging, &path).map_err(IoError::at("rename pin", &staging))?;
    }
    let data = MapData::from_pin(&path).map_err(map_err(names::RUNNERS))?;
    let map = aya::maps::Map::from_map_data(data).map_err(map_err(names::RUNNERS))?;
    BpfHashMap::try_from(map).map_err(map_err(names::RUNNERS))
}

/// The kernel's event ring buffers: metadata and lockdown denials in a ring
/// of their own, which a flood of ordinary denials cannot fill.
pub struct EventRings {
    pub urgent: RingBuf<MapData>,
    pub bulk: RingBuf<MapData>,
}
