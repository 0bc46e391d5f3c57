//! What of an upstream answer reaches the job: the CNAME chain from the
//! question, without rebinding answers, with TTLs capped.

use std::{net::IpAddr, time::Duration};

use hickory_proto::{op::Message, rr::RData};

use crate::baseline;

pub(super) struct Screened {
    /// The addresses the reply carries for the question's name.
    pub(super) ips: Vec<IpAddr>,
    /// The lowest TTL along the CNAME chain.
    pub(super) ttl: Duration,
    /// Whether `response` was modified and must be re-encoded.
    pub(super) changed: bool,
    /// Answers dropped by the rebinding guard.
    pub(super) stripped: usize,
}

/// Follows the CNAME chain from the question's name, collects its
/// addresses, drops answers in private, loopback or metadata ranges
/// (metadata always, the rest unless `private_ok`), and caps every TTL so a
/// job never caches an address longer than the map allows it.
pub(super) fn screen(
    response: &mut Message,
    cap: Duration,
    private_ok: bool,
    nat64: &[ipnet::Ipv6Net],
) -> Screened {
    let cap_secs = u32::try_from(cap.as_secs()).unwrap_or(u32::MAX).max(1);
    let mut chain = vec![response.queries[0].name().clone()];
    let mut ips = Vec::new();
    let mut ttl = u32::MAX;
    let mut changed = false;
    let before = response.answers.len();
    response.answers.retain(|record| {
        let in_chain = chain.iter().any(|n| n == &record.name);
        let ip = match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            RData::CNAME(target) if in_chain => {
                chain.push(target.0.clone());
                ttl = ttl.min(record.ttl);
                None
            }
            _ => None,
        };
        let Some(ip) = ip else {
            return true;
        };
        if !baseline::answer_usable(ip, private_ok, nat64) {
            return false;
        }
        if in_chain {
            ips.push(ip);
            ttl = ttl.min(record.ttl);
        }
        true
    });
    let stripped = before - response.answers.len();
    changed |= stripped > 0;
    for record in response.answers.iter_mut() {
        if record.ttl > cap_secs {
            record.ttl = cap_secs;
            changed = true;
        }
    }
    Screened {
        ips,
        ttl: Duration::from_secs(u64::from(if ttl == u32::MAX { 0 } else { ttl })),
        changed,
        stripped,
    }
}
