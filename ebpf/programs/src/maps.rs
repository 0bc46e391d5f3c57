//! The pinned maps every runner's copy of the programs shares, and the
//! verdict's view of them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use egret_common::{
    addr::Addr,
    maps::{
        ADDR_BITS, BASELINE_CAPACITY, BaselineEntry, CIDR_KEY_BITS, CIDRS_CAPACITY,
        CONTAINERS_CAPACITY, COUNTERS_LEN, CidrKey, DNS_ORIGINS_CAPACITY, DnsOrigin, EVENTS_BYTES,
        ExactKey, LEARNED_CAPACITY, Learned, NAT64_CAPACITY, NO_PREALLOC, Nat64Entry,
        OWNED_CAPACITY, OwnedKey, Owner, PEERS_CAPACITY, PeerKey, URGENT_EVENTS_BYTES,
    },
    rules::PortRules,
    state::{Lockdown, MAX_RUNNERS, RunnerState},
    verdict::Lookup,
};

/// Set by the agent for each runner's copy of the programs
/// (`egret_common::maps::RUNNER_ID`).
#[unsafe(no_mangle)]
static RUNNER_ID: u32 = 0;

/// The runner this copy of the programs serves.
#[inline(always)]
pub fn runner_id() -> u32 {
    // SAFETY: a plain read of a load-time constant; volatile so the
    // compiler does not fold the default value in.
    unsafe { core::ptr::read_volatile(&RUNNER_ID) }
}

// The names below are `egret_common::maps` constants; the agent's test of
// the built object checks that they agree.

#[map(name = "EGRET_STATE")]
pub static STATE: Array<RunnerState> = Array::pinned(MAX_RUNNERS, 0);

#[map(name = "EGRET_LOCKDOWN")]
pub static LOCKDOWN: Array<Lockdown> = Array::pinned(MAX_RUNNERS, 0);

#[map(name = "EGRET_CIDRS")]
pub static CIDRS: LpmTrie<CidrKey, PortRules> = LpmTrie::pinned(CIDRS_CAPACITY, 0);

#[map(name = "EGRET_LEARNED")]
pub static LEARNED: HashMap<ExactKey, Learned> = HashMap::pinned(LEARNED_CAPACITY, 0);

#[map(name = "EGRET_METADATA")]
pub static METADATA: LpmTrie<Addr, BaselineEntry> = LpmTrie::pinned(BASELINE_CAPACITY, 0);

#[map(name = "EGRET_LATERAL")]
pub static LATERAL: LpmTrie<Addr, BaselineEntry> = LpmTrie::pinned(BASELINE_CAPACITY, 0);

#[map(name = "EGRET_NAT64")]
pub static NAT64: LpmTrie<Addr, Nat64Entry> = LpmTrie::pinned(NAT64_CAPACITY, 0);

#[map(name = "EGRET_OWNED")]
pub static OWNED: HashMap<OwnedKey, Owner> = HashMap::pinned(OWNED_CAPACITY, NO_PREALLOC);

/// Socket cookie → the OWNED key it holds: a released socket cannot read
/// its own port, but it can tell its cookie.
#[map(name = "EGRET_BOUND")]
pub static BOUND: HashMap<u64, OwnedKey> = HashMap::pinned(OWNED_CAPACITY, NO_PREALLOC);

/// Runner id → how many OWNED entries its sockets hold.
#[map(name = "EGRET_OWNED_N")]
pub static OWNED_COUNTS: Array<u64> = Array::pinned(MAX_RUNNERS, 0);

#[map(name = "EGRET_CT_GROUP")]
pub static CONTAINER_GROUPS: HashMap<u64, u64> = HashMap::pinned(CONTAINERS_CAPACITY, 0);

#[map(name = "EGRET_PEERS")]
pub static GROUP_PEERS: HashMap<PeerKey, u64> = HashMap::pinned(PEERS_CAPACITY, 0);

#[map(name = "EGRET_DNS_ORIG")]
pub static DNS_ORIGINS: LruHashMap<u64, DnsOrigin> = LruHashMap::pinned(DNS_ORIGINS_CAPACITY, 0);

#[map(name = "EGRET_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

#[map(name = "EGRET_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "EGRET_URGENT")]
pub static URGENT_EVENTS: RingBuf = RingBuf::pinned(URGENT_EVENTS_BYTES, 0);

/// The verdict's view of the maps above.
pub struct Kernel;

impl Lookup for Kernel {
    #[inline(always)]
    fn runner_state(&self, runner: u32) -> Option<&RunnerState> {
        STATE.get(runner)
    }

    #[inline(always)]
    fn lockdown(&self, id: u32) -> Option<&Lockdown> {
        LOCKDOWN.get(id)
    }

    #[inline(always)]
    fn metadata(&self, target: &Addr) -> Option<&BaselineEntry> {
        METADATA.get(Key::new(ADDR_BITS, *target))
    }

    #[inline(always)]
    fn lateral(&self, target: &Addr) -> Option<&BaselineEntry> {
        LATERAL.get(Key::new(ADDR_BITS, *target))
    }

    #[inline(always)]
    fn cidr(&self, runner: u32, target: &Addr) -> Option<&PortRules> {
        CIDRS.get(Key::new(CIDR_KEY_BITS, CidrKey::new(runner, *target)))
    }

    #[inline(always)]
    fn learned(&self, key: &ExactKey) -> Option<&Learned> {
        // SAFETY: the agent may rewrite the entry while we read it; a torn
        // read can only mix two values the agent wrote for this same key,
        // both valid.
        unsafe { LEARNED.get(key) }
    }

    #[inline(always)]
    fn nat64(&self, target: &Addr) -> Option<&Nat64Entry> {
        NAT64.get(Key::new(ADDR_BITS, *target))
    }

    #[inline(always)]
    fn loopback_owner(&self, key: &OwnedKey) -> Option<u32> {
        // SAFETY: the pointer comes from a successful lookup and is read
        // at once; entries are plain integers, valid in any state.
        OWNED.get_ptr(key).map(|o| unsafe { (*o).runner })
    }

    // Out of line: the verifier then checks it once per caller instead of
    // once per path into the refusal.
    #[inline(never)]
    fn job_peer(&self, cgroup: u64, target: &Addr) -> bool {
        let cgroup = if cgroup == 0 {
            // SAFETY: a helper with no arguments, allowed in every cgroup
            // socket hook.
            unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() }
        } else {
            cgroup
        };
        // SAFETY: the value is copied out at once; the agent writes whole
        // entries.
        let Some(group) = (unsafe { CONTAINER_GROUPS.get(cgroup) }).copied() else {
            return false;
        };
        let key = PeerKey {
            group,
            addr: *target,
        };
        GROUP_PEERS.get_ptr(key).is_some()
    }
}
