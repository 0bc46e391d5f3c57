//! Validation of whole files and runners: turns raw YAML into a
//! [`Policy`] plus every diagnostic found on the way.

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use serde_saphyr::{Location, Spanned};

use super::*;

/// Validates and merges the given files. Returns every diagnostic found; the
/// policy is `Some` only when no file failed to parse.
///
/// Files named `*.preset.yaml` define presets; every other file holds
/// runners. Variables (`vars:`) are shared by all files.
pub fn validate(sources: &[(PathBuf, Vec<u8>)]) -> (Option<Policy>, Vec<Diagnostic>) {
    validate_with(sources, &mut PolicyCache::default())
}

/// [`validate`], parsing only files whose bytes `cache` has not seen.
pub fn validate_with(
    sources: &[(PathBuf, Vec<u8>)],
    cache: &mut PolicyCache,
) -> (Option<Policy>, Vec<Diagnostic>) {
    let mut diags = Diagnostics::default();
    let mut parsed_all = true;
    cache.retain(sources);

    let mut catalog = Catalog::embedded(&mut diags);
    for (file, bytes) in sources.iter().filter(|(f, _)| presets::is_preset_file(f)) {
        diags.file = file.clone();
        match cache.preset(file, bytes, &mut diags) {
            Some(raw) => catalog.add_user(file, raw, cache::sha256(bytes), &mut diags),
            None => parsed_all = false,
        }
    }

    let mut documents = Vec::new();
    let mut vars: HashMap<String, (String, PathBuf, Location)> = HashMap::new();
    for (file, bytes) in sources.iter().filter(|(f, _)| !presets::is_preset_file(f)) {
        diags.file = file.clone();
        let Some(raw) = cache.policy(file, bytes, &mut diags) else {
            parsed_all = false;
            continue;
        };
        if raw.version.value != VERSION {
            diags.error(
                raw.version.referenced,
                format!(
                    "unsupported policy version {}; this egret reads version {VERSION}",
                    raw.version.value
                ),
            );
        }
        for (name, value) in &raw.vars {
            if !valid_var_name(name) {
                diags.error(
                    value.referenced,
                    format!("variable name '{name}' is invalid: use letters, digits and '_', not starting with a digit"),
                );
                continue;
            }
            match vars.get(name) {
                Some((other, other_file, other_at)) if *other != value.value => diags.error(
                    value.referenced,
                    format!(
                        "variable {name} is already set to '{other}' at {}:{}",
                        other_file.display(),
                        other_at.line()
                    ),
                ),
                _ => {
                    vars.insert(
                        name.clone(),
                        (value.value.clone(), file.clone(), value.referenced),
                    );
                }
            }
        }
        documents.push((file.clone(), raw));
    }
    let vars: HashMap<String, String> = vars.into_iter().map(|(k, (v, _, _))| (k, v)).collect();

    let mut nat64_prefixes = Vec::new();
    for (file, raw) in &documents {
        diags.file = file.clone();
        for prefix in &raw.nat64_prefixes {
            let ctx = Ctx {
                vars: &vars,
                params: None,
                catalog: &catalog,
                expansions: None,
            };
            match ctx.expand(&prefix.value).and_then(|t| nat64_prefix(&t)) {
                Ok(net) if !nat64_prefixes.contains(&net) => nat64_prefixes.push(net),
                Ok(_) => {}
                Err(why) => diags.error(prefix.referenced, why),
            }
        }
    }

    let mut runners = Vec::new();
    let mut seen_names: HashMap<String, (PathBuf, Location)> = HashMap::new();
    let mut seen_cgroups: Vec<(String, PathBuf, Location)> = Vec::new();
    for (file, raw) in documents {
        for raw_runner in raw.runners {
            diags.file = file.clone();
            let ctx = Ctx {
                vars: &vars,
                params: None,
                catalog: &catalog,
                expansions: Some(&cache.expansions),
            };
            let Some(runner) = validate_runner(raw_runner, &ctx, &mut diags) else {
                continue;
            };
            let (runner, name_at, cgroup_at) = runner;
            if let Some((other_file, other_at)) = seen_names.get(&runner.name) {
                diags.error(
                    name_at,
                    format!(
                        "duplicate runner name '{}' (first defined at {}:{})",
                        runner.name,
                        other_file.display(),
                        other_at.line()
                    ),
                );
                continue;
            }
            if let Some((other, other_file, other_at)) = seen_cgroups
                .iter()
                .find(|(other, ..)| cgroups_overlap(other, &runner.cgroup))
            {
                diags.error(
                    cgroup_at,
                    format!(
                        "cgroup '{}' overlaps cgroup '{other}' of another runner ({}:{}); \
                         each job cgroup must belong to exactly one runner",
                        runner.cgroup,
                        other_file.display(),
                        other_at.line()
                    ),
                );
                continue;
            }
            if runner.mode == Mode::Audit {
                diags.warning(
                    name_at,
                    format!(
                        "runner '{}' is in audit mode: denials are reported, not enforced",
                        runner.name
                    ),
                );
            }
            seen_names.insert(runner.name.clone(), (file.clone(), name_at));
            seen_cgroups.push((runner.cgroup.clone(), file.clone(), cgroup_at));
            runners.push(runner);
        }
    }
    let policy = parsed_all.then_some(Policy {
        runners,
        nat64_prefixes,
    });
    (policy, diags.list)
}

pub(super) fn validate_runner(
    raw: RawRunner,
    ctx: &Ctx<'_>,
    diags: &mut Diagnostics,
) -> Option<(Runner, Location, Location)> {
    let errors_before = error_count(diags);
    let name = raw.name.value.trim().to_owned();
    if !valid_runner_name(&name) {
        diags.error(
            raw.name.referenced,
            format!(
                "runner name '{name}' is invalid: use 1 to 64 letters, digits, '.', '_' or '-', \
                 starting with a letter or digit"
            ),
        );
    }
    let (given, cgroup_at) = match (&raw.cgroup, &raw.slice) {
        (Some(c), None) => (
            ctx.expand(&c.value).and_then(|c| normalize_cgroup(&c)),
            c.referenced,
        ),
        (None, Some(s)) => (
            ctx.expand(&s.value)
                .and_then(|s| super::slice::slice_cgroup(s.trim())),
            s.referenced,
        ),
        (Some(_), Some(s)) => (
            Err("give the runner's `cgroup` or its `slice`, not both".to_owned()),
            s.referenced,
        ),
        (None, None) => (
            Err(format!(
                "runner '{name}' needs `cgroup` (a path such as /egret.slice/ci: a shell or \
                 GitHub runner's service, or Docker's cgroupfs driver) or `slice` (a systemd \
                 slice name such as egret-gitlab.slice: Docker's systemd driver)"
            )),
            raw.name.referenced,
        ),
    };
    let cgroup = match given {
        Ok(c) => c,
        Err(why) => {
            diags.error(cgroup_at, why);
            String::new()
        }
    };
    let mode = raw.mode.map_or(Mode::Enforce, |m| m.value);
    let multicast = raw.multicast.as_ref().is_some_and(|m| m.value);
    if let Some(m) = raw.multicast.as_ref().filter(|m| m.value) {
        diags.warning(
            m.referenced,
            format!(
                "runner '{name}' may join multicast groups: the kernel's membership reports carry \
                 the group addresses its jobs choose onto the local network"
            ),
        );
    }
    let mut sockets: Vec<SocketKind> = Vec::new();
    for kind in &raw.sockets {
        if !sockets.contains(&kind.value) {
            sockets.push(kind.value);
        }
        diags.warning(
            kind.referenced,
            format!(
                "runner '{name}' may open {} sockets, whose traffic egret cannot judge by destination",
                match kind.value {
                    SocketKind::Raw => "raw IP",
                    SocketKind::Sctp => "SCTP",
                }
            ),
        );
    }
    let mut dns_upstream = Vec::new();
    let (upstream, listen, refuse_with) = raw
        .dns
        .map(|d| (d.upstream, d.listen, d.refuse_with))
        .unwrap_or_default();
    let mut dns_listen = None;
    if let Some(listen) = listen {
        match ctx.expand(&listen.value).map(|v| v.trim().parse::<IpAddr>()) {
            Ok(Ok(ip)) if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() => {
                diags.error(
                    listen.referenced,
                    format!(
                        "dns.listen '{ip}' must be an address of the host that containers reach, such as the docker bridge gateway 172.17.0.1"
                    ),
                )
            }
            Ok(Ok(ip)) => dns_listen = Some(ip),
            Ok(Err(_)) => diags.error(
                listen.referenced,
                format!("dns.listen '{}' is not an IP address", listen.value),
            ),
            Err(why) => diags.error(listen.referenced, why),
        }
    }
    for up in upstream {
        match ctx.expand(&up.value).map(|v| v.trim().parse::<IpAddr>()) {
            Ok(Ok(ip)) => dns_upstream.push(ip),
            Ok(Err(_)) => diags.error(
                up.referenced,
                format!("dns.upstream '{}' is not an IP address", up.value),
            ),
            Err(why) => diags.error(up.referenced, why),
        }
    }
    let mut entries = Entries::default();
    for entry in raw.allow {
        let unboxed = Spanned::new(*entry.value, entry.referenced, entry.defined);
        validate_allow(unboxed, ctx, diags, &mut entries);
    }
    if error_count(diags) > errors_before {
        return None;
    }
    let runner = Runner {
        name,
        cgroup,
        mode,
        sockets,
        loopback: raw.loopback.map_or_else(Loopback::default, |l| l.value),
        multicast,
        dns_upstream,
        dns_listen,
        dns_refuse: refuse_with.map_or_else(DnsRefusal::default, |r| r.value),
        cidrs: entries.cidrs,
        hosts: entries.hosts,
        patterns: entries.patterns,
    };
    Some((runner, raw.name.referenced, cgroup_at))
}

pub(super) fn valid_runner_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=egret_common::state::RUNNER_NAME_LEN).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) fn normalize_cgroup(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if !raw.starts_with('/') {
        return Err(format!(
            "cgroup '{raw}' must be absolute within the cgroup2 hierarchy, e.g. /egret.slice/ci"
        ));
    }
    let parts: Vec<&str> = raw.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err("cgroup '/' would put every process on the host under this runner's policy; name the runner's own cgroup".into());
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!("cgroup '{raw}' must not contain '.' or '..'"));
    }
    Ok(format!("/{}", parts.join("/")))
}

pub(super) fn cgroups_overlap(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}

/// A NAT64 prefix as RFC 6052 allows it: IPv6, 32, 40, 48, 56, 64 or 96
/// bits, no host bits.
fn nat64_prefix(text: &str) -> Result<ipnet::Ipv6Net, String> {
    let net: ipnet::Ipv6Net = text.trim().parse().map_err(|_| {
        format!("nat64 prefix '{text}' is not an IPv6 prefix such as 64:ff9b:1:2::/96")
    })?;
    if egret_common::addr::nat64_embedded(&[0; 16], net.prefix_len()).is_none() {
        return Err(format!(
            "nat64 prefix '{text}' is /{}: RFC 6052 prefixes are /32, /40, /48, /56, /64 or /96",
            net.prefix_len()
        ));
    }
    if net.trunc() != net {
        return Err(format!(
            "nat64 prefix '{text}' has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}
