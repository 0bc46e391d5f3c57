//! The pinned maps every runner's copy of the programs shares, and the
//! verdict's view of them.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE, bpf_map_type,
        bpf_sock_addr, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as TupleV4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as TupleV6,
    },
    helpers::generated::{
        bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release, bpf_sk_storage_get,
    },
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
};
use egret_common::{
    addr::Addr,
    maps::{
        ADDR_BITS, BASELINE_CAPACITY, Baseline, CIDR_KEY_BITS, CIDRS_CAPACITY, CONTAINERS_CAPACITY,
        COUNTERS_LEN, CidrKey, EVENTS_BYTES, ExactKey, LEARNED_CAPACITY, Learned, NAT64_CAPACITY,
        Nat64Entry, PEERS_CAPACITY, PeerKey, SockNote, URGENT_EVENTS_BYTES, hint, sock_note,
    },
    rules::{PortRules, proto},
    state::{Lockdown, MAX_RUNNERS, RunnerState},
    verdict::{Destination, Lookup},
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

#[map(name = "EGRET_BASELINE")]
pub static BASELINE: LpmTrie<Addr, Baseline> = LpmTrie::pinned(BASELINE_CAPACITY, 0);

#[map(name = "EGRET_NAT64")]
pub static NAT64: LpmTrie<Addr, Nat64Entry> = LpmTrie::pinned(NAT64_CAPACITY, 0);

#[map(name = "EGRET_HINTS")]
pub static HINTS: Array<u8> = Array::pinned(hint::CAPACITY, 0);

#[map(name = "EGRET_CT_GROUP")]
pub static CONTAINER_GROUPS: HashMap<u64, u64> = HashMap::pinned(CONTAINERS_CAPACITY, 0);

#[map(name = "EGRET_PEERS")]
pub static GROUP_PEERS: HashMap<PeerKey, u64> = HashMap::pinned(PEERS_CAPACITY, 0);

/// Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`), declared the BTF way
/// the kernel requires for it, with `pinning` so every runner's copy of the
/// programs shares the one pinned map. aya-ebpf's own `SkStorage` has no
/// pinning field, and takes only sock_addr contexts.
#[repr(C)]
pub struct SocketStorage {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockNote,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    /// `LIBBPF_PIN_BY_NAME`.
    pinning: *const [i32; 1],
}

// SAFETY: the fields are never read: they only carry types into BTF, from
// which the loader takes the map's definition.
unsafe impl Sync for SocketStorage {}

impl SocketStorage {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
            pinning: core::ptr::null(),
        }
    }

    /// The note of socket `sk`, created empty when `create` is set and it
    /// has none; `None` when it has none (or it could not be made).
    ///
    /// # Safety
    /// `sk` must be a socket pointer the calling program type may pass to
    /// `bpf_sk_storage_get`; the verifier rejects any other.
    #[inline(always)]
    pub unsafe fn note(&self, sk: *mut c_void, create: bool) -> Option<*mut SockNote> {
        let flags = if create {
            u64::from(BPF_SK_STORAGE_GET_F_CREATE)
        } else {
            0
        };
        // SAFETY: the map is this static, the socket the caller's; a null
        // initial value makes a created entry all zeroes.
        let p = unsafe {
            bpf_sk_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                sk,
                core::ptr::null_mut(),
                flags,
            )
        };
        (!p.is_null()).then_some(p.cast())
    }
}

#[btf_map(name = "EGRET_SOCKS")]
pub static SOCKS: SocketStorage = SocketStorage::new();

#[map(name = "EGRET_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

#[map(name = "EGRET_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "EGRET_URGENT")]
pub static URGENT_EVENTS: RingBuf = RingBuf::pinned(URGENT_EVENTS_BYTES, 0);

/// The verdict's view of the maps above, and, in the hooks that run for a
/// socket's `connect()` or `sendmsg()`, of the kernel's listeners.
pub struct Kernel {
    sock_addr: *mut bpf_sock_addr,
}

impl Kernel {
    /// The maps alone: no listener is anyone's.
    pub const MAPS: Self = Self {
        sock_addr: core::ptr::null_mut(),
    };

    /// The maps, and the listeners the socket of `sock_addr` can reach.
    #[inline(always)]
    pub const fn for_socket(sock_addr: *mut bpf_sock_addr) -> Self {
        Self { sock_addr }
    }

    /// The runner whose job bound `listener`, from its note.
    ///
    /// # Safety
    /// `listener` must be a socket from a successful `bpf_sk_lookup_*`,
    /// not yet released; this releases it.
    #[inline(always)]
    unsafe fn runner_of(listener: *mut aya_ebpf::bindings::bpf_sock) -> Option<u32> {
        // SAFETY: a referenced socket from the lookup; the note is copied
        // out before the reference is dropped.
        unsafe {
            let note = SOCKS.note(listener.cast(), false).map(|n| *n);
            bpf_sk_release(listener.cast());
            note.filter(|n| n.flags & sock_note::LISTENER != 0)
                .map(|n| n.runner)
        }
    }

    /// The kernel's own lookup, in the socket's network namespace, so the
    /// listener judged is the one the connection will reach.
    ///
    /// `None` when nothing listens there; else the runner whose job bound
    /// the listener, if a job did.
    #[inline(always)]
    pub fn listener(&self, dst: &Destination, target: &Addr) -> Option<Option<u32>> {
        if self.sock_addr.is_null() {
            return None;
        }
        // SAFETY: a plain C struct of integers, valid all zero.
        let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
        let size = if egret_common::addr::is_mapped_v4(target) {
            tuple.__bindgen_anon_1.ipv4.daddr =
                u32::from_ne_bytes([target[12], target[13], target[14], target[15]]);
            tuple.__bindgen_anon_1.ipv4.dport = dst.port.to_be();
            core::mem::size_of::<TupleV4>()
        } else {
            let word = |i: usize| {
                u32::from_ne_bytes([target[i], target[i + 1], target[i + 2], target[i + 3]])
            };
            tuple.__bindgen_anon_1.ipv6.daddr = [word(0), word(4), word(8), word(12)];
            tuple.__bindgen_anon_1.ipv6.dport = dst.port.to_be();
            core::mem::size_of::<TupleV6>()
        } as u32;
        let ctx = self.sock_addr.cast();
        let netns = BPF_F_CURRENT_NETNS as u64;
        // SAFETY: the context of the sock_addr program running, and a
        // tuple of the size given; a found socket is released below.
        let listener = unsafe {
            match dst.proto {
                proto::IPPROTO_TCP => bpf_sk_lookup_tcp(ctx, &mut tuple, size, netns, 0),
                proto::IPPROTO_UDP => bpf_sk_lookup_udp(ctx, &mut tuple, size, netns, 0),
                _ => return None,
            }
        };
        if listener.is_null() {
            return None;
        }
        // SAFETY: found just now, released there.
        Some(unsafe { Self::runner_of(listener) })
    }
}

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
    fn baseline(&self, target: &Addr) -> Option<Baseline> {
        BASELINE.get(Key::new(ADDR_BITS, *target)).copied()
    }

    #[inline(always)]
    fn may_hold(&self, runner: u32, kind: u32, slot: u32) -> bool {
        // An unreadable hint means looking up: the lookup decides.
        HINTS
            .get(hint::index(runner, kind, slot))
            .is_none_or(|h| *h != 0)
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
    fn listener_runner(&self, dst: &Destination, target: &Addr) -> Option<u32> {
        self.listener(dst, target).flatten()
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
