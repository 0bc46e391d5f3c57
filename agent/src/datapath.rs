//! The kernel side as the agent sees it: bpffs, pinned maps and links, and
//! diff-syncing map contents.
//!
//! Pin layout under the bpffs directory (default `/sys/fs/bpf/egret`):
//! - `v<ABI>/maps/<MAP>`: every map, shared by all runners' programs;
//! - `v<ABI>/links/<runner id>/<program>`: the cgroup links. A pinned link
//!   stays attached when the agent exits, which is what keeps enforcement on.

use crate::IoError;
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs::File,
    net::IpAddr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf,
        lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Program,
        ProgramError, links::FdLink,
    },
};
use egret_common::{
    ABI_VERSION,
    addr::{Addr, MAPPED_PREFIX_LEN, mapped_v4},
    maps::{
        self as names, BaselineEntry, CIDR_KEY_BITS, CidrKey, ExactKey, Learned, baseline_kind,
    },
    rules::{MAX_PORT_RULES, PortRule, PortRules, rules_flags},
    state::{Lockdown, MAX_RUNNERS, RunnerName, RunnerRecord, RunnerState},
};
use ipnet::IpNet;

/// The kernel programs, built by build.rs. Empty in a stub build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egret-programs"));

/// Program names in the object and the hooks they attach to.
pub const PROGRAMS: [&str; 13] = [
    "egret_connect4",
    "egret_connect6",
    "egret_sendmsg4",
    "egret_sendmsg6",
    "egret_recvmsg4",
    "egret_recvmsg6",
    "egret_getpeername4",
    "egret_getpeername6",
    "egret_sock_create",
    "egret_post_bind4",
    "egret_post_bind6",
    "egret_sock_release",
    "egret_egress",
];

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this egret binary was built without its kernel programs (EGRET_EBPF_STUB=1); \
         rebuild it after `cargo xtask setup`"
    )]
    StubBuild,
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
    #[error("more than {} runners; egret supports at most that many per host", MAX_RUNNERS - 1)]
    TooManyRunners,
    #[error("runner name '{0}' does not fit the pinned name table")]
    BadRunnerName(String),
    #[error(
        "runner '{runner}': {net} collects {count} port ranges from the entries that cover it; \
         at most {MAX_PORT_RULES} fit"
    )]
    TooManyPortRules {
        runner: String,
        net: IpNet,
        count: usize,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Where egret's pins live.
#[derive(Clone, Debug)]
pub struct Pins {
    pub root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn abi_dir(&self) -> PathBuf {
        self.root.join(format!("v{ABI_VERSION}"))
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.abi_dir().join("maps")
    }
    pub fn links_dir(&self) -> PathBuf {
        self.abi_dir().join("links")
    }
    pub fn runner_links_dir(&self, id: u32) -> PathBuf {
        self.links_dir().join(id.to_string())
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
}

fn statfs_type(path: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|s| s.filesystem_type().0)
}

/// Makes `root` a directory on a bpffs: fine as it is when it already is one
/// (or sits below a mounted bpffs such as /sys/fs/bpf); otherwise a private
/// bpffs is mounted right there.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    if statfs_type(root) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let existing_ancestor = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    std::fs::create_dir_all(root).map_err(IoError::at("create", root))?;
    if existing_ancestor != root && statfs_type(existing_ancestor) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    use nix::mount::{MsFlags, mount};
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| IoError::at("mount bpffs on", root)(e.into()))?;
    tracing::info!(path = %root.display(), "mounted a bpffs for egret's pins");
    if private_mount_namespace() {
        tracing::warn!(
            path = %root.display(),
            "this bpffs was mounted inside a private mount namespace (a sandboxed service?); \
             if that namespace goes away, so do the pins and enforcement. Mount bpffs on the host \
             (mount -t bpf bpf /sys/fs/bpf) before starting the agent"
        );
    }
    Ok(())
}

/// Whether this process runs in another mount namespace than PID 1.
fn private_mount_namespace() -> bool {
    let ns = |p: &str| std::fs::read_link(p).ok();
    match (ns("/proc/self/ns/mnt"), ns("/proc/1/ns/mnt")) {
        (Some(mine), Some(init)) => mine != init,
        _ => false,
    }
}

/// A CIDR trie key: prefix length plus (runner, address).
pub type CidrEntryKey = (u32, CidrKey);

/// Handles on every pinned map.
pub struct Maps {
    pub state: Array<MapData, RunnerState>,
    pub lockdown: Array<MapData, Lockdown>,
    pub runners: BpfHashMap<MapData, RunnerName, RunnerRecord>,
    pub cidrs: LpmTrie<MapData, CidrKey, PortRules>,
    pub learned: BpfHashMap<MapData, ExactKey, Learned>,
    pub metadata: LpmTrie<MapData, Addr, BaselineEntry>,
    pub lateral: LpmTrie<MapData, Addr, BaselineEntry>,
    pub counters: PerCpuArray<MapData, u64>,
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

    fn from_ebpf(ebpf: &mut Ebpf, pins: &Pins) -> Result<(Self, RingBuf<MapData>)> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let maps = Self::assemble(runner_table(pins)?, &mut take)?;
        let events = typed(names::EVENTS, &mut take)?;
        Ok((maps, events))
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
            metadata: typed(names::METADATA, source)?,
            lateral: typed(names::LATERAL, source)?,
            counters: typed(names::COUNTERS, source)?,
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

/// The agent's handle on the datapath: maps plus the mirrors that make syncs
/// touch only entries that changed.
pub struct Datapath {
    pub pins: Pins,
    pub maps: Maps,
    cidr_mirror: HashMap<CidrEntryKey, PortRules>,
    learned_mirror: HashMap<ExactKey, Learned>,
}

impl Datapath {
    /// Creates the pinned maps, or re-adopts the ones a previous agent left,
    /// keeping their contents. Returns the event ring buffer separately so it
    /// can be drained on its own task.
    pub fn open(pins: Pins) -> Result<(Self, RingBuf<MapData>)> {
        if OBJECT.is_empty() {
            return Err(DatapathError::StubBuild);
        }
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

    /// Writes the metadata and lateral lists (the latter plus the host's own
    /// subnets), adding before removing so no entry is ever missing mid-sync.
    pub fn sync_baseline(
        &mut self,
        metadata: &[(IpNet, u16)],
        lateral: &[IpNet],
        doh: &[IpNet],
    ) -> Result<()> {
        let want_meta: HashMap<(u32, Addr), BaselineEntry> = metadata
            .iter()
            .map(|(net, port)| {
                (
                    trie_prefix(net),
                    BaselineEntry {
                        exempt_port: *port,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let doh_entry = BaselineEntry {
            kind: baseline_kind::DOH,
            ..Default::default()
        };
        let want_lateral: HashMap<(u32, Addr), BaselineEntry> = doh
            .iter()
            .map(|net| (trie_prefix(net), doh_entry))
            .chain(
                lateral
                    .iter()
                    .map(|net| (trie_prefix(net), BaselineEntry::default())),
            )
            .collect();
        sync_baseline_trie(&mut self.maps.metadata, names::METADATA, &want_meta)?;
        sync_baseline_trie(&mut self.maps.lateral, names::LATERAL, &want_lateral)
    }

    /// The id a runner's programs use: the one it had before (from the pinned
    /// name table), or the lowest one neither pinned nor in `taken` (ids just
    /// handed to other new runners of the same policy).
    pub fn runner_id(
        &self,
        name: &str,
        taken: &HashSet<u32>,
    ) -> Result<(u32, Option<RunnerRecord>)> {
        let key = RunnerName::new(name).ok_or_else(|| DatapathError::BadRunnerName(name.into()))?;
        if let Ok(rec) = self.maps.runners.get(&key, 0) {
            return Ok((rec.id, Some(rec)));
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
            .map(|id| (id, None))
            .ok_or(DatapathError::TooManyRunners)
    }

    /// Whether a runner's programs are attached to `cgroup_id` by pinned links
    /// a previous agent left: then they are adopted as they are.
    pub fn attached(&self, record: &RunnerRecord, cgroup_id: u64) -> bool {
        record.cgroup_id == cgroup_id
            && PROGRAMS
                .iter()
                .all(|p| self.pins.runner_links_dir(record.id).join(p).exists())
    }

    /// Loads a copy of the programs for runner `id`, attaches it to the cgroup
    /// and pins the links. An older link pinned at the same place is replaced
    /// only after the new one is attached, so there is no unguarded moment.
    pub fn attach(&mut self, name: &str, id: u32, cgroup_dir: &Path, cgroup_id: u64) -> Result<()> {
        let key = RunnerName::new(name).ok_or_else(|| DatapathError::BadRunnerName(name.into()))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(self.pins.maps_dir())
            .override_global("RUNNER_ID", &id, true)
            .load(OBJECT)?;
        let cgroup = File::open(cgroup_dir).map_err(IoError::at("open cgroup", cgroup_dir))?;
        let dir = self.pins.runner_links_dir(id);
        std::fs::create_dir_all(&dir).map_err(IoError::at("create", &dir))?;
        for prog_name in PROGRAMS {
            let prog_err = |source| DatapathError::Program {
                name: prog_name,
                source,
            };
            let program = ebpf
                .program_mut(prog_name)
                .ok_or(DatapathError::MissingMap(prog_name))?;
            let link = attach_one(program, &cgroup)
                .map_err(prog_err)?
                .map_err(|source| DatapathError::Link {
                    name: prog_name,
                    source,
                })?;
            let final_path = dir.join(prog_name);
            let staging = dir.join(format!("{prog_name}_new"));
            let _ = std::fs::remove_file(&staging);
            link.pin(&staging).map_err(|source| DatapathError::Pin {
                path: staging.clone(),
                source,
            })?;
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

    /// Makes the CIDR trie equal `desired` for the given runners.
    pub fn sync_cidrs(
        &mut self,
        runners: &HashSet<u32>,
        desired: &HashMap<CidrEntryKey, PortRules>,
    ) -> Result<usize> {
        diff_sync(
            &mut self.maps.cidrs,
            &mut self.cidr_mirror,
            desired,
            |k| runners.contains(&u32::from_be_bytes(k.1.runner_be)),
            |trie, k, v| trie.insert(&Key::new(k.0, k.1), v, 0),
            |trie, k| trie.remove(&Key::new(k.0, k.1)),
        )
        .map_err(map_err(names::CIDRS))
    }

    /// Makes the learned-IP map equal `desired` for the given runners.
    pub fn sync_learned(
        &mut self,
        runners: &HashSet<u32>,
        desired: &HashMap<ExactKey, Learned>,
    ) -> Result<usize> {
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

    /// Learned entries currently in the kernel, as read at open and kept
    /// in step since.
    pub fn learned(&self) -> impl Iterator<Item = (&ExactKey, &Learned)> {
        self.learned_mirror.iter()
    }
}

/// Loads one program of either cgroup kind and attaches it; the inner result
/// is the conversion of its link into a pinnable one.
fn attach_one(
    program: &mut Program,
    cgroup: &File,
) -> std::result::Result<std::result::Result<FdLink, aya::programs::links::LinkError>, ProgramError>
{
    if let Program::CgroupSkb(prog) = program {
        let prog: &mut CgroupSkb = prog;
        prog.load()?;
        let id = prog.attach(
            cgroup,
            CgroupSkbAttachType::Egress,
            CgroupAttachMode::Single,
        )?;
        return Ok(prog.take_link(id)?.try_into());
    }
    if let Program::CgroupSock(prog) = program {
        let prog: &mut CgroupSock = prog;
        prog.load()?;
        let id = prog.attach(cgroup, CgroupAttachMode::Single)?;
        return Ok(prog.take_link(id)?.try_into());
    }
    let prog: &mut CgroupSockAddr = program.try_into()?;
    prog.load()?;
    let id = prog.attach(cgroup, CgroupAttachMode::Single)?;
    Ok(prog.take_link(id)?.try_into())
}

/// One map from `source`, as its typed handle.
fn typed<T>(
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
fn runner_table(pins: &Pins) -> Result<BpfHashMap<MapData, RunnerName, RunnerRecord>> {
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

/// Brings `map` and its `mirror` to `desired` on the keys `in_scope`
/// selects: every new or changed entry is written first, and only then are
/// the entries no longer wanted removed, so an entry wanted before and after
/// is never missing in between. The mirror changes only after the kernel
/// accepted the change, so a failure is retried by the next sync. Returns how
/// many entries changed.
fn diff_sync<M, K, V>(
    map: &mut M,
    mirror: &mut HashMap<K, V>,
    desired: &HashMap<K, V>,
    in_scope: impl Fn(&K) -> bool,
    write: impl Fn(&mut M, &K, &V) -> Result<(), MapError>,
    remove: impl Fn(&mut M, &K) -> Result<(), MapError>,
) -> Result<usize, MapError>
where
    K: Copy + Eq + std::hash::Hash,
    V: Copy + PartialEq,
{
    let mut changes = 0;
    for (k, v) in desired {
        if mirror.get(k) != Some(v) {
            write(map, k, v)?;
            mirror.insert(*k, *v);
            changes += 1;
        }
    }
    let gone: Vec<K> = mirror
        .keys()
        .filter(|k| in_scope(k) && !desired.contains_key(k))
        .copied()
        .collect();
    for k in gone {
        remove(map, &k)?;
        mirror.remove(&k);
        changes += 1;
    }
    Ok(changes)
}

fn sync_baseline_trie(
    trie: &mut LpmTrie<MapData, Addr, BaselineEntry>,
    name: &'static str,
    want: &HashMap<(u32, Addr), BaselineEntry>,
) -> Result<()> {
    let have: HashMap<(u32, Addr), BaselineEntry> = trie
        .iter()
        .filter_map(|kv| kv.ok())
        .map(|(k, v)| ((k.prefix_len(), k.data()), v))
        .collect();
    for (k, v) in want {
        if have.get(k) != Some(v) {
            trie.insert(&Key::new(k.0, k.1), v, 0)
                .map_err(map_err(name))?;
        }
    }
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        trie.remove(&Key::new(k.0, k.1)).map_err(map_err(name))?;
    }
    Ok(())
}

/// A CIDR as the tries store it: prefix length over 128 bits, v4 mapped.
pub fn trie_prefix(net: &IpNet) -> (u32, Addr) {
    match net.trunc() {
        IpNet::V4(n) => (
            MAPPED_PREFIX_LEN + u32::from(n.prefix_len()),
            mapped_v4(n.network().octets()),
        ),
        IpNet::V6(n) => (u32::from(n.prefix_len()), n.network().octets()),
    }
}

/// An address as the maps store it.
pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => mapped_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a map entry stands for; IPv4-mapped entries are IPv4.
pub fn ip_of(addr: Addr) -> IpAddr {
    if egret_common::addr::is_mapped_v4(&addr) {
        IpAddr::V4(std::net::Ipv4Addr::new(
            addr[12], addr[13], addr[14], addr[15],
        ))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(addr))
    }
}

/// One runner's static CIDR entries, as policy gave them.
pub struct RunnerCidrs<'a> {
    pub id: u32,
    pub name: &'a str,
    pub cidrs: &'a [crate::policy::CidrRule],
}

/// Compiles CIDR rules into trie entries.
///
/// The trie answers with the longest matching prefix only, so each entry's
/// value carries the union of its own rules and those of every entry of the
/// same runner that contains it. An entry that names a lateral range
/// explicitly is marked LATERAL_OK and inherits only from entries that do too,
/// so `0.0.0.0/0` never opens a neighbour through a narrower entry.
pub fn compile_cidrs(
    runners: &[RunnerCidrs<'_>],
    lateral: &[IpNet],
) -> Result<HashMap<CidrEntryKey, PortRules>> {
    let mut out = HashMap::new();
    for runner in runners {
        let mut own: HashMap<IpNet, (Vec<PortRule>, bool)> = HashMap::new();
        for rule in runner.cidrs {
            let net = rule.net.trunc();
            let lateral_ok = crate::baseline::names_lateral(&net, lateral);
            own.entry(net)
                .or_insert_with(|| (Vec::new(), lateral_ok))
                .0
                .extend(rule.ports.iter().copied());
        }
        // Only prefix lengths some entry has can hold an ancestor: with the
        // usual handful of lengths this is a few lookups per entry, not 32.
        let mut lengths: Vec<(bool, u8)> = own
            .keys()
            .map(|n| (n.addr().is_ipv4(), n.prefix_len()))
            .collect();
        lengths.sort_unstable();
        lengths.dedup();
        for (net, (rules, lateral_ok)) in &own {
            let mut merged = rules.clone();
            let v4 = net.addr().is_ipv4();
            let candidates = lengths
                .iter()
                .filter(|(is_v4, len)| *is_v4 == v4 && *len < net.prefix_len())
                .filter_map(|(_, len)| IpNet::new(net.addr(), *len).ok().map(|n| n.trunc()));
            for ancestor in candidates {
                if let Some((more, ancestor_lateral_ok)) = own.get(&ancestor)
                    && (!*lateral_ok || *ancestor_lateral_ok)
                {
                    merged.extend(more.iter().copied());
                }
            }
            let merged = merge_rules(merged);
            if merged.len() > MAX_PORT_RULES {
                return Err(DatapathError::TooManyPortRules {
                    runner: runner.name.to_owned(),
                    net: *net,
                    count: merged.len(),
                });
            }
            let mut value = PortRules {
                count: merged.len() as u32,
                flags: if *lateral_ok {
                    rules_flags::LATERAL_OK
                } else {
                    0
                },
                ..Default::default()
            };
            value.rules[..merged.len()].copy_from_slice(&merged);
            let (prefix, addr) = trie_prefix(net);
            out.insert((32 + prefix, CidrKey::new(runner.id, addr)), value);
        }
    }
    debug_assert!(out.keys().all(|(p, _)| *p <= CIDR_KEY_BITS));
    Ok(out)
}

/// Joins rules with the same protocols and flags whose ranges touch, and
/// drops exact duplicates, so unions stay within the per-entry limit where
/// possible.
pub fn merge_rules(rules: Vec<PortRule>) -> Vec<PortRule> {
    // Most entries carry one rule: nothing to merge.
    if rules.len() <= 1 {
        return rules;
    }
    let mut groups: HashMap<(u8, u8), Vec<(u16, u16)>> = HashMap::new();
    for r in rules {
        groups
            .entry((r.protos, r.flags))
            .or_default()
            .push((r.first, r.last));
    }
    let mut out: Vec<PortRule> = groups
        .into_iter()
        .flat_map(|((protos, flags), ranges)| {
            crate::policy::merge_ranges(ranges)
                .into_iter()
                .map(move |(a, b)| PortRule::new(a, b, protos).with_flags(flags))
        })
        .collect();
    out.sort_unstable();
    out
}

/// Removes every pin egret made under `root` and, if egret mounted the bpffs
/// there, unmounts it. Unpinning the links detaches the programs: this is the
/// one way enforcement ends.
pub fn teardown(pins: &Pins) -> Result<bool> {
    let abi = pins.abi_dir();
    let had_state = abi.exists();
    if had_state {
        // Links first, so no program outlives the maps it was judged against.
        let links = pins.links_dir();
        if links.exists() {
            std::fs::remove_dir_all(&links).map_err(IoError::at("remove", &links))?;
        }
        std::fs::remove_dir_all(&abi).map_err(IoError::at("remove", &abi))?;
    }
    if is_mount_point(&pins.root) && statfs_type(&pins.root) == Some(BPF_FS_MAGIC) {
        let _ = nix::mount::umount2(&pins.root, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&pins.root);
    } else if pins.root.exists() {
        let _ = std::fs::remove_dir(&pins.root);
    }
    Ok(had_state)
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    let Ok(c) = CString::new(canonical.as_os_str().as_bytes()) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = c.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|mp| mp == want)
}

#[cfg(test)]
mod tests;
