//! Map names, capacities and key/value layouts.
//!
//! Names are at most 15 bytes (the kernel's limit) and double as the pin file
//! names under `<bpffs>/maps/`.

use crate::{addr::Addr, rules::PortRules, state::MAX_RUNNERS};

/// `Array<RunnerState>` indexed by runner id.
pub const STATE: &str = "EGRET_STATE";
/// `Array<Lockdown>` indexed by runner id (0: every runner). Written only by
/// `egret lockdown` and `egret unlock`, with or without an agent.
pub const LOCKDOWN: &str = "EGRET_LOCKDOWN";
/// `HashMap<RunnerName, RunnerRecord>`.
pub const RUNNERS: &str = "EGRET_RUNNERS";
/// `LpmTrie<CidrKey, PortRules>`: static CIDRs of every runner.
pub const CIDRS: &str = "EGRET_CIDRS";
/// `HashMap<ExactKey, Learned>`: exact IPs learned from DNS, with expiry.
pub const LEARNED: &str = "EGRET_LEARNED";
/// `LpmTrie<Addr, Baseline>`: cloud metadata, and the lateral ranges
/// (private, link-local, CGNAT, ULA, the host's own subnets, DoH
/// resolvers), in one trie so a verdict pays for one lookup. The agent
/// merges the two sets ([`merged_baseline`]).
pub const BASELINE: &str = "EGRET_BASELINE";
/// `Array<u8>` of [`hint`] rows: which /8 blocks of IPv4 and which first
/// bytes of IPv6 may hold an entry of the baseline, of a runner's CIDRs or
/// of its learned addresses, so a verdict skips a lookup that cannot match.
pub const HINTS: &str = "EGRET_HINTS";
/// Socket-local storage of [`SockNote`]: what egret remembers about a
/// socket (the resolver a redirected DNS query was aimed at; the runner
/// whose job bound it to loopback, which `loopback: own` asks of the
/// listener a connect reaches). It goes away with the socket, so nothing
/// runs when a socket closes.
pub const SOCKS: &str = "EGRET_SOCKS";
/// `LpmTrie<Addr, Nat64Entry>`: the NAT64 prefixes a policy declares,
/// whose destinations are judged by the IPv4 address they carry (the
/// well-known `64:ff9b::/96` needs no entry).
pub const NAT64: &str = "EGRET_NAT64";
/// `HashMap<u64, u64>`: the cgroup id of a container the agent knows to
/// belong to a CI job → that job's group (its build and service
/// containers), from the Docker API.
pub const CONTAINER_GROUPS: &str = "EGRET_CT_GROUP";
/// `HashMap<PeerKey, u64>`: the addresses of each group's containers, which
/// the group's other containers may reach on any port (a job and its
/// service containers). The value is the container's cgroup id.
pub const GROUP_PEERS: &str = "EGRET_PEERS";
/// `PerCpuArray<u64>` indexed by [`counter_index`].
pub const COUNTERS: &str = "EGRET_COUNTERS";
/// `RingBuf` of [`crate::event::Event`]: every denial and audit.
pub const EVENTS: &str = "EGRET_EVENTS";
/// `RingBuf` of [`crate::event::Event`] for the denials that must never be
/// lost in a flood of ordinary ones: metadata and lockdown. A job filling
/// [`EVENTS`] with millions of refused connects cannot crowd them out.
pub const URGENT_EVENTS: &str = "EGRET_URGENT";

/// Every map the kernel object defines, by the name it is pinned under.
/// ([`RUNNERS`] is the agent's own and not in the object; the loader also
/// makes maps of the object's data sections, named after them.)
pub const IN_OBJECT: [&str; 13] = [
    STATE,
    LOCKDOWN,
    CIDRS,
    LEARNED,
    BASELINE,
    NAT64,
    HINTS,
    SOCKS,
    CONTAINER_GROUPS,
    GROUP_PEERS,
    COUNTERS,
    EVENTS,
    URGENT_EVENTS,
];

/// The global each runner's copy of the programs is loaded with.
pub const RUNNER_ID: &str = "RUNNER_ID";

pub const CIDRS_CAPACITY: u32 = 65_536;
pub const LEARNED_CAPACITY: u32 = 131_072;
pub const BASELINE_CAPACITY: u32 = 1_024;
pub const EVENTS_BYTES: u32 = 1 << 20;
pub const URGENT_EVENTS_BYTES: u32 = 1 << 18;
/// Containers of CI jobs the agent tracks at once, and their addresses.
pub const CONTAINERS_CAPACITY: u32 = 16_384;
pub const PEERS_CAPACITY: u32 = 65_536;

/// Key of [`GROUP_PEERS`]: a group and one address of one of its
/// containers (IPv4 mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub group: u64,
    pub addr: Addr,
}
const _: () = assert!(core::mem::size_of::<PeerKey>() == 24);

/// Prefix length of a full key in the per-runner CIDR trie: the runner id is
/// the first 32 bits, so entries of different runners never match each other.
pub const CIDR_KEY_BITS: u32 = 32 + 128;
pub const ADDR_BITS: u32 = 128;

/// Data part of a CIDR trie key (the prefix length sits in front of it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CidrKey {
    /// Big-endian so that the trie compares it bit for bit as a prefix.
    pub runner_be: [u8; 4],
    pub addr: Addr,
}
const _: () = assert!(core::mem::size_of::<CidrKey>() == 20);

impl CidrKey {
    #[inline(always)]
    pub const fn new(runner: u32, addr: Addr) -> Self {
        Self {
            runner_be: runner.to_be_bytes(),
            addr,
        }
    }
}

/// Key of the learned-IP hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExactKey {
    pub runner: u32,
    pub addr: Addr,
}
const _: () = assert!(core::mem::size_of::<ExactKey>() == 20);

/// A learned IP: allowed on `rules` until `expires_ns` (CLOCK_MONOTONIC, the
/// clock `bpf_ktime_get_ns` reads). The agent sets the expiry to the answer's
/// TTL plus a grace period and deletes entries that lapsed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    pub expires_ns: u64,
    pub rules: PortRules,
}
const _: () = assert!(core::mem::size_of::<Learned>() == 8 + core::mem::size_of::<PortRules>());

/// A baseline entry as the agent compiles it, before the metadata and
/// lateral sets are merged into one trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BaselineEntry {
    /// A port this entry does not cover (for example DNS on Azure's
    /// 168.63.129.16); 0 = none.
    pub exempt_port: u16,
    /// [`baseline_kind`] of a lateral entry.
    pub kind: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<BaselineEntry>() == 8);

/// What a lateral entry stands for. Either way only an allow entry that
/// names the destination itself opens it.
pub mod baseline_kind {
    /// A neighbour: private, link-local, CGNAT, ULA or a host subnet.
    pub const LATERAL: u8 = 0;
    /// A well-known public DNS-over-HTTPS resolver, through which any name
    /// resolves past the proxy.
    pub const DOH: u8 = 1;
}

/// A value of the merged [`BASELINE`] trie: what the longest metadata
/// prefix and the longest lateral prefix holding an address say about it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    /// The metadata entry's exempt port (0 = none).
    pub exempt_port: u16,
    /// 1 when a metadata prefix holds the address.
    pub metadata: u8,
    /// [`lateral_kind`].
    pub lateral: u8,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Baseline>() == 8);

/// Which lateral prefix, if any, holds an address.
pub mod lateral_kind {
    pub const NONE: u8 = 0;
    pub const NEIGHBOUR: u8 = 1;
    pub const DOH: u8 = 2;
}

impl Baseline {
    /// Whether the metadata baseline refuses `port` here.
    #[inline(always)]
    pub const fn refuses_metadata(&self, port: u16) -> bool {
        self.metadata != 0 && (self.exempt_port == 0 || self.exempt_port != port)
    }
}

/// The value the merged trie holds at the prefix `len`/`net`, one of the
/// prefixes of either set: the longest metadata and the longest lateral
/// prefix that hold all of it. An address's longest match in the merged
/// trie then answers as both separate tries would: any prefix of either
/// set that holds the address either holds the whole matched prefix or is
/// itself a longer prefix of the merged trie.
pub fn merged_baseline<'a>(
    len: u32,
    net: &Addr,
    metadata: impl Iterator<Item = (u32, &'a Addr, &'a BaselineEntry)>,
    lateral: impl Iterator<Item = (u32, &'a Addr, &'a BaselineEntry)>,
) -> Baseline {
    let holding = |(l, n, _): &(u32, &Addr, &BaselineEntry)| {
        *l <= len && crate::addr::prefix_match(*l, n, net)
    };
    let md = metadata.filter(holding).max_by_key(|(l, ..)| *l);
    let lat = lateral.filter(holding).max_by_key(|(l, ..)| *l);
    Baseline {
        exempt_port: md.map_or(0, |(.., e)| e.exempt_port),
        metadata: u8::from(md.is_some()),
        lateral: match lat {
            None => lateral_kind::NONE,
            Some((.., e)) if e.kind == baseline_kind::DOH => lateral_kind::DOH,
            Some(_) => lateral_kind::NEIGHBOUR,
        },
        _pad: [0; 4],
    }
}

/// A NAT64 prefix: where its destinations carry their IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat64Entry {
    /// The RFC 6052 layout: the prefix length, 32 to 96.
    pub layout: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<Nat64Entry>() == 8);
pub const NAT64_CAPACITY: u32 = 64;

/// Hints that let a verdict skip a lookup: one row of [`hint::SLOTS`] bytes
/// per runner and kind, a byte per slot, non-zero when an entry of that
/// kind may hold addresses of the slot.
///
/// A CIDR or learned hint can only ever cost a refusal when it is missing,
/// as those entries only allow; the baseline's must be set before its
/// entry is written, as the baseline refuses. Either way the agent sets a
/// hint before the entry it stands for, and clears it only after.
pub mod hint {
    use crate::{addr::Addr, state::MAX_RUNNERS};

    /// 256 slots for the first byte of an IPv4 address, then 256 for the
    /// first byte of an IPv6 one.
    pub const SLOTS: u32 = 512;
    /// A runner's CIDR entries. Runner 0 (`GLOBAL_RUNNER`) has none, so its
    /// row of this kind holds the baseline's hints.
    pub const CIDRS: u32 = 0;
    /// A runner's learned addresses. The agent never clears these: a stale
    /// one costs a lookup, nothing else.
    pub const LEARNED: u32 = 1;
    pub const KINDS: u32 = 2;
    pub const CAPACITY: u32 = MAX_RUNNERS * KINDS * SLOTS;

    /// The slot of an address (IPv4 mapped).
    #[inline(always)]
    pub const fn slot(addr: &Addr) -> u32 {
        if crate::addr::is_mapped_v4(addr) {
            addr[12] as u32
        } else {
            256 + addr[0] as u32
        }
    }

    #[inline(always)]
    pub const fn index(runner: u32, kind: u32, slot: u32) -> u32 {
        (runner * KINDS + kind) * SLOTS + slot
    }

    /// Every slot holding an address of the prefix `len`/`net` (over the
    /// 128-bit address): `mark` is called for each, at least once.
    pub fn slots_of(len: u32, net: &Addr, mut mark: impl FnMut(u32)) {
        let mapped_net = crate::addr::mapped_v4([0, 0, 0, 0]);
        let mut range = |first: u32, byte: u8, bits: u32| {
            // The prefix fixes `bits` (0..=8) leading bits of the byte.
            let bits = bits.min(8);
            let base = u32::from(byte) & !((1u32 << (8 - bits)) - 1) & 0xff;
            for b in base..base + (1 << (8 - bits)) {
                mark(first + b);
            }
        };
        if len >= 96 && crate::addr::prefix_match(96, &mapped_net, net) {
            range(0, net[12], len - 96);
            return;
        }
        if crate::addr::prefix_match(len.min(96), net, &mapped_net) {
            // A prefix of 96 bits or fewer around the mapped block holds
            // every IPv4 address.
            range(0, 0, 0);
        }
        range(256, net[0], len);
    }
}

/// The resolver a redirected DNS query was aimed at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrigin {
    /// As the job gave it (IPv4 mapped for a v4 socket).
    pub addr: Addr,
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<DnsOrigin>() == 24);

/// A socket's entry in [`SOCKS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockNote {
    /// [`sock_note`] bits: which fields below hold something.
    pub flags: u32,
    /// The runner whose job bound the socket to a loopback or wildcard
    /// address ([`sock_note::LISTENER`]).
    pub runner: u32,
    pub dns_origin: DnsOrigin,
}
const _: () = assert!(core::mem::size_of::<SockNote>() == 32);

pub mod sock_note {
    pub const DNS_ORIGIN: u32 = 1 << 0;
    pub const LISTENER: u32 = 1 << 1;
}

/// Counter slots kept per runner.
pub mod counter {
    pub const ALLOWED: u32 = 0;
    pub const DENIED_NOT_ALLOWED: u32 = 1;
    pub const DENIED_METADATA: u32 = 2;
    pub const DENIED_LATERAL: u32 = 3;
    pub const DENIED_LOCKDOWN: u32 = 4;
    pub const AUDITED: u32 = 5;
    /// Events lost because the ring buffer was full. Never blocks a verdict.
    pub const EVENTS_DROPPED: u32 = 6;
    /// Program-internal failures (each one denied).
    pub const ERRORS: u32 = 7;
    pub const DENIED_SOCKET_KIND: u32 = 8;
    /// DNS queries refused in the kernel: no proxy, or lockdown.
    pub const DENIED_DNS: u32 = 9;
    pub const DENIED_SOCKET_OPTION: u32 = 10;
    pub const KINDS: u32 = 11;
    pub const NAMES: [&str; KINDS as usize] = [
        "allowed",
        "denied_not_allowed",
        "denied_metadata",
        "denied_lateral",
        "denied_lockdown",
        "audited",
        "events_dropped",
        "errors",
        "denied_socket_kind",
        "denied_dns",
        "denied_socket_option",
    ];
}

pub const COUNTERS_LEN: u32 = MAX_RUNNERS * counter::KINDS;

#[inline(always)]
pub const fn counter_index(runner: u32, kind: u32) -> u32 {
    runner * counter::KINDS + kind
}
