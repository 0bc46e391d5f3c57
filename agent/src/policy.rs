//! Policy files: parse, validate, and compile into what the datapath needs.
//!
//! The YAML crate stays inside this module. Everything that leaves it is
//! either a validated [`Policy`] or a list of [`Diagnostic`]s, each naming the
//! file, line and column of the problem.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use egret_common::rules::{MAX_PORT_RULES, PortRule, proto, rule_flags};
use ipnet::IpNet;
use serde::{Deserialize, de};
use serde_saphyr::{Location, Spanned};

use crate::baseline;

/// Larger policy files are refused before parsing: a policy is a reviewed
/// text file, and this bounds the parser's memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
pub const VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    /// Denials at the lateral and default steps are let through and reported.
    Audit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Proto {
    Tcp,
    Udp,
    Any,
}

impl Proto {
    const fn bits(self) -> u8 {
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runner {
    pub name: String,
    /// Absolute within the cgroup2 hierarchy, e.g. `/egret.slice/ci`.
    pub cgroup: String,
    pub mode: Mode,
    /// Where the agent resolves this runner's hostnames; empty = the host's
    /// resolver configuration.
    pub dns_upstream: Vec<IpAddr>,
    pub cidrs: Vec<CidrRule>,
    pub hosts: Vec<HostRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrRule {
    pub net: IpNet,
    pub ports: Vec<PortRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// Lower case, no trailing dot.
    pub name: String,
    pub ports: Vec<PortRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Warning => "warning",
            Self::Error => "error",
        })
    }
}

/// One problem found in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file as a whole.
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line.max(1),
            self.column.max(1),
            self.severity,
            self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no *.yaml policy files in this directory")]
    EmptyDirectory { path: PathBuf },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A successfully loaded policy, with any warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
    pub files: Vec<PathBuf>,
    /// `sha256:<hex>` over every file's name and bytes, in order.
    pub digest: String,
}

/// Loads a policy file, or every `*.yaml`/`*.yml` file of a directory.
pub fn load(path: &Path) -> Result<Loaded, PolicyError> {
    let files = policy_files(path)?;
    let mut sources = Vec::with_capacity(files.len());
    for file in &files {
        let meta = std::fs::metadata(file).map_err(|source| PolicyError::Io {
            path: file.clone(),
            source,
        })?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(PolicyError::Invalid(vec![Diagnostic {
                file: file.clone(),
                line: 0,
                column: 0,
                severity: Severity::Error,
                message: format!(
                    "file is {} bytes; policy files are limited to {MAX_FILE_BYTES} bytes",
                    meta.len()
                ),
            }]));
        }
        let bytes = std::fs::read(file).map_err(|source| PolicyError::Io {
            path: file.clone(),
            source,
        })?;
        sources.push((file.clone(), bytes));
    }
    let digest = digest(&sources);
    let (policy, diagnostics) = compile(&sources);
    let (errors, warnings): (Vec<_>, Vec<_>) = diagnostics
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    match policy {
        Some(policy) if errors.is_empty() => Ok(Loaded {
            policy,
            warnings,
            files,
            digest,
        }),
        _ => Err(PolicyError::Invalid(errors)),
    }
}

fn digest(sources: &[(PathBuf, Vec<u8>)]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hash = Sha256::new();
    for (file, bytes) in sources {
        hash.update(file.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        let is_yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if is_yaml && !entry.file_name().to_string_lossy().starts_with('.') {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::EmptyDirectory {
            path: path.to_owned(),
        });
    }
    Ok(files)
}

/// Validates and merges the given files. Returns every diagnostic found; the
/// policy is `Some` only when no file failed to parse.
pub fn compile(sources: &[(PathBuf, Vec<u8>)]) -> (Option<Policy>, Vec<Diagnostic>) {
    let mut diags = Diagnostics::default();
    let mut runners = Vec::new();
    let mut seen_names: HashMap<String, (PathBuf, Location)> = HashMap::new();
    let mut seen_cgroups: Vec<(String, PathBuf, Location)> = Vec::new();
    let mut parsed_all = true;

    for (file, bytes) in sources {
        diags.file = file.clone();
        let Some(raw) = parse(file, bytes, &mut diags) else {
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
        for raw_runner in raw.runners {
            let Some(runner) = validate_runner(raw_runner, &mut diags) else {
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
            seen_names.insert(runner.name.clone(), (file.clone(), name_at));
            seen_cgroups.push((runner.cgroup.clone(), file.clone(), cgroup_at));
            runners.push(runner);
        }
    }
    let policy = parsed_all.then_some(Policy { runners });
    (policy, diags.list)
}

#[derive(Default)]
struct Diagnostics {
    file: PathBuf,
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    fn push(&mut self, at: Location, severity: Severity, message: String) {
        self.list.push(Diagnostic {
            file: self.file.clone(),
            line: at.line(),
            column: at.column(),
            severity,
            message,
        });
    }
    fn error(&mut self, at: Location, message: String) {
        self.push(at, Severity::Error, message);
    }
    fn warning(&mut self, at: Location, message: String) {
        self.push(at, Severity::Warning, message);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<u32>,
    #[serde(default)]
    runners: Vec<RawRunner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    name: Spanned<String>,
    cgroup: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<Mode>>,
    #[serde(default)]
    dns: Option<RawDns>,
    #[serde(default)]
    allow: Vec<Spanned<RawAllow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    upstream: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    cidr: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    ports: Option<Spanned<Vec<Spanned<PortSpec>>>>,
    #[serde(default)]
    proto: Option<Spanned<Proto>>,
    /// This entry reaches the runner's forge (GitLab/GitHub instance) and
    /// stays open under `egret lockdown --keep-forge`.
    #[serde(default)]
    forge: Option<Spanned<bool>>,
}

/// A port as written: `443` or `"8000-8100"`.
#[derive(Clone, Copy, Debug)]
struct PortSpec {
    first: i64,
    last: i64,
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

fn parse(file: &Path, bytes: &[u8], diags: &mut Diagnostics) -> Option<RawPolicy> {
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
    match serde_saphyr::from_str::<RawPolicy>(text) {
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
fn yaml_message(err: &serde_saphyr::Error) -> String {
    let mut options = serde_saphyr::RenderOptions::default();
    options.snippets = serde_saphyr::SnippetMode::Off;
    let text = err.render_with_options(options);
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    strip_location_suffix(first).to_owned()
}

fn strip_location_suffix(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

fn first_tab_indent(text: &str) -> Option<(u64, u64)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let indent: String = line
            .chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .collect();
        indent.find('\t').map(|col| (i as u64 + 1, col as u64 + 1))
    })
}

fn validate_runner(
    raw: RawRunner,
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
    let cgroup = match normalize_cgroup(&raw.cgroup.value) {
        Ok(c) => c,
        Err(why) => {
            diags.error(raw.cgroup.referenced, why);
            String::new()
        }
    };
    let mode = raw.mode.map_or(Mode::Enforce, |m| m.value);
    let mut dns_upstream = Vec::new();
    for up in raw.dns.map(|d| d.upstream).unwrap_or_default() {
        match up.value.trim().parse::<IpAddr>() {
            Ok(ip) => dns_upstream.push(ip),
            Err(_) => diags.error(
                up.referenced,
                format!("dns.upstream '{}' is not an IP address", up.value),
            ),
        }
    }
    let mut cidrs = Vec::new();
    let mut hosts = Vec::new();
    for entry in raw.allow {
        validate_allow(entry, diags, &mut cidrs, &mut hosts);
    }
    if error_count(diags) > errors_before {
        return None;
    }
    let runner = Runner {
        name,
        cgroup,
        mode,
        dns_upstream,
        cidrs,
        hosts,
    };
    Some((runner, raw.name.referenced, raw.cgroup.referenced))
}

fn error_count(diags: &Diagnostics) -> usize {
    diags
        .list
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
}

fn validate_allow(
    entry: Spanned<RawAllow>,
    diags: &mut Diagnostics,
    cidrs: &mut Vec<CidrRule>,
    hosts: &mut Vec<HostRule>,
) {
    let at = entry.referenced;
    let raw = entry.value;
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
    match (raw.cidr, raw.host) {
        (Some(_), Some(host)) => diags.error(
            host.referenced,
            "an allow entry takes either `cidr` or `host`, not both".into(),
        ),
        (None, None) => diags.error(at, "allow entry needs `cidr` or `host`".into()),
        (Some(cidr), None) => {
            if let Some(net) = parse_cidr(&cidr, diags) {
                if let Some(what) = baseline::metadata_overlap(&net) {
                    diags.warning(
                        cidr.referenced,
                        format!(
                            "{net} includes {what}; egret never allows cloud metadata endpoints"
                        ),
                    );
                }
                cidrs.push(CidrRule { net, ports });
            }
        }
        (None, Some(host)) => {
            let name = host.value.trim().trim_end_matches('.').to_ascii_lowercase();
            if let Err(why) = validate_hostname(&name) {
                diags.error(host.referenced, format!("host '{}': {why}", host.value));
            } else {
                hosts.push(HostRule { name, ports });
            }
        }
    }
}

fn validate_ports(
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

fn parse_cidr(cidr: &Spanned<String>, diags: &mut Diagnostics) -> Option<IpNet> {
    let text = cidr.value.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                diags.error(
                    cidr.referenced,
                    format!("'{text}' is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32"),
                );
                return None;
            }
        },
    };
    if net.trunc() != net {
        diags.error(
            cidr.referenced,
            format!("'{text}' has host bits set; did you mean {}?", net.trunc()),
        );
        return None;
    }
    Some(net)
}

fn valid_runner_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=egret_common::state::RUNNER_NAME_LEN).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn normalize_cgroup(raw: &str) -> Result<String, String> {
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

fn cgroups_overlap(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}

fn validate_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.contains('*') {
        return Err("wildcards are not supported in this version; list exact names".into());
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

#[cfg(test)]
mod tests;
