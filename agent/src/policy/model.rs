//! The validated policy: what every other module sees of the YAML.

use std::net::IpAddr;

use egret_common::rules::{PortRule, proto};
use ipnet::IpNet;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    /// Denials at the lateral and default steps are let through and reported.
    Audit,
}

/// Which loopback destinations a runner's jobs may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loopback {
    /// Only listeners opened inside the runner's own cgroup (the job's test
    /// servers), never host services on loopback.
    #[default]
    Own,
    Allow,
    Deny,
}

/// Socket kinds a runner can opt back into (`sockets: [ping]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketKind {
    /// Raw IP sockets (needs CAP_NET_RAW besides). Their packets are still
    /// judged by the egress backstop.
    Raw,
    Sctp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Proto {
    Tcp,
    Udp,
    Any,
}

impl Proto {
    pub(super) const fn bits(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
            Self::Any => proto::ANY,
        }
    }
}

/// A validated policy: every runner it configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub runners: Vec<Runner>,
    /// NAT64 prefixes of the host's network (`nat64_prefixes:`), each with
    /// its RFC 6052 layout given by its length. The well-known
    /// `64:ff9b::/96` and the local-use `64:ff9b:1::/48` need no entry.
    pub nat64_prefixes: Vec<ipnet::Ipv6Net>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runner {
    pub name: String,
    /// Absolute within the cgroup2 hierarchy, e.g. `/egret.slice/ci`.
    pub cgroup: String,
    pub mode: Mode,
    /// Socket kinds the runner's jobs may create although no hook can judge
    /// their destinations.
    pub sockets: Vec<SocketKind>,
    pub loopback: Loopback,
    /// Jobs may join multicast groups (`multicast: true`); by default the
    /// membership options are refused, since the kernel's membership
    /// reports would carry job-chosen group addresses onto the LAN.
    pub multicast: bool,
    /// Where the agent resolves this runner's hostnames; empty = the host's
    /// resolver configuration.
    pub dns_upstream: Vec<IpAddr>,
    /// An address on the host that jobs in network namespaces of their own
    /// (containers) reach, such as a docker bridge gateway. The runner's DNS
    /// proxy listens there too; without it their DNS queries are refused.
    pub dns_listen: Option<IpAddr>,
    /// What a job hears for a name the policy does not allow.
    pub dns_refuse: DnsRefusal,
    pub cidrs: Vec<CidrRule>,
    /// Exact names, resolved by the agent.
    pub hosts: Vec<HostRule>,
    /// `*.example.com` patterns: one or more labels in front of the suffix.
    /// They can only be enforced through the DNS proxy, which learns the
    /// addresses as the job resolves matching names.
    pub patterns: Vec<HostRule>,
}

impl Runner {
    /// The entries a queried name is matched against: exact names, then
    /// patterns (see [`crate::policy::rules_for`]).
    pub fn host_rules(&self) -> Vec<HostRule> {
        self.hosts.iter().chain(&self.patterns).cloned().collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrRule {
    pub net: IpNet,
    pub ports: Vec<PortRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// Lower case, no trailing dot; `*.suffix` for a pattern.
    pub name: String,
    pub ports: Vec<PortRule>,
    /// Keep DNS answers in private, link-local or loopback ranges for this
    /// name (a self-managed forge on a private address). Without it the
    /// proxy drops them, so a name cannot be rebound onto a neighbour.
    pub private_answers: bool,
}

/// The answer to a query for a name the policy does not allow.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DnsRefusal {
    /// RCODE 5: the resolver says it will not answer.
    #[default]
    Refused,
    /// RCODE 3: the name does not exist, for tools that retry on REFUSED.
    Nxdomain,
}
