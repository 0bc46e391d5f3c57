//! The YAML as written: serde types with source spans, and the parser
//! with friendlier messages than the YAML crate's own.

use std::{collections::BTreeMap, fmt, path::Path};

use serde::{Deserialize, de};
use serde_saphyr::{Location, Spanned};

use super::*;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPreset {
    pub(super) preset: Spanned<String>,
    pub(super) version: Spanned<u32>,
    #[serde(default)]
    #[expect(dead_code, reason = "shown by `egret presets`, not needed to validate")]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) params: Vec<Spanned<String>>,
    pub(super) allow: Vec<Spanned<RawAllow>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) version: Spanned<u32>,
    /// `${NAME}` values for hosts, CIDRs, cgroups, upstreams and preset
    /// parameters, so one policy repository serves several sites.
    #[serde(default)]
    pub(super) vars: BTreeMap<String, Spanned<String>>,
    /// NAT64 prefixes of the host's network, whose destinations are judged
    /// by the IPv4 address they carry.
    #[serde(default)]
    pub(super) nat64_prefixes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) runners: Vec<RawRunner>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRunner {
    pub(super) name: Spanned<String>,
    /// A path relative to the cgroup2 root; or else `slice`.
    #[serde(default)]
    pub(super) cgroup: Option<Spanned<String>>,
    /// A systemd slice name, for Docker's systemd cgroup driver.
    #[serde(default)]
    pub(super) slice: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) mode: Option<Spanned<Mode>>,
    /// Socket kinds no hook can police, allowed back in: raw, sctp.
    #[serde(default)]
    pub(super) sockets: Vec<Spanned<SocketKind>>,
    #[serde(default)]
    pub(super) loopback: Option<Spanned<Loopback>>,
    /// Allow multicast group membership.
    #[serde(default)]
    pub(super) multicast: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) dns: Option<RawDns>,
    #[serde(default)]
    pub(super) allow: Vec<Spanned<Box<RawAllow>>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    #[serde(default)]
    pub(super) upstream: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) refuse_with: Option<Spanned<DnsRefusal>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllow {
    #[serde(default)]
    pub(super) cidr: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) host: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) preset: Option<Spanned<String>>,
    /// Parameters of the preset, e.g. `{host: gitlab.example.com}`.
    #[serde(default)]
    pub(super) with: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// Accept a wildcard on a suffix where anyone can register a name.
    #[serde(default)]
    pub(super) i_understand_multitenant: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) ports: Option<Spanned<Vec<Spanned<PortSpec>>>>,
    #[serde(default)]
    pub(super) proto: Option<Spanned<Proto>>,
    /// This entry reaches the runner's forge (GitLab/GitHub instance) and
    /// stays open under `egret lockdown --keep-forge`.
    #[serde(default)]
    pub(super) forge: Option<Spanned<bool>>,
    /// Keep DNS answers in private ranges for this host.
    #[serde(default)]
    pub(super) private_answers: Option<Spanned<bool>>,
}

/// A port as written: `443` or `"8000-8100"`.
#[derive(Clone, Copy, Debug)]
pub(super) struct PortSpec {
    pub(super) first: i64,
    pub(super) last: i64,
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a range such as 8000-8100")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec { first: v, last: v })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                Ok(PortSpec { first: v, last: v })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                let parse = |s: &str| {
                    s.trim().parse::<i64>().map_err(|_| {
                        E::custom(format!(
                            "'{v}' is not a port number or a range such as 8000-8100"
                        ))
                    })
                };
                match v.split_once('-') {
                    Some((a, b)) => Ok(PortSpec {
                        first: parse(a)?,
                        last: parse(b)?,
                    }),
                    None => {
                        let p = parse(v)?;
                        Ok(PortSpec { first: p, last: p })
                    }
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(
    file: &Path,
    bytes: &[u8],
    diags: &mut Diagnostics,
) -> Option<T> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        let valid = std::str::from_utf8(bytes)
            .map_err(|e| e.valid_up_to())
            .err()
            .unwrap_or(0);
        let line = bytes[..valid].iter().filter(|b| **b == b'\n').count() as u64 + 1;
        diags.list.push(Diagnostic {
            file: file.to_owned(),
            line,
            column: 0,
            severity: Severity::Error,
            message: "file is not valid UTF-8".into(),
        });
        return None;
    };
    if text.trim().is_empty() {
        diags.list.push(Diagnostic {
            file: file.to_owned(),
            line: 0,
            column: 0,
            severity: Severity::Error,
            message: "file is empty; a policy needs at least `version: 1`".into(),
        });
        return None;
    }
    if let Some((line, column)) = first_tab_indent(text) {
        diags.list.push(Diagnostic {
            file: file.to_owned(),
            line,
            column,
            severity: Severity::Error,
            message: "tab used for indentation; YAML indents with spaces only".into(),
        });
        return None;
    }
    match serde_saphyr::from_str::<T>(text) {
        Ok(raw) => Some(raw),
        Err(err) => {
            let at = err.location().unwrap_or(Location::UNKNOWN);
            diags.list.push(Diagnostic {
                file: file.to_owned(),
                line: at.line(),
                column: at.column(),
                severity: Severity::Error,
                message: yaml_message(&err),
            });
            None
        }
    }
}

/// The parser's message without the location and snippet it renders by
/// default (we print the location ourselves, in `file:line:col` form).
pub(super) fn yaml_message(err: &serde_saphyr::Error) -> String {
    let mut options = serde_saphyr::RenderOptions::default();
    options.snippets = serde_saphyr::SnippetMode::Off;
    let text = err.render_with_options(options);
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    friendlier(strip_location_suffix(first))
}

/// Adds a "did you mean" to unknown fields and values, and says in plain
/// words what the parser's type names mean.
pub(super) fn friendlier(message: &str) -> String {
    for (prefix, kind) in [("unknown field `", "field"), ("unknown variant `", "value")] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((word, tail)) = rest.split_once('`') else {
            continue;
        };
        let expected: Vec<&str> = tail
            .split_once("expected one of ")
            .map(|(_, list)| list.split(", ").map(|s| s.trim_matches('`')).collect())
            .or_else(|| {
                tail.split_once("expected ")
                    .map(|(_, one)| vec![one.trim_matches('`')])
            })
            .unwrap_or_default();
        let hint = did_you_mean(word, &expected)
            .map(|c| format!("; did you mean `{c}`?"))
            .unwrap_or_default();
        return format!(
            "unknown {kind} `{word}` (expected one of: {}){hint}",
            expected.join(", ")
        );
    }
    match message {
        "invalid u32" | "invalid u16" | "invalid i64" => "expected a whole number".into(),
        "expected sequence start" => {
            "expected a list (`[a, b]` or lines starting with `- `)".into()
        }
        "expected mapping start" => "expected a mapping (`key: value` lines)".into(),
        other => other.to_owned(),
    }
}

/// Drops a trailing location the parser appends (`... at line 3, column 5`
/// or `... (used at line 3, column 5)`): we print the location first.
pub(super) fn strip_location_suffix(message: &str) -> &str {
    for marker in [" (used at line ", " at line "] {
        if let Some(i) = message.rfind(marker) {
            let tail = message[i + marker.len()..].trim_end_matches(')');
            let is_location = tail.split_once(", column ").is_some_and(|(l, c)| {
                l.bytes().all(|b| b.is_ascii_digit()) && c.bytes().all(|b| b.is_ascii_digit())
            });
            if is_location {
                return &message[..i];
            }
        }
    }
    message
}

pub(super) fn first_tab_indent(text: &str) -> Option<(u64, u64)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let indent: String = line
            .chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .collect();
        indent.find('\t').map(|col| (i as u64 + 1, col as u64 + 1))
    })
}
