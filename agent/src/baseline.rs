//! The baseline deny lists: what no policy can open (cloud metadata) and what
//! only an explicit policy entry can open (lateral destinations).

use std::net::IpAddr;

use ipnet::IpNet;

/// A metadata endpoint, with an optional port the entry does not cover.
pub struct MetadataEndpoint {
    pub net: &'static str,
    pub exempt_port: u16,
    pub what: &'static str,
}

/// Credentials live behind these addresses on the clouds runners run on.
pub const METADATA: &[MetadataEndpoint] = &[
    MetadataEndpoint {
        net: "169.254.169.254/32",
        exempt_port: 0,
        what: "the cloud instance metadata service (AWS, GCP, Azure, OCI, DigitalOcean, Hetzner, OpenStack)",
    },
    MetadataEndpoint {
        net: "fd00:ec2::254/128",
        exempt_port: 0,
        what: "the AWS instance metadata service over IPv6",
    },
    MetadataEndpoint {
        net: "fd20:ce::254/128",
        exempt_port: 0,
        what: "the GCP metadata service over IPv6",
    },
    MetadataEndpoint {
        net: "169.254.170.2/32",
        exempt_port: 0,
        what: "the AWS ECS task metadata and credentials endpoint",
    },
    MetadataEndpoint {
        net: "169.254.170.23/32",
        exempt_port: 0,
        what: "the AWS EKS Pod Identity agent",
    },
    MetadataEndpoint {
        net: "fd00:ec2::23/128",
        exempt_port: 0,
        what: "the AWS EKS Pod Identity agent over IPv6",
    },
    MetadataEndpoint {
        net: "100.100.100.200/32",
        exempt_port: 0,
        what: "the Alibaba Cloud metadata service",
    },
    MetadataEndpoint {
        net: "169.254.0.23/32",
        exempt_port: 0,
        what: "the Tencent Cloud metadata service",
    },
    // Azure's WireServer also serves the VM's DNS on port 53.
    MetadataEndpoint {
        net: "168.63.129.16/32",
        exempt_port: 53,
        what: "the Azure WireServer",
    },
];

/// Destinations on the runner's own network: other VMs, internal services.
pub const LATERAL: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "fe80::/10",
    "fc00::/7",
    "ff00::/8",
    // NAT64 local-use (RFC 8215): behind it may be any IPv4 address, the
    // neighbours' and the metadata service's too, in a layout only the
    // operator knows. Declared under `nat64_prefixes:`, a prefix of it is
    // judged by the addresses it carries instead.
    "64:ff9b:1::/48",
];

/// Public resolvers that answer DNS over HTTPS (and TLS) for any name, past
/// the proxy. Like a neighbour, one is reachable only through an allow entry
/// that names it, never through a broad CIDR.
pub const DOH_RESOLVERS: &[&str] = &[
    "8.8.8.8/32",
    "8.8.4.4/32",
    "2001:4860:4860::8888/128",
    "2001:4860:4860::8844/128",
    "1.1.1.1/32",
    "1.0.0.1/32",
    "1.1.1.2/32",
    "1.0.0.2/32",
    "1.1.1.3/32",
    "1.0.0.3/32",
    "2606:4700:4700::1111/128",
    "2606:4700:4700::1001/128",
    "9.9.9.9/32",
    "9.9.9.10/32",
    "9.9.9.11/32",
    "149.112.112.112/32",
    "2620:fe::fe/128",
    "2620:fe::9/128",
    "208.67.222.222/32",
    "208.67.220.220/32",
    "2620:119:35::35/128",
    "94.140.14.14/32",
    "94.140.15.15/32",
    "185.228.168.9/32",
    "76.76.2.0/32",
    "45.90.28.0/24",
    "45.90.30.0/24",
];

/// Names of DNS-over-HTTPS services (and every name below them). The proxy
/// answers them only for an allow entry that names them exactly; a wildcard
/// such as `*.cloudflare-dns.com` does not count.
pub const DOH_NAMES: &[&str] = &[
    "dns.google",
    "dns.google.com",
    "cloudflare-dns.com",
    "one.one.one.one",
    "dns.quad9.net",
    "dns9.quad9.net",
    "dns10.quad9.net",
    "dns11.quad9.net",
    "doh.opendns.com",
    "dns.adguard.com",
    "dns.adguard-dns.com",
    "dns.nextdns.io",
    "doh.cleanbrowsing.org",
    "dns.controld.com",
    "doh.dns.sb",
    "doh.mullvad.net",
    "dns.alidns.com",
    "doh.pub",
];

/// Whether `name` (lower case, no trailing dot) is or lies below a known
/// DNS-over-HTTPS service.
pub fn is_doh_name(name: &str) -> bool {
    DOH_NAMES.iter().any(|d| {
        name == *d
            || name
                .strip_suffix(d)
                .is_some_and(|front| front.ends_with('.'))
    })
}

pub fn doh_nets() -> impl Iterator<Item = IpNet> {
    DOH_RESOLVERS.iter().map(|n| parse(n))
}

pub fn metadata_nets() -> impl Iterator<Item = (IpNet, u16)> {
    METADATA.iter().map(|m| (parse(m.net), m.exempt_port))
}

pub fn lateral_nets() -> impl Iterator<Item = IpNet> {
    LATERAL.iter().map(|n| parse(n))
}

fn parse(net: &str) -> IpNet {
    net.parse()
        .unwrap_or_else(|_| unreachable!("baseline entry {net} is a valid CIDR"))
}

/// [`METADATA`], parsed once: (endpoint, exempt port, what it is).
static METADATA_PARSED: std::sync::LazyLock<Vec<(IpNet, u16, &'static str)>> =
    std::sync::LazyLock::new(|| {
        METADATA
            .iter()
            .map(|m| (parse(m.net), m.exempt_port, m.what))
            .collect()
    });

/// The metadata endpoint a policy CIDR would include, if any.
pub fn metadata_overlap(net: &IpNet) -> Option<&'static str> {
    METADATA_PARSED.iter().find_map(|(endpoint, exempt, what)| {
        (*exempt == 0 && net.contains(&endpoint.network())).then_some(*what)
    })
}

/// Why a DNS answer must not be trusted as is: it points at cloud
/// metadata (never kept) or at a private, link-local, loopback or
/// unspecified address (kept only for entries that opt in), where a name
/// could be rebound onto a neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rebinding {
    Metadata,
    Private,
}

pub fn rebinding_target(ip: IpAddr, nat64: &[ipnet::Ipv6Net]) -> Option<Rebinding> {
    // A NAT64 answer is as bad as the worst IPv4 address it may carry.
    carried_v4(ip, nat64)
        .into_iter()
        .map(IpAddr::V4)
        .chain(std::iter::once(ip))
        .filter_map(rebinding_target_of)
        .max_by_key(|r| *r == Rebinding::Metadata)
}

/// The IPv4 addresses a NAT64 address may carry: the well-known
/// `64:ff9b::/96`, every layout of the local-use `64:ff9b:1::/48`, and the
/// layout of the policy's own prefixes.
pub fn carried_v4(ip: IpAddr, nat64: &[ipnet::Ipv6Net]) -> Vec<std::net::Ipv4Addr> {
    use egret_common::addr::{LOCAL_USE_LAYOUTS, is_nat64, is_nat64_local_use, nat64_embedded};
    let IpAddr::V6(v6) = ip else {
        return Vec::new();
    };
    let a = v6.octets();
    let layouts: Vec<u8> = if is_nat64(&a) {
        vec![96]
    } else if is_nat64_local_use(&a) {
        LOCAL_USE_LAYOUTS.to_vec()
    } else {
        nat64
            .iter()
            .filter(|net| net.contains(&v6))
            .map(|net| net.prefix_len())
            .collect()
    };
    layouts
        .into_iter()
        .filter_map(|len| nat64_embedded(&a, len))
        .map(std::net::Ipv4Addr::from)
        // The zeros a wrong layout reads are no one.
        .filter(|v4| !v4.is_unspecified())
        .collect()
}

fn rebinding_target_of(ip: IpAddr) -> Option<Rebinding> {
    static PRIVATE: std::sync::LazyLock<Vec<IpNet>> = std::sync::LazyLock::new(|| {
        let mut private: Vec<IpNet> = lateral_nets().collect();
        private.extend(
            ["127.0.0.0/8", "0.0.0.0/8", "::1/128", "::/128"]
                .iter()
                .map(|n| parse(n)),
        );
        private
    });
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if METADATA_PARSED.iter().any(|(n, _, _)| n.contains(&ip)) {
        Some(Rebinding::Metadata)
    } else if PRIVATE.iter().any(|n| n.contains(&ip)) {
        Some(Rebinding::Private)
    } else {
        None
    }
}

/// Whether an answer may be used: metadata never, private ranges only
/// when the entry says so.
pub fn answer_usable(ip: IpAddr, private_ok: bool, nat64: &[ipnet::Ipv6Net]) -> bool {
    match rebinding_target(ip, nat64) {
        None => true,
        Some(Rebinding::Private) => private_ok,
        Some(Rebinding::Metadata) => false,
    }
}

/// Subnets of the host's own interfaces (loopback excluded): the runner's
/// neighbours, whatever address range they use.
pub fn host_subnets() -> std::io::Result<Vec<IpNet>> {
    let mut nets = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let (ip, prefix) =
            if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                (IpAddr::V4(a.ip()), m.ip().to_bits().count_ones())
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                (IpAddr::V6(a.ip()), m.ip().to_bits().count_ones())
            } else {
                continue;
            };
        if ip.is_loopback() {
            continue;
        }
        if let Ok(net) = IpNet::new(ip, prefix as u8) {
            let net = net.trunc();
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
    }
    Ok(nets)
}

/// Whether `net` lies entirely inside a lateral range, i.e. the policy entry
/// names a neighbour explicitly rather than covering it by accident.
pub fn names_lateral(net: &IpNet, lateral: &[IpNet]) -> bool {
    lateral.iter().any(|l| l.contains(net))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_lists_parse() {
        assert_eq!(metadata_nets().count(), METADATA.len());
        assert_eq!(lateral_nets().count(), LATERAL.len());
        assert_eq!(doh_nets().count(), DOH_RESOLVERS.len());
    }

    #[test]
    fn doh_names_cover_their_subdomains_only() {
        assert!(is_doh_name("dns.google"));
        assert!(is_doh_name("mozilla.cloudflare-dns.com"));
        assert!(!is_doh_name("notcloudflare-dns.com"));
        assert!(!is_doh_name("google.com"));
    }

    #[test]
    fn broad_cidrs_do_not_name_neighbours() {
        let lateral: Vec<IpNet> = lateral_nets().collect();
        assert!(!names_lateral(&"0.0.0.0/0".parse().unwrap(), &lateral));
        assert!(names_lateral(&"10.0.0.5/32".parse().unwrap(), &lateral));
        assert!(names_lateral(&"10.1.0.0/16".parse().unwrap(), &lateral));
    }

    #[test]
    fn metadata_overlap_names_the_endpoint() {
        assert!(metadata_overlap(&"169.254.0.0/16".parse().unwrap()).is_some());
        assert!(metadata_overlap(&"0.0.0.0/0".parse().unwrap()).is_some());
        assert!(metadata_overlap(&"203.0.113.0/24".parse().unwrap()).is_none());
        // The exempt Azure DNS port keeps 168.63.129.16 from warning.
        assert!(metadata_overlap(&"168.63.129.16/32".parse().unwrap()).is_none());
    }
}
