//! The kernel side as the agent sees it: bpffs, pinned maps and links, and
//! diff-syncing map contents.
//!
//! Pin layout under the bpffs directory (default `/sys/fs/bpf/egret`):
//! - `v<ABI>/maps/<MAP>`: every map, shared by all runners' programs;
//! - `v<ABI>/links/<runner id>/<program>`: the cgroup links. A pinned link
//!   stays attached when the agent exits, which is what keeps enforcement on.

mod hints;
mod maps;
mod pins;
mod raw_link;
mod sync;

use crate::IoError;
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use crate::compile::{CidrEntries, CidrEntryKey, Plan, TrieKey};
use aya::{
    EbpfLoader,
    maps::{LpmTrie, MapData, MapError, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSkbAttachType, CgroupSockAddr, Program, links::FdLink},
};
use egret_common::{
    addr::Addr,
    maps::{self as names, ExactKey, Learned},
    state::{MAX_RUNNERS, RunnerName, RunnerRecord, RunnerState},
};

pub use hints::LearnedWriter;
pub use maps::{EventRings, Maps};
pub use pins::{Pins, ensure_bpffs, retire_other_abis, teardown};

use sync::*;

/// The kernel programs: the committed object (`agent/ebpf/egret.bpf.o`),
/// checked against its sources by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egret-programs"));

/// Program names in the object and the hooks they attach to.
pub const PROGRAMS: [&str; egret_common::programs::ALL.len()] = egret_common::programs::ALL;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error(
        "no egret state under {0}: the agent has never run with this --bpffs, or `egret teardown` removed it"
    )]
    NotInstalled(PathBuf),
    #[error("loading the kernel programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link of {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the kernel object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the kernel object")]
    MissingProgram(&'static str),
    #[error("more than {} runners; egret supports at most that many per host", MAX_RUNNERS - 1)]
    TooManyRunners,
    #[error("runner name '{0}' does not fit the pinned name table")]
    BadRunnerName(String),
    #[error(transparent)]
    Cgroup(#[from] crate::runners::CgroupError),
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// The agent's handle on the datapath: maps plus the mirrors that make syncs
/// touch only entries that changed.
pub struct Datapath {
    pub pins: Pins,
    pub maps: Maps,
    cidr_mirror: CidrEntries,
    learned_mirror: HashMap<ExactKey, Learned>,
}

impl Datapath {
    /// Creates the pinned maps, or re-adopts the ones a previous agent left,
    /// keeping their contents. Returns the event ring buffer separately so it
    /// can be drained on its own task.
    pub fn open(pins: Pins) -> Result<(Self, EventRings)> {
        ensure_bpffs(&pins.root)?;
        let maps_dir = pins.maps_dir();
        std::fs::create_dir_all(&maps_dir).map_err(IoError::at("create", &maps_dir))?;
        std::fs::create_dir_all(pins.links_dir())
            .map_err(IoError::at("create", &pins.links_dir()))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)?;
        let (maps, events) = Maps::from_ebpf(&mut ebpf, &pins)?;
        let cidr_mirror = maps
            .cidrs
            .iter()
            .filter_map(|kv| kv.ok())
            .map(|(k, v)| ((k.prefix_len(), k.data()), v))
            .collect();
        let learned_mirror = maps.learned.iter().filter_map(|kv| kv.ok()).collect();
        Ok((
            Self {
                pins,
                maps,
                cidr_mirror,
                learned_mirror,
            },
            events,
        ))
    }

    /// Writes what `plan` decides into the maps: the baselines, every
    /// runner's CIDR entries and its state. Programs are attached
    /// afterwards ([`Self::attach`]), so a new runner never runs a moment
    /// under an empty policy. New and changed entries are written before
    /// stale ones are removed, so no entry wanted before and after is ever
    /// missing in between.
    pub fn sync(&mut self, plan: &Plan) -> Result<usize> {
        let baseline = plan.baseline();
        let hints = hints::plan_hints(plan, baseline.keys());
        self.maps
            .hints
            .raise(&hints)
            .map_err(map_err(names::HINTS))?;
        let mut changed = sync_baseline_trie(&mut self.maps.baseline, names::BASELINE, &baseline)?;
        changed += sync_baseline_trie(&mut self.maps.nat64, names::NAT64, &plan.nat64)?;
        let ids = plan.ids();
        changed += diff_sync(
            &mut self.maps.cidrs,
            &mut self.cidr_mirror,
            &plan.cidrs,
            |k| ids.contains(&u32::from_be_bytes(k.1.runner_be)),
            |trie, k, v| trie.insert(&Key::new(k.0, k.1), v, 0),
            |trie, k| trie.remove(&Key::new(k.0, k.1)),
        )
        .map_err(map_err(names::CIDRS))?;
        // Only now that stale entries are gone may their hints go.
        self.maps
            .hints
            .lower(&hints)
            .map_err(map_err(names::HINTS))?;
        for runner in &plan.runners {
            if self.maps.runner_state(runner.id).ok() != Some(runner.state) {
                self.maps.set_runner_state(runner.id, runner.state)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Attaches the programs of every runner in `plan` (re-adopting the
    /// pinned links of runners already attached to the same cgroup) and
    /// detaches runners the plan no longer has.
    pub fn attach(&mut self, plan: &Plan) -> Result<Vec<(String, Attached)>> {
        let mut done = Vec::with_capacity(plan.runners.len());
        for runner in &plan.runners {
            let cgroup_id = crate::runners::cgroup_id(&runner.cgroup_dir)?;
            let key = RunnerName::new(&runner.name)
                .ok_or_else(|| DatapathError::BadRunnerName(runner.name.clone()))?;
            let record = self.maps.runners.get(&key, 0).ok();
            if record.is_some_and(|rec| rec.id == runner.id && self.attached(&rec, cgroup_id)) {
                done.push((runner.name.clone(), Attached::Readopted));
                continue;
            }
            self.attach_runner(key, runner.id, &runner.cgroup_dir, cgroup_id)?;
            done.push((runner.name.clone(), Attached::New));
        }
        // A runner keeps its pinned id for as long as it keeps its name, so
        // its name alone says whether the plan still has it.
        for (name, rec) in self.maps.runner_records() {
            if !plan.runners.iter().any(|r| r.name == name) {
                self.remove_runner(&name, rec.id)?;
                done.push((name, Attached::Removed));
            }
        }
        Ok(done)
    }

    /// The id a runner's programs use: the one it had before (from the
    /// pinned name table), or the lowest one neither pinned nor in `taken`
    /// (ids just handed to other new runners of the same policy).
    pub fn runner_id(&self, name: &str, taken: &HashSet<u32>) -> Result<u32> {
        let key = RunnerName::new(name).ok_or_else(|| DatapathError::BadRunnerName(name.into()))?;
        if let Ok(rec) = self.maps.runners.get(&key, 0) {
            return Ok(rec.id);
        }
        let mut used: HashSet<u32> = self
            .maps
            .runner_records()
            .into_iter()
            .map(|(_, r)| r.id)
            .collect();
        used.extend(taken);
        (1..MAX_RUNNERS)
            .find(|id| !used.contains(id))
            .ok_or(DatapathError::TooManyRunners)
    }

    /// Whether a runner's programs are attached to `cgroup_id` by pinned links
    /// a previous agent left: then they are adopted as they are.
    fn attached(&self, record: &RunnerRecord, cgroup_id: u64) -> bool {
        record.cgroup_id == cgroup_id
            && PROGRAMS
                .iter()
                .all(|p| self.pins.runner_links_dir(record.id).join(p).exists())
    }

    /// Loads a copy of the programs for runner `id`, attaches it to the cgroup
    /// and pins the links. An older link pinned at the same place is replaced
    /// only after the new one is attached, so there is no unguarded moment.
    fn attach_runner(
        &mut self,
        key: RunnerName,
        id: u32,
        cgroup_dir: &Path,
        cgroup_id: u64,
    ) -> Result<()> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(self.pins.maps_dir())
            .override_global(names::RUNNER_ID, &id, true)
            .load(OBJECT)?;
        let cgroup = File::open(cgroup_dir).map_err(IoError::at("open cgroup", cgroup_dir))?;
        let dir = self.pins.runner_links_dir(id);
        std::fs::create_dir_all(&dir).map_err(IoError::at("create", &dir))?;
        for prog_name in PROGRAMS {
            let program = ebpf
                .program_mut(prog_name)
                .ok_or(DatapathError::MissingProgram(prog_name))?;
            let link = attach_one(prog_name, program, &cgroup)?;
            let final_path = dir.join(prog_name);
            let staging = dir.join(format!("{prog_name}_new"));
            let _ = std::fs::remove_file(&staging);
            link.pin(&staging)?;
            std::fs::rename(&staging, &final_path).map_err(IoError::at("rename pin", &staging))?;
        }
        self.maps
            .runners
            .insert(
                key,
                RunnerRecord {
                    id,
                    _pad: 0,
                    cgroup_id,
                },
                0,
            )
            .map_err(map_err(names::RUNNERS))?;
        Ok(())
    }

    /// Detaches a runner (unpinning its links releases them) and forgets its
    /// entries.
    pub fn remove_runner(&mut self, name: &str, id: u32) -> Result<()> {
        let dir = self.pins.runner_links_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(IoError::at("remove", &dir))?;
        }
        self.maps.set_runner_state(id, RunnerState::default())?;
        if let Some(key) = RunnerName::new(name) {
            let _ = self.maps.runners.remove(&key);
        }
        let gone: Vec<ExactKey> = self
            .learned_mirror
            .keys()
            .filter(|k| k.runner == id)
            .copied()
            .collect();
        for k in gone {
            let _ = self.maps.learned.remove(&k);
            self.learned_mirror.remove(&k);
        }
        let gone: Vec<CidrEntryKey> = self
            .cidr_mirror
            .keys()
            .filter(|(_, k)| k.runner_be == id.to_be_bytes())
            .copied()
            .collect();
        for k in gone {
            let _ = self.maps.cidrs.remove(&Key::new(k.0, k.1));
            self.cidr_mirror.remove(&k);
        }
        Ok(())
    }

    /// Makes the learned-IP map equal `desired` for the given runners.
    pub fn sync_learned(
        &mut self,
        runners: &HashSet<u32>,
        desired: &HashMap<ExactKey, Learned>,
    ) -> Result<usize> {
        hints::raise_learned(
            &mut self.maps.hints.map,
            desired.keys().filter(|k| runners.contains(&k.runner)),
        )
        .map_err(map_err(names::HINTS))?;
        diff_sync(
            &mut self.maps.learned,
            &mut self.learned_mirror,
            desired,
            |k| runners.contains(&k.runner),
            |map, k, v| map.insert(k, v, 0),
            // The kernel map may have lost it already (a lapsed entry).
            |map, k| match map.remove(k) {
                Err(MapError::KeyNotFound) => Ok(()),
                other => other,
            },
        )
        .map_err(map_err(names::LEARNED))
    }

    /// Removes learned entries at once, wherever they came from: the DNS
    /// proxy writes the map itself, so these may be in the kernel without
    /// ever having been in a sync.
    pub fn remove_learned(&mut self, keys: &[ExactKey]) -> Result<()> {
        for key in keys {
            self.learned_mirror.remove(key);
            match self.maps.learned.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::LEARNED)(e)),
            }
        }
        Ok(())
    }

    /// Learned entries currently in the kernel, as read at open and kept
    /// in step since.
    pub fn learned(&self) -> impl Iterator<Item = (&ExactKey, &Learned)> {
        self.learned_mirror.iter()
    }
}

/// A link just made, before it is pinned.
enum NewLink {
    Aya(FdLink),
    /// Made with bpf(2) directly (see `raw_link`).
    Raw(OwnedFd),
}

impl NewLink {
    fn pin(self, path: &Path) -> Result<()> {
        match self {
            Self::Aya(link) => link
                .pin(path)
                .map(drop)
                .map_err(|source| DatapathError::Pin {
                    path: path.to_owned(),
                    source,
                }),
            Self::Raw(fd) => raw_link::pin(fd.as_fd(), path)
                .map_err(|e| IoError::at("pin link at", path)(e).into()),
        }
    }
}

/// Loads one program of any of egret's cgroup kinds and attaches it.
fn attach_one(name: &'static str, program: &mut Program, cgroup: &File) -> Result<NewLink> {
    let prog_err = |source| DatapathError::Program { name, source };
    let link_err = |source| DatapathError::Link { name, source };
    match program {
        Program::CgroupSkb(prog) => {
            prog.load().map_err(prog_err)?;
            let id = prog
                .attach(
                    cgroup,
                    CgroupSkbAttachType::Egress,
                    CgroupAttachMode::Single,
                )
                .map_err(prog_err)?;
            let link = prog.take_link(id).map_err(prog_err)?;
            Ok(NewLink::Aya(link.try_into().map_err(link_err)?))
        }
        Program::CgroupSock(prog) => {
            prog.load().map_err(prog_err)?;
            let id = prog
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(prog_err)?;
            let link = prog.take_link(id).map_err(prog_err)?;
            Ok(NewLink::Aya(link.try_into().map_err(link_err)?))
        }
        Program::CgroupSockopt(prog) => {
            prog.load().map_err(prog_err)?;
            let fd = prog.fd().map_err(prog_err)?;
            let link = raw_link::create(fd.as_fd(), cgroup.as_fd(), raw_link::CGROUP_SETSOCKOPT)
                .map_err(|e| IoError::at("attach setsockopt program to", cgroup_path(cgroup))(e))?;
            Ok(NewLink::Raw(link))
        }
        other => {
            let prog: &mut CgroupSockAddr = other.try_into().map_err(prog_err)?;
            prog.load().map_err(prog_err)?;
            let id = prog
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(prog_err)?;
            let link = prog.take_link(id).map_err(prog_err)?;
            Ok(NewLink::Aya(link.try_into().map_err(link_err)?))
        }
    }
}

/// The path behind an open cgroup directory, for error messages.
fn cgroup_path(cgroup: &File) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", cgroup.as_raw_fd())).unwrap_or_default()
}

/// A baseline trie has no mirror: the agent writes it once per apply, so it
/// is read back and diffed like any other map.
fn sync_baseline_trie<V: aya::Pod + PartialEq>(
    trie: &mut LpmTrie<MapData, Addr, V>,
    name: &'static str,
    want: &HashMap<TrieKey, V>,
) -> Result<usize> {
    let mut have: HashMap<TrieKey, V> = trie
        .iter()
        .filter_map(|kv| kv.ok())
        .map(|(k, v)| ((k.prefix_len(), k.data()), v))
        .collect();
    diff_sync(
        trie,
        &mut have,
        want,
        |_| true,
        |trie, k, v| trie.insert(&Key::new(k.0, k.1), v, 0),
        |trie, k| trie.remove(&Key::new(k.0, k.1)),
    )
    .map_err(map_err(name))
}

/// How a runner's programs came to be attached, or that they were removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    New,
    /// Pinned links a previous agent left on the same cgroup.
    Readopted,
    /// The runner left the policy: detached, its entries forgotten.
    Removed,
}

#[cfg(test)]
mod tests;
