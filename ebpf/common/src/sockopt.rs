//! Socket options a job may not set: the ones that make the kernel send
//! data the job chose outside every hook (multicast group joins, whose
//! IGMP and MLD reports carry the group addresses), that steer packets
//! past the destination the hooks judged (IP options such as source
//! routing, IPv6 routing and option headers), or that let a listener hand
//! a peer's data to the job before the handshake the backstop judges (TCP
//! Fast Open on the server side).

pub const SOL_IP: i32 = 0;
pub const SOL_TCP: i32 = 6;
pub const SOL_IPV6: i32 = 41;

/// Group membership, IPv4 (`SOL_IP`) and protocol-independent
/// (`MCAST_*`, same numbers under `SOL_IP` and `SOL_IPV6`).
const IP_ADD_MEMBERSHIP: i32 = 35;
const IP_ADD_SOURCE_MEMBERSHIP: i32 = 39;
const IP_MSFILTER: i32 = 41;
const MCAST_JOIN_GROUP: i32 = 42;
const MCAST_JOIN_SOURCE_GROUP: i32 = 46;
const MCAST_MSFILTER: i32 = 48;
/// IPv6 group and anycast membership.
const IPV6_ADD_MEMBERSHIP: i32 = 20;
const IPV6_JOIN_ANYCAST: i32 = 27;

/// IPv4 header options (source routing, record route, timestamps).
const IP_OPTIONS: i32 = 4;
/// IPv6 routing and option headers, sticky or RFC 2292 style.
const IPV6_2292HOPOPTS: i32 = 3;
const IPV6_2292DSTOPTS: i32 = 4;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_2292PKTOPTIONS: i32 = 6;
const IPV6_HOPOPTS: i32 = 54;
const IPV6_RTHDRDSTOPTS: i32 = 55;
const IPV6_RTHDR: i32 = 57;
const IPV6_DSTOPTS: i32 = 59;

const TCP_FASTOPEN: i32 = 23;

/// Why an option is refused: its name, for events; `None` when it may be
/// set. `multicast` is the runner's opt-in to group membership.
pub const fn refused(level: i32, optname: i32, multicast: bool) -> Option<&'static str> {
    let membership = match (level, optname) {
        (SOL_IP, IP_ADD_MEMBERSHIP) => Some("IP_ADD_MEMBERSHIP"),
        (SOL_IP, IP_ADD_SOURCE_MEMBERSHIP) => Some("IP_ADD_SOURCE_MEMBERSHIP"),
        (SOL_IP, IP_MSFILTER) => Some("IP_MSFILTER"),
        (SOL_IPV6, IPV6_ADD_MEMBERSHIP) => Some("IPV6_JOIN_GROUP"),
        (SOL_IPV6, IPV6_JOIN_ANYCAST) => Some("IPV6_JOIN_ANYCAST"),
        (SOL_IP | SOL_IPV6, MCAST_JOIN_GROUP) => Some("MCAST_JOIN_GROUP"),
        (SOL_IP | SOL_IPV6, MCAST_JOIN_SOURCE_GROUP) => Some("MCAST_JOIN_SOURCE_GROUP"),
        (SOL_IP | SOL_IPV6, MCAST_MSFILTER) => Some("MCAST_MSFILTER"),
        _ => None,
    };
    if membership.is_some() {
        return if multicast { None } else { membership };
    }
    match (level, optname) {
        (SOL_IP, IP_OPTIONS) => Some("IP_OPTIONS"),
        (SOL_IPV6, IPV6_2292HOPOPTS) => Some("IPV6_2292HOPOPTS"),
        (SOL_IPV6, IPV6_2292DSTOPTS) => Some("IPV6_2292DSTOPTS"),
        (SOL_IPV6, IPV6_2292RTHDR) => Some("IPV6_2292RTHDR"),
        (SOL_IPV6, IPV6_2292PKTOPTIONS) => Some("IPV6_2292PKTOPTIONS"),
        (SOL_IPV6, IPV6_HOPOPTS) => Some("IPV6_HOPOPTS"),
        (SOL_IPV6, IPV6_RTHDRDSTOPTS) => Some("IPV6_RTHDRDSTOPTS"),
        (SOL_IPV6, IPV6_RTHDR) => Some("IPV6_RTHDR"),
        (SOL_IPV6, IPV6_DSTOPTS) => Some("IPV6_DSTOPTS"),
        (SOL_TCP, TCP_FASTOPEN) => Some("TCP_FASTOPEN"),
        _ => None,
    }
}

/// The name of a refused option as events carry it (level and number).
pub fn name(level: i32, optname: i32) -> &'static str {
    refused(level, optname, false).unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_membership_needs_the_runners_opt_in() {
        assert_eq!(refused(SOL_IP, 35, false), Some("IP_ADD_MEMBERSHIP"));
        assert_eq!(refused(SOL_IP, 35, true), None);
        assert_eq!(refused(SOL_IPV6, 20, false), Some("IPV6_JOIN_GROUP"));
        assert_eq!(refused(SOL_IPV6, 42, false), Some("MCAST_JOIN_GROUP"));
        assert_eq!(refused(SOL_IPV6, 42, true), None);
    }

    #[test]
    fn routing_options_and_server_fast_open_never_pass() {
        for (level, opt) in [(SOL_IP, 4), (SOL_IPV6, 57), (SOL_IPV6, 5), (SOL_TCP, 23)] {
            assert!(refused(level, opt, true).is_some(), "{level}/{opt}");
        }
    }

    #[test]
    fn ordinary_options_pass() {
        // IP_TOS, IP_TTL, IPV6_V6ONLY, TCP_NODELAY, IP_MULTICAST_TTL,
        // IP_DROP_MEMBERSHIP (leaving is harmless).
        for (level, opt) in [
            (SOL_IP, 1),
            (SOL_IP, 2),
            (SOL_IPV6, 26),
            (SOL_TCP, 1),
            (SOL_IP, 33),
            (SOL_IP, 36),
        ] {
            assert_eq!(refused(level, opt, false), None, "{level}/{opt}");
        }
        // Another level (SOL_SOCKET) with the same numbers is not ours.
        assert_eq!(refused(1, 35, false), None);
    }
}
