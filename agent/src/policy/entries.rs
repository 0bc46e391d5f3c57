//! Validation of allow entries: CIDRs, hostnames, presets, ports.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use egret_common::rules::{MAX_PORT_RULES, PortRule, proto, rule_flags};
use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::*;
use crate::baseline;

#[derive(Clone, Default)]
pub(super) struct Entries {
    pub(super) cidrs: Vec<CidrRule>,
    pub(super) hosts: Vec<HostRule>,
    pub(super) patterns: Vec<HostRule>,
}

pub(super) fn validate_allow(
    entry: Spanned<RawAllow>,
    ctx: &Ctx<'_>,
    diags: &mut Diagnostics,
    out: &mut Entries,
) {
    let at = entry.referenced;
    let raw = entry.value;
    if let Some(preset) = &raw.preset {
        if let Some(other) = raw.cidr.as_ref().or(raw.host.as_ref()) {
            diags.error(
                other.referenced,
                "an allow entry takes one of `cidr`, `host` or `preset`".into(),
            );
            return;
        }
        if let Some(p) = raw
            .ports
            .as_ref()
            .map(|p| p.referenced)
            .or(raw.proto.as_ref().map(|p| p.referenced))
        {
            diags.error(
                p,
                "a preset brings its own ports and protocols; list extra ports as a separate entry"
                    .into(),
            );
            return;
        }
        expand_preset(preset, raw.with.as_ref(), ctx, diags, out);
        return;
    }
    if let Some(with) = &raw.with {
        diags.error(
            with.referenced,
            "`with` gives parameters to a `preset`".into(),
        );
        return;
    }
    let protos = raw.proto.map_or(proto::ANY, |p| p.value.bits());
    let flags = if raw.forge.is_some_and(|f| f.value) {
        rule_flags::FORGE
    } else {
        0
    };
    let ports = match &raw.ports {
        None => vec![PortRule::all_ports(protos)],
        Some(list) => match validate_ports(list, protos, diags) {
            Some(p) => p,
            None => return,
        },
    };
    let ports: Vec<PortRule> = ports.into_iter().map(|r| r.with_flags(flags)).collect();
    let private_answers = raw.private_answers.as_ref().is_some_and(|p| p.value);
    if let (Some(p), None) = (&raw.private_answers, &raw.host) {
        diags.error(
            p.referenced,
            "`private_answers` applies to `host` entries: it keeps their DNS answers in private ranges"
                .into(),
        );
        return;
    }
    match (raw.cidr, raw.host) {
        (Some(_), Some(host)) => diags.error(
            host.referenced,
            "an allow entry takes one of `cidr`, `host` or `preset`".into(),
        ),
        (None, None) => diags.error(at, "allow entry needs `cidr`, `host` or `preset`".into()),
        (Some(cidr), None) => {
            let text = match ctx.expand(&cidr.value) {
                Ok(t) => t,
                Err(why) => return diags.error(cidr.referenced, why),
            };
            if let Some(net) = parse_cidr(&text, cidr.referenced, diags) {
                if let Some(what) = baseline::metadata_overlap(&net) {
                    diags.warning(
                        cidr.referenced,
                        format!(
                            "{net} includes {what}; egret never allows cloud metadata endpoints"
                        ),
                    );
                }
                out.cidrs.push(CidrRule { net, ports });
            }
        }
        (None, Some(host)) => {
            let expanded = match ctx.expand(&host.value) {
                Ok(t) => t,
                Err(why) => return diags.error(host.referenced, why),
            };
            let name = expanded.trim().trim_end_matches('.').to_ascii_lowercase();
            if let Some(suffix) = name.strip_prefix("*.") {
                match validate_pattern(suffix) {
                    Err(why) => diags.error(host.referenced, format!("host '{expanded}': {why}")),
                    Ok(tenancy) => {
                        let accepted = raw
                            .i_understand_multitenant
                            .as_ref()
                            .is_some_and(|f| f.value);
                        if let (Some(what), false) = (tenancy, accepted) {
                            diags.warning(
                                host.referenced,
                                format!(
                                    "'{name}' matches names anyone can register ({what}); allow exact names, \
                                     or set `i_understand_multitenant: true` on this entry"
                                ),
                            );
                        }
                        out.patterns.push(HostRule {
                            name,
                            ports,
                            private_answers,
                        });
                    }
                }
            } else if let Err(why) = validate_hostname(&name) {
                diags.error(host.referenced, format!("host '{expanded}': {why}"));
            } else {
                out.hosts.push(HostRule {
                    name,
                    ports,
                    private_answers,
                });
            }
        }
    }
}

pub(super) fn expand_preset(
    preset: &Spanned<String>,
    with: Option<&Spanned<BTreeMap<String, Spanned<String>>>>,
    ctx: &Ctx<'_>,
    diags: &mut Diagnostics,
    out: &mut Entries,
) {
    let Some(found) = ctx.catalog.presets.get(&preset.value) else {
        let names = ctx.catalog.names();
        let hint = did_you_mean(&preset.value, &names)
            .map(|n| format!("did you mean '{n}'? "))
            .unwrap_or_default();
        diags.error(
            preset.referenced,
            format!(
                "unknown preset '{}'; {hint}available: {} (or add a *.preset.yaml file)",
                preset.value,
                names.join(", ")
            ),
        );
        return;
    };
    let mut params = HashMap::new();
    let given = with.map(|w| &w.value);
    for (name, value) in given.into_iter().flatten() {
        if !found.params.contains(name) {
            diags.error(
                value.referenced,
                format!(
                    "preset '{}' takes no parameter '{name}' (it takes: {})",
                    preset.value,
                    if found.params.is_empty() {
                        "none".into()
                    } else {
                        found.params.join(", ")
                    }
                ),
            );
            return;
        }
        match ctx.expand(&value.value) {
            Ok(v) => {
                params.insert(name.clone(), v);
            }
            Err(why) => return diags.error(value.referenced, why),
        }
    }
    if let Some(missing) = found.params.iter().find(|p| !params.contains_key(*p)) {
        diags.error(
            preset.referenced,
            format!("preset '{}' needs `with: {{{missing}: ...}}`", preset.value),
        );
        return;
    }
    // The same preset with the same parameters and variables expands to
    // the same entries and findings: a large generated preset is checked
    // once, not on every reload.
    let key = super::cache::ExpansionKey::new(&preset.value, found.digest, &params, ctx.vars);
    if let Some(hit) = ctx
        .expansions
        .and_then(|cache| cache.borrow().get(&key).cloned())
    {
        diags.list.extend(hit.findings);
        out.extend(hit.entries);
        return;
    }
    // Entries are checked where the preset defines them.
    let caller_file = std::mem::replace(&mut diags.file, found.file.clone());
    let inner = Ctx {
        vars: ctx.vars,
        params: Some(&params),
        catalog: ctx.catalog,
        expansions: None,
    };
    let findings_before = diags.list.len();
    let mut expanded = Entries::default();
    for entry in &found.source.allow {
        if let Some(nested) = &entry.value.preset {
            diags.error(
                nested.referenced,
                "a preset cannot include another preset".into(),
            );
            continue;
        }
        validate_allow(entry.clone(), &inner, diags, &mut expanded);
    }
    diags.file = caller_file;
    if let Some(cache) = ctx.expansions {
        cache.borrow_mut().insert(
            key,
            super::cache::Expanded {
                entries: expanded.clone(),
                findings: diags.list[findings_before..].to_vec(),
            },
        );
    }
    out.extend(expanded);
}

impl Entries {
    fn extend(&mut self, more: Entries) {
        self.cidrs.extend(more.cidrs);
        self.hosts.extend(more.hosts);
        self.patterns.extend(more.patterns);
    }
}

pub(super) fn validate_ports(
    list: &Spanned<Vec<Spanned<PortSpec>>>,
    protos: u8,
    diags: &mut Diagnostics,
) -> Option<Vec<PortRule>> {
    if list.value.is_empty() {
        diags.error(
            list.referenced,
            "ports is empty; leave it out to allow every port".into(),
        );
        return None;
    }
    let mut ranges = Vec::new();
    let mut ok = true;
    for spec in &list.value {
        let PortSpec { first, last } = spec.value;
        let valid = |p: i64| (1..=i64::from(u16::MAX)).contains(&p);
        if !valid(first) || !valid(last) {
            let bad = if valid(first) { last } else { first };
            diags.error(
                spec.referenced,
                format!("port {bad} is out of range 1-65535"),
            );
            ok = false;
        } else if first > last {
            diags.error(
                spec.referenced,
                format!("port range {first}-{last} is reversed; write {last}-{first}"),
            );
            ok = false;
        } else {
            ranges.push((first as u16, last as u16));
        }
    }
    if !ok {
        return None;
    }
    let merged = merge_ranges(ranges);
    if merged.len() > MAX_PORT_RULES {
        diags.error(
            list.referenced,
            format!(
                "{} separate port ranges; an entry holds at most {MAX_PORT_RULES} (join them into ranges)",
                merged.len()
            ),
        );
        return None;
    }
    Some(
        merged
            .into_iter()
            .map(|(a, b)| PortRule::new(a, b, protos))
            .collect(),
    )
}

/// Sorts and joins overlapping or adjacent ranges.
pub fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

pub(super) fn parse_cidr(text: &str, at: Location, diags: &mut Diagnostics) -> Option<IpNet> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                diags.error(
                    at,
                    format!("'{text}' is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32"),
                );
                return None;
            }
        },
    };
    if net.trunc() != net {
        diags.error(
            at,
            format!("'{text}' has host bits set; did you mean {}?", net.trunc()),
        );
        return None;
    }
    let local_use: IpNet = "64:ff9b:1::/48".parse().expect("a CIDR");
    if local_use.contains(&net) {
        // Naming it would open whatever IPv4 address it carries, the
        // metadata service's too: only a declared layout is safe.
        diags.error(
            at,
            format!(
                "'{text}' is NAT64 local-use space: declare the prefix under `nat64_prefixes:` and \
                 allow the IPv4 addresses behind it"
            ),
        );
        return None;
    }
    Some(net)
}

/// Why `name` cannot be a `host` entry, if it cannot.
pub fn validate_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.contains('*') {
        return Err("a wildcard must be the whole first label: '*.example.com'".into());
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err("is an IP address; use `cidr` for addresses".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label '{label}' must be 1 to 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label '{label}' must not start or end with '-'"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "label '{label}' has a character not allowed in a hostname"
            ));
        }
    }
    Ok(())
}
