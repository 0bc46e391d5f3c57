//! Looks up the policy's exact hostnames through hickory, on the upstream
//! each runner names. What the answers allow, and for how long, is
//! [`crate::learned`]'s business.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no resolver configuration: {0}")]
    Config(String),
}

/// The answer for one name.
#[derive(Debug)]
pub enum Answer {
    Addresses {
        ips: Vec<IpAddr>,
        ttl: Duration,
    },
    /// NXDOMAIN or no A/AAAA records: authoritative, the name has no address.
    NoAddress,
    /// Timeout, SERVFAIL, network error: nothing learned, keep what we had.
    Failed(String),
}

/// One hickory resolver per distinct upstream list.
#[derive(Default)]
pub struct Resolvers {
    by_upstream: HashMap<Vec<IpAddr>, TokioResolver>,
}

impl Resolvers {
    pub fn resolver(&mut self, upstream: &[IpAddr]) -> Result<TokioResolver, ResolveError> {
        if let Some(r) = self.by_upstream.get(upstream) {
            return Ok(r.clone());
        }
        let mut builder = if upstream.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| ResolveError::Config(e.to_string()))?
        } else {
            let servers = upstream
                .iter()
                .map(|ip| NameServerConfig::udp_and_tcp(*ip))
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        // We schedule refreshes ourselves; a cache would hand back stale TTLs.
        opts.cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| ResolveError::Config(e.to_string()))?;
        self.by_upstream.insert(upstream.to_vec(), resolver.clone());
        Ok(resolver)
    }
}

/// Looks up A and AAAA for `host`.
pub async fn lookup(resolver: &TokioResolver, host: &str) -> Answer {
    // A trailing dot: policy names are absolute, never search-listed.
    match resolver.lookup_ip(format!("{host}.")).await {
        Ok(lookup) => {
            let ips: Vec<IpAddr> = lookup.iter().collect();
            if ips.is_empty() {
                return Answer::NoAddress;
            }
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(Instant::now());
            Answer::Addresses { ips, ttl }
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Answer::NoAddress,
        Err(e) => Answer::Failed(e.to_string()),
    }
}
