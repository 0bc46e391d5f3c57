//! Port and protocol rules attached to every allow entry.

/// How many port ranges one allow entry (after merging) can carry. Bounded so
/// the kernel loop over them is bounded.
pub const MAX_PORT_RULES: usize = 16;

/// Protocol bits of [`PortRule::protos`].
pub mod proto {
    pub const TCP: u8 = 1 << 0;
    pub const UDP: u8 = 1 << 1;
    /// ICMP echo through ping sockets; only `proto: any` entries with no port
    /// restriction admit it, because a ping has no destination port.
    pub const ICMP: u8 = 1 << 2;
    pub const ANY: u8 = TCP | UDP | ICMP;

    /// IP protocol numbers as the kernel reports them in `bpf_sock_addr.protocol`.
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_ICMPV6: u8 = 58;

    /// The bit for an IP protocol number; 0 for protocols no rule can name.
    #[inline(always)]
    pub const fn bit(ip_proto: u8) -> u8 {
        match ip_proto {
            IPPROTO_TCP => TCP,
            IPPROTO_UDP => UDP,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => ICMP,
            _ => 0,
        }
    }
}

pub mod rule_flags {
    /// The rule reaches the runner's forge (GitLab or GitHub instance): it
    /// stays open during a `lockdown --keep-forge`.
    pub const FORGE: u8 = 1 << 0;
}

/// An inclusive port range for a set of protocols.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub first: u16,
    pub last: u16,
    pub protos: u8,
    /// [`rule_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PortRule>() == 8);

impl PortRule {
    pub const fn new(first: u16, last: u16, protos: u8) -> Self {
        Self {
            first,
            last,
            protos,
            flags: 0,
            _pad: [0; 2],
        }
    }

    pub const fn with_flags(self, flags: u8) -> Self {
        Self { flags, ..self }
    }

    pub const fn all_ports(protos: u8) -> Self {
        Self::new(0, u16::MAX, protos)
    }

    #[inline(always)]
    pub const fn permits(&self, port: u16, ip_proto: u8) -> bool {
        let bit = proto::bit(ip_proto);
        if bit == 0 || self.protos & bit == 0 {
            return false;
        }
        if bit == proto::ICMP {
            return self.first == 0 && self.last == u16::MAX;
        }
        // DNS over TLS resolves any name past the proxy: only a rule that
        // lists port 853 by itself opens it, never a range or "all ports".
        if port == crate::port::DOT {
            return self.first == port && self.last == port;
        }
        self.first <= port && port <= self.last
    }
}

pub mod rules_flags {
    /// The entry names a lateral destination explicitly (its CIDR lies inside
    /// a private, link-local or host subnet range), so it may open that
    /// destination. A broad entry such as `0.0.0.0/0` never opens lateral
    /// targets: a neighbour is reachable only when the policy names it.
    pub const LATERAL_OK: u32 = 1 << 0;
}

/// The value of every allow entry: up to [`MAX_PORT_RULES`] ranges.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    pub count: u32,
    /// [`rules_flags`] bits.
    pub flags: u32,
    pub rules: [PortRule; MAX_PORT_RULES],
}
const _: () = assert!(core::mem::size_of::<PortRules>() == 8 + 8 * MAX_PORT_RULES);

impl PortRules {
    /// Whether a rule admits the port and protocol; with `forge_only`, only a
    /// rule marked [`rule_flags::FORGE`] counts.
    #[inline(always)]
    pub fn permits_with(&self, port: u16, ip_proto: u8, forge_only: bool) -> bool {
        let mut i = 0;
        while i < MAX_PORT_RULES {
            if i as u32 >= self.count {
                return false;
            }
            let rule = &self.rules[i];
            if (!forge_only || rule.flags & rule_flags::FORGE != 0) && rule.permits(port, ip_proto)
            {
                return true;
            }
            i += 1;
        }
        false
    }

    #[inline(always)]
    pub fn permits(&self, port: u16, ip_proto: u8) -> bool {
        self.permits_with(port, ip_proto, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[PortRule]) -> PortRules {
        let mut r = PortRules::default();
        r.rules[..list.len()].copy_from_slice(list);
        r.count = list.len() as u32;
        r
    }

    #[test]
    fn port_and_proto_must_both_match() {
        let r = rules(&[PortRule::new(443, 443, proto::TCP)]);
        assert!(r.permits(443, proto::IPPROTO_TCP));
        assert!(!r.permits(443, proto::IPPROTO_UDP));
        assert!(!r.permits(80, proto::IPPROTO_TCP));
    }

    #[test]
    fn ranges_are_inclusive() {
        let r = rules(&[PortRule::new(8000, 8100, proto::ANY)]);
        assert!(r.permits(8000, proto::IPPROTO_UDP));
        assert!(r.permits(8100, proto::IPPROTO_TCP));
        assert!(!r.permits(8101, proto::IPPROTO_TCP));
        assert!(!r.permits(7999, proto::IPPROTO_TCP));
    }

    #[test]
    fn ping_needs_an_unrestricted_any_rule() {
        assert!(!rules(&[PortRule::new(443, 443, proto::ANY)]).permits(0, proto::IPPROTO_ICMP));
        assert!(!rules(&[PortRule::all_ports(proto::TCP)]).permits(0, proto::IPPROTO_ICMP));
        assert!(rules(&[PortRule::all_ports(proto::ANY)]).permits(9, proto::IPPROTO_ICMPV6));
    }

    #[test]
    fn entries_past_count_are_ignored() {
        let mut r = rules(&[PortRule::new(1, 1, proto::TCP)]);
        r.rules[1] = PortRule::all_ports(proto::ANY);
        assert!(!r.permits(80, proto::IPPROTO_TCP));
    }

    #[test]
    fn forge_only_sees_forge_rules() {
        let r = rules(&[
            PortRule::new(443, 443, proto::TCP),
            PortRule::new(22, 22, proto::TCP).with_flags(rule_flags::FORGE),
        ]);
        assert!(r.permits_with(22, proto::IPPROTO_TCP, true));
        assert!(!r.permits_with(443, proto::IPPROTO_TCP, true));
        assert!(r.permits(443, proto::IPPROTO_TCP));
    }

    #[test]
    fn unknown_protocols_never_match() {
        assert!(!rules(&[PortRule::all_ports(proto::ANY)]).permits(80, 132));
    }
}
