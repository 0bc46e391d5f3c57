//! Address normalisation shared by the kernel programs and the agent.

/// An address as every map stores it: 16 bytes, network order, IPv4 mapped.
pub type Addr = [u8; 16];

/// Prefix length of the IPv4-mapped block `::ffff:0:0/96`.
pub const MAPPED_PREFIX_LEN: u32 = 96;

/// `::1`
pub const LOOPBACK_V6: Addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// `::ffff:a.b.c.d`
#[inline(always)]
pub const fn mapped_v4(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// An IPv6 address from the four 32-bit words the kernel hands programs
/// (`user_ip6`, `src_ip6`), each already in network byte order in memory.
#[inline(always)]
pub fn from_words(words: [u32; 4]) -> Addr {
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&words[0].to_ne_bytes());
    a[4..8].copy_from_slice(&words[1].to_ne_bytes());
    a[8..12].copy_from_slice(&words[2].to_ne_bytes());
    a[12..16].copy_from_slice(&words[3].to_ne_bytes());
    a
}

#[inline(always)]
pub const fn is_mapped_v4(a: &Addr) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// NAT64 well-known prefix `64:ff9b::/96` (RFC 6052): the last four bytes are
/// an IPv4 address that a NAT64 gateway will reach on the job's behalf.
#[inline(always)]
pub const fn is_nat64(a: &Addr) -> bool {
    a[0] == 0x00
        && a[1] == 0x64
        && a[2] == 0xff
        && a[3] == 0x9b
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0
        && a[11] == 0
}

/// NAT64 local-use prefix `64:ff9b:1::/48` (RFC 8215): operators cut
/// prefixes of their own from it, with any RFC 6052 layout of /48 or more.
pub const NAT64_LOCAL_USE: [u8; 6] = [0x00, 0x64, 0xff, 0x9b, 0x00, 0x01];

#[inline(always)]
pub const fn is_nat64_local_use(a: &Addr) -> bool {
    a[0] == NAT64_LOCAL_USE[0]
        && a[1] == NAT64_LOCAL_USE[1]
        && a[2] == NAT64_LOCAL_USE[2]
        && a[3] == NAT64_LOCAL_USE[3]
        && a[4] == NAT64_LOCAL_USE[4]
        && a[5] == NAT64_LOCAL_USE[5]
}

/// The IPv4 address an RFC 6052 address carries behind a NAT64 prefix of
/// `len` bits (32, 40, 48, 56, 64 or 96; bits 64 to 71 are skipped, as the
/// RFC reserves them); `None` for any other length.
#[inline(always)]
pub const fn nat64_embedded(a: &Addr, len: u8) -> Option<[u8; 4]> {
    match len {
        32 => Some([a[4], a[5], a[6], a[7]]),
        40 => Some([a[5], a[6], a[7], a[9]]),
        48 => Some([a[6], a[7], a[9], a[10]]),
        56 => Some([a[7], a[9], a[10], a[11]]),
        64 => Some([a[9], a[10], a[11], a[12]]),
        96 => Some([a[12], a[13], a[14], a[15]]),
        _ => None,
    }
}

/// The layouts a prefix of the local-use block may use: whichever the
/// operator chose.
pub const LOCAL_USE_LAYOUTS: [u8; 4] = [48, 56, 64, 96];

/// The address a verdict is taken on: NAT64 destinations are judged by the
/// IPv4 address they embed, so `64:ff9b::a9fe:a9fe` is the metadata service.
#[inline(always)]
pub const fn normalize(a: Addr) -> Addr {
    if is_nat64(&a) {
        mapped_v4([a[12], a[13], a[14], a[15]])
    } else {
        a
    }
}

/// Loopback in either family, plus the unspecified addresses: `connect()` to
/// `0.0.0.0` or `::` reaches the local host just as loopback does.
#[inline(always)]
pub const fn is_loopback(a: &Addr) -> bool {
    if is_mapped_v4(a) {
        return a[12] == 127 || (a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 0);
    }
    let mut i = 0;
    while i < 15 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    a[15] == 1 || a[15] == 0
}

/// The address a connection to `a` reaches: the unspecified address of a
/// family means that family's loopback address.
#[inline(always)]
pub fn reached_by_connect(a: &Addr) -> Addr {
    if *a == mapped_v4([0, 0, 0, 0]) {
        mapped_v4([127, 0, 0, 1])
    } else if *a == [0; 16] {
        LOOPBACK_V6
    } else {
        *a
    }
}

/// Whether the first `len` bits of `target` are those of `net`: what a
/// longest-prefix-match trie compares. For host code (tests, replay) that
/// stands in for the kernel's tries.
pub fn prefix_match(len: u32, net: &Addr, target: &Addr) -> bool {
    (0..len.min(128) as usize).all(|bit| {
        let mask = 0x80u8 >> (bit % 8);
        net[bit / 8] & mask == target[bit / 8] & mask
    })
}

/// The value of the longest `(prefix length, network)` entry holding
/// `target`, as an LPM trie answers.
pub fn longest_match<'a, V>(
    entries: impl Iterator<Item = (u32, &'a Addr, &'a V)>,
    target: &Addr,
) -> Option<&'a V> {
    entries
        .filter(|(len, net, _)| prefix_match(*len, net, target))
        .max_by_key(|(len, ..)| *len)
        .map(|(.., v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_to_the_unspecified_address_reaches_loopback() {
        let v4 = |a| mapped_v4(a);
        assert_eq!(reached_by_connect(&v4([0, 0, 0, 0])), v4([127, 0, 0, 1]));
        assert_eq!(reached_by_connect(&[0; 16]), LOOPBACK_V6);
        assert_eq!(reached_by_connect(&v4([127, 0, 0, 2])), v4([127, 0, 0, 2]));
    }

    #[test]
    fn nat64_is_judged_by_embedded_v4() {
        let mut nat64 = [0u8; 16];
        nat64[..4].copy_from_slice(&[0x00, 0x64, 0xff, 0x9b]);
        nat64[12..].copy_from_slice(&[169, 254, 169, 254]);
        assert_eq!(normalize(nat64), mapped_v4([169, 254, 169, 254]));
    }

    #[test]
    fn words_keep_their_memory_order() {
        let ip: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let words = [0, 1, 2, 3]
            .map(|i| u32::from_ne_bytes([ip[4 * i], ip[4 * i + 1], ip[4 * i + 2], ip[4 * i + 3]]));
        assert_eq!(from_words(words), ip);
    }

    #[test]
    fn every_rfc6052_layout_finds_the_same_v4() {
        // 192.0.2.33 behind 2001:db8::/32, /40, /48, /56, /64 and /96, as
        // RFC 6052 section 2.4 lays them out.
        let cases: [(u8, &str); 6] = [
            (32, "2001:db8:c000:221::"),
            (40, "2001:db8:1c0:2:21::"),
            (48, "2001:db8:122:c000:2:2100::"),
            (56, "2001:db8:122:3c0:0:221::"),
            (64, "2001:db8:122:344:c0:2:2100:0"),
            (96, "2001:db8:122:344::192.0.2.33"),
        ];
        extern crate std;
        for (len, text) in cases {
            let a = text.parse::<std::net::Ipv6Addr>().unwrap().octets();
            assert_eq!(nat64_embedded(&a, len), Some([192, 0, 2, 33]), "/{len}");
        }
        assert_eq!(nat64_embedded(&[0; 16], 80), None);
    }

    #[test]
    fn ordinary_v6_is_untouched() {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[15] = 7;
        assert_eq!(normalize(a), a);
        assert!(!is_mapped_v4(&a));
    }

    #[test]
    fn loopback_and_unspecified() {
        assert!(is_loopback(&mapped_v4([127, 0, 0, 1])));
        assert!(is_loopback(&mapped_v4([127, 3, 2, 1])));
        assert!(is_loopback(&mapped_v4([0, 0, 0, 0])));
        let mut v6_lo = [0u8; 16];
        v6_lo[15] = 1;
        assert!(is_loopback(&v6_lo));
        assert!(is_loopback(&[0u8; 16]));
        assert!(!is_loopback(&mapped_v4([128, 0, 0, 1])));
        let mut v6 = [0u8; 16];
        v6[14] = 1;
        assert!(!is_loopback(&v6));
    }
}
