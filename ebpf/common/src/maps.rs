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
/// `LpmTrie<Addr, BaselineEntry>`: cloud metadata, never allowable.
pub const METADATA: &str = "EGRET_METADATA";
/// `LpmTrie<Addr, BaselineEntry>`: private, link-local, CGNAT, ULA and the
/// host's own subnets; denied unless a policy entry allows the destination.
pub const LATERAL: &str = "EGRET_LATERAL";
/// `HashMap<OwnedKey, Owner>`: loopback and wildcard listeners opened inside
/// a runner's cgroup, for `loopback: own`.
pub const OWNED: &str = "EGRET_OWNED";
/// `HashMap<u64, OwnedKey>`: socket cookie → the [`OWNED`] entry that
/// socket made, so its release removes exactly that entry.
pub const BOUND: &str = "EGRET_BOUND";
/// `Array<u64>` indexed by runner id: how many [`OWNED`] entries the
/// runner's sockets hold, against [`OWNED_PER_RUNNER`].
pub const OWNED_COUNTS: &str = "EGRET_OWNED_N";
/// `LruHashMap<u64, DnsOrigin>`: socket cookie → the resolver a job aimed a
/// DNS query at before it was redirected to the proxy, so replies appear to
/// come from there.
pub const DNS_ORIGINS: &str = "EGRET_DNS_ORIG";
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
pub const IN_OBJECT: [&str; 16] = [
    STATE,
    LOCKDOWN,
    CIDRS,
    LEARNED,
    METADATA,
    LATERAL,
    NAT64,
    OWNED,
    BOUND,
    OWNED_COUNTS,
    CONTAINER_GROUPS,
    GROUP_PEERS,
    DNS_ORIGINS,
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
/// Loopback listeners one runner's jobs may own at once: an equal share of
/// [`OWNED_CAPACITY`], so no runner can fill the map for the others. Past
/// it, a bind that would own an address fails with EPERM and a `quota`
/// event.
pub const OWNED_PER_RUNNER: u64 = 1_024;
/// Every runner's share.
pub const OWNED_CAPACITY: u32 = MAX_RUNNERS * OWNED_PER_RUNNER as u32;
/// `BPF_F_NO_PREALLOC`: entries are allocated as listeners appear, so the
/// room every runner's share needs costs nothing until used.
pub const NO_PREALLOC: u32 = 1;
pub const DNS_ORIGINS_CAPACITY: u32 = 65_536;
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

/// A listener in one network namespace: its address (loopback, or the
/// unspecified address of a wildcard bind; IPv4 mapped), port and protocol.
/// Keyed by address too, so a job that binds `[::1]:P` or `127.0.0.2:P`
/// owns exactly that, never a host service on `127.0.0.1:P`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OwnedKey {
    /// `bpf_get_netns_cookie`: loopback is per network namespace.
    pub netns: u64,
    pub addr: Addr,
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<OwnedKey>() == 32);

impl OwnedKey {
    #[inline(always)]
    pub const fn new(netns: u64, addr: Addr, port: u16, proto: u8) -> Self {
        Self {
            netns,
            addr,
            port,
            proto,
            _pad: [0; 5],
        }
    }
}

/// Who owns a listener: the runner, and the socket, so that only that
/// socket's release removes the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub runner: u32,
    pub _pad: u32,
    pub cookie: u64,
}
const _: () = assert!(core::mem::size_of::<Owner>() == 16);

/// A baseline deny entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BaselineEntry {
    /// A port this entry does not cover (for example DNS on Azure's
    /// 168.63.129.16); 0 = none.
    pub exempt_port: u16,
    /// [`baseline_kind`] of a lateral-trie entry.
    pub kind: u8,
    pub _pad: [u8; 5],
}

/// What a lateral-trie entry stands for. Either way only an allow entry
/// that names the destination itself opens it.
pub mod baseline_kind {
    /// A neighbour: private, link-local, CGNAT, ULA or a host subnet.
    pub const LATERAL: u8 = 0;
    /// A well-known public DNS-over-HTTPS resolver, through which any name
    /// resolves past the proxy.
    pub const DOH: u8 = 1;
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
const _: () = assert!(core::mem::size_of::<BaselineEntry>() == 8);

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
    /// Past the runner's share of a shared map: learned addresses (counted
    /// by the agent's DNS proxy) and loopback listeners (by `post_bind`).
    pub const QUOTA: u32 = 11;
    pub const KINDS: u32 = 12;
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
        "quota",
    ];
}

pub const COUNTERS_LEN: u32 = MAX_RUNNERS * counter::KINDS;

#[inline(always)]
pub const fn counter_index(runner: u32, kind: u32) -> u32 {
    runner * counter::KINDS + kind
}
