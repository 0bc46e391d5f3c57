//! Policy files: parse, validate, and compile into what the datapath needs.
//!
//! The YAML crate stays inside this module. Everything that leaves it is
//! either a validated [`Policy`] or a list of [`Diagnostic`]s, each naming the
//! file, line and column of the problem.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use egret_common::rules::{MAX_PORT_RULES, PortRule, proto, rule_flags};
use ipnet::IpNet;
use serde::{Deserialize, de};
use serde_saphyr::{Location, Spanned};

use crate::baseline;

pub mod presets;

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

/// Which loopback destinations a runner's jobs may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loopback {
    /// Only listeners opened inside the runner's own cgroup (the job's test
    /// servers), never host services on loopback.
    #[default]
    Own,
    Allow,
    Deny,
}

/// Socket kinds a runner can opt back into (`sockets: [ping]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketKind {
    /// Raw IP sockets (needs CAP_NET_RAW besides). Their packets are still
    /// judged by the egress backstop.
    Raw,
    Sctp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Proto {
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
    /// Socket kinds the runner's jobs may create although no hook can judge
    /// their destinations.
    pub sockets: Vec<SocketKind>,
    pub loopback: Loopback,
    /// Where the agent resolves this runner's hostnames; empty = the host's
    /// resolver configuration.
    pub dns_upstream: Vec<IpAddr>,
    /// An address on the host that jobs in network namespaces of their own
    /// (containers) reach, such as a docker bridge gateway. The runner's DNS
    /// proxy listens there too; without it their DNS queries are refused.
    pub dns_listen: Option<IpAddr>,
    /// What a job hears for a name the policy does not allow.
    pub dns_refuse: DnsRefusal,
    pub cidrs: Vec<CidrRule>,
    /// Exact names, resolved by the agent.
    pub hosts: Vec<HostRule>,
    /// `*.example.com` patterns: one or more labels in front of the suffix.
    /// They can only be enforced through the DNS proxy, which learns the
    /// addresses as the job resolves matching names.
    pub patterns: Vec<HostRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrRule {
    pub net: IpNet,
    pub ports: Vec<PortRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// Lower case, no trailing dot; `*.suffix` for a pattern.
    pub name: String,
    pub ports: Vec<PortRule>,
    /// Keep DNS answers in private, link-local or loopback ranges for this
    /// name (a self-managed forge on a private address). Without it the
    /// proxy drops them, so a name cannot be rebound onto a neighbour.
    pub private_answers: bool,
}

impl HostRule {
    /// Whether a queried name falls under this entry: equal for an exact
    /// name; for `*.suffix`, one or more labels followed by `.suffix` (never
    /// `suffix` itself). Case and a trailing dot are ignored.
    pub fn matches(&self, queried: &str) -> bool {
        let queried = queried.trim_end_matches('.');
        match self.name.strip_prefix("*.") {
            None => queried.eq_ignore_ascii_case(&self.name),
            Some(suffix) => {
                queried.len() > suffix.len() + 1
                    && queried.as_bytes()[queried.len() - suffix.len() - 1] == b'.'
                    && queried[queried.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !queried[..queried.len() - suffix.len() - 1]
                        .split('.')
                        .any(str::is_empty)
            }
        }
    }
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
///
/// Files named `*.preset.yaml` define presets; every other file holds
/// runners. Variables (`vars:`) are shared by all files.
pub fn compile(sources: &[(PathBuf, Vec<u8>)]) -> (Option<Policy>, Vec<Diagnostic>) {
    let mut diags = Diagnostics::default();
    let mut parsed_all = true;

    let mut catalog = Catalog::embedded(&mut diags);
    for (file, bytes) in sources.iter().filter(|(f, _)| presets::is_preset_file(f)) {
        diags.file = file.clone();
        match parse::<RawPreset>(file, bytes, &mut diags) {
            Some(raw) => catalog.add_user(file, raw, &mut diags),
            None => parsed_all = false,
        }
    }

    let mut documents = Vec::new();
    let mut vars: HashMap<String, (String, PathBuf, Location)> = HashMap::new();
    for (file, bytes) in sources.iter().filter(|(f, _)| !presets::is_preset_file(f)) {
        diags.file = file.clone();
        let Some(raw) = parse::<RawPolicy>(file, bytes, &mut diags) else {
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
    let policy = parsed_all.then_some(Policy { runners });
    (policy, diags.list)
}

fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What validation of an entry needs to know.
struct Ctx<'a> {
    vars: &'a HashMap<String, String>,
    /// A preset's parameters, while expanding one.
    params: Option<&'a HashMap<String, String>>,
    catalog: &'a Catalog,
}

impl Ctx<'_> {
    /// Expands `${NAME}`: a preset parameter first, then a policy variable.
    fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed '${{' in '{text}'"))?;
            let name = &after[..end];
            let value = self
                .params
                .and_then(|p| p.get(name))
                .or_else(|| self.vars.get(name))
                .ok_or_else(|| {
                    let mut known: Vec<&str> = self.vars.keys().map(String::as_str).collect();
                    if let Some(p) = self.params {
                        known.extend(p.keys().map(String::as_str));
                    }
                    known.sort_unstable();
                    let hint = did_you_mean(name, &known)
                        .map(|k| format!("; did you mean ${{{k}}}?"))
                        .unwrap_or_default();
                    format!("undefined variable ${{{name}}}{hint}")
                })?;
            out.push_str(value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Every preset a policy can use: the embedded ones, replaced or extended
/// by the policy directory's own.
struct Catalog {
    presets: HashMap<String, Preset>,
}

struct Preset {
    file: PathBuf,
    user: bool,
    params: Vec<String>,
    allow: Vec<Spanned<RawAllow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreset {
    preset: Spanned<String>,
    version: Spanned<u32>,
    #[serde(default)]
    #[expect(dead_code, reason = "shown by `egret presets`, not needed to validate")]
    description: Option<String>,
    #[serde(default)]
    params: Vec<Spanned<String>>,
    allow: Vec<Spanned<RawAllow>>,
}

impl Catalog {
    fn embedded(diags: &mut Diagnostics) -> Self {
        let mut catalog = Self {
            presets: HashMap::new(),
        };
        for (name, source) in presets::EMBEDDED {
            let file = presets::embedded_path(name);
            if let Some(raw) = parse::<RawPreset>(&file, source.as_bytes(), diags) {
                catalog.insert(file, raw, false);
            }
        }
        catalog
    }

    fn insert(&mut self, file: PathBuf, raw: RawPreset, user: bool) {
        self.presets.insert(
            raw.preset.value.clone(),
            Preset {
                file,
                user,
                params: raw.params.into_iter().map(|p| p.value).collect(),
                allow: raw.allow,
            },
        );
    }

    fn add_user(&mut self, file: &Path, raw: RawPreset, diags: &mut Diagnostics) {
        let name = raw.preset.value.clone();
        if !valid_runner_name(&name) {
            diags.error(
                raw.preset.referenced,
                format!("preset name '{name}' is invalid"),
            );
            return;
        }
        if raw.version.value == 0 {
            diags.error(
                raw.version.referenced,
                "preset version must be 1 or more".into(),
            );
            return;
        }
        if let Some(other) = self.presets.get(&name).filter(|p| p.user) {
            diags.error(
                raw.preset.referenced,
                format!(
                    "preset '{name}' is already defined in {}",
                    other.file.display()
                ),
            );
            return;
        }
        self.insert(file.to_owned(), raw, true);
    }

    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.presets.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
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
    /// `${NAME}` values for hosts, CIDRs, cgroups, upstreams and preset
    /// parameters, so one policy repository serves several sites.
    #[serde(default)]
    vars: BTreeMap<String, Spanned<String>>,
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
    /// Socket kinds no hook can police, allowed back in: raw, sctp.
    #[serde(default)]
    sockets: Vec<Spanned<SocketKind>>,
    #[serde(default)]
    loopback: Option<Spanned<Loopback>>,
    #[serde(default)]
    dns: Option<RawDns>,
    #[serde(default)]
    allow: Vec<Spanned<Box<RawAllow>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    upstream: Vec<Spanned<String>>,
    #[serde(default)]
    listen: Option<Spanned<String>>,
    #[serde(default)]
    refuse_with: Option<Spanned<DnsRefusal>>,
}

/// The answer to a query for a name the policy does not allow.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DnsRefusal {
    /// RCODE 5: the resolver says it will not answer.
    #[default]
    Refused,
    /// RCODE 3: the name does not exist, for tools that retry on REFUSED.
    Nxdomain,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    cidr: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    preset: Option<Spanned<String>>,
    /// Parameters of the preset, e.g. `{host: gitlab.example.com}`.
    #[serde(default)]
    with: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// Accept a wildcard on a suffix where anyone can register a name.
    #[serde(default)]
    i_understand_multitenant: Option<Spanned<bool>>,
    #[serde(default)]
    ports: Option<Spanned<Vec<Spanned<PortSpec>>>>,
    #[serde(default)]
    proto: Option<Spanned<Proto>>,
    /// This entry reaches the runner's forge (GitLab/GitHub instance) and
    /// stays open under `egret lockdown --keep-forge`.
    #[serde(default)]
    forge: Option<Spanned<bool>>,
    /// Keep DNS answers in private ranges for this host.
    #[serde(default)]
    private_answers: Option<Spanned<bool>>,
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

fn parse<T: serde::de::DeserializeOwned>(
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
fn yaml_message(err: &serde_saphyr::Error) -> String {
    let mut options = serde_saphyr::RenderOptions::default();
    options.snippets = serde_saphyr::SnippetMode::Off;
    let text = err.render_with_options(options);
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    friendlier(strip_location_suffix(first))
}

/// Adds a "did you mean" to unknown fields and values, and says in plain
/// words what the parser's type names mean.
fn friendlier(message: &str) -> String {
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
fn strip_location_suffix(message: &str) -> &str {
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
    let cgroup = match ctx
        .expand(&raw.cgroup.value)
        .and_then(|c| normalize_cgroup(&c))
    {
        Ok(c) => c,
        Err(why) => {
            diags.error(raw.cgroup.referenced, why);
            String::new()
        }
    };
    let mode = raw.mode.map_or(Mode::Enforce, |m| m.value);
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
        dns_upstream,
        dns_listen,
        dns_refuse: refuse_with.map_or_else(DnsRefusal::default, |r| r.value),
        cidrs: entries.cidrs,
        hosts: entries.hosts,
        patterns: entries.patterns,
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

#[derive(Default)]
struct Entries {
    cidrs: Vec<CidrRule>,
    hosts: Vec<HostRule>,
    patterns: Vec<HostRule>,
}

fn validate_allow(
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

fn expand_preset(
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
    // Entries are checked where the preset defines them.
    let caller_file = std::mem::replace(&mut diags.file, found.file.clone());
    let inner = Ctx {
        vars: ctx.vars,
        params: Some(&params),
        catalog: ctx.catalog,
    };
    for entry in &found.allow {
        if let Some(nested) = &entry.value.preset {
            diags.error(
                nested.referenced,
                "a preset cannot include another preset".into(),
            );
            continue;
        }
        validate_allow(entry.clone(), &inner, diags, out);
    }
    diags.file = caller_file;
}

/// Why a `*.suffix` pattern is refused (`Err`), or the multi-tenant suffix
/// it covers (`Ok(Some)`), which earns a warning.
fn validate_pattern(suffix: &str) -> Result<Option<String>, String> {
    if suffix.is_empty() || suffix == "*" {
        return Err("a bare wildcard matches every name".into());
    }
    if suffix.contains('*') {
        return Err("only a leading '*.' is supported".into());
    }
    validate_hostname(suffix)?;
    if let Some(ps) = psl::suffix(suffix.as_bytes())
        && ps.is_known()
        && ps.as_bytes() == suffix.as_bytes()
    {
        return match ps.typ() {
            Some(psl::Type::Private) => Ok(Some(format!("'{suffix}' is a shared hosting suffix"))),
            _ => Err(format!(
                "'{suffix}' is a public suffix: the pattern would match every domain registered under it"
            )),
        };
    }
    Ok(MULTITENANT
        .iter()
        .find(|m| **m == suffix || m.ends_with(&format!(".{suffix}")))
        .map(|m| format!("'{m}' hosts anyone's content")))
}

/// Suffixes where anyone can get a name, beyond what the public suffix list
/// marks as private. A wildcard on one, or on a parent of one, warns.
const MULTITENANT: &[&str] = &[
    "s3.amazonaws.com",
    "amazonaws.com",
    "cloudfront.net",
    "blob.core.windows.net",
    "azurewebsites.net",
    "appspot.com",
    "herokuapp.com",
    "github.io",
    "githubusercontent.com",
    "gitlab.io",
    "netlify.app",
    "vercel.app",
    "pages.dev",
    "workers.dev",
    "web.app",
    "firebaseapp.com",
    "ngrok.io",
    "storage.googleapis.com",
];

/// The closest candidate to `word`, if one is close enough to be a typo.
fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // One edit always counts; more only when the first letter agrees (typos
    // rarely hit it), scaled for long names.
    let close = |d: usize, c: &str| {
        let same_start = word.chars().next() == c.chars().next();
        d <= 1 || (same_start && d <= 2.max(c.len() / 4))
    };
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(word, c), *c))
        .filter(|(d, c)| close(*d, c) && *d < c.len())
        .min()
        .map(|(_, c)| c)
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

fn parse_cidr(text: &str, at: Location, diags: &mut Diagnostics) -> Option<IpNet> {
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

#[cfg(test)]
mod tests;
