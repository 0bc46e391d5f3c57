//! A recording: event lines read back from the agent's `--events-file`
//! (and its rotated `.1`) or from `egret events --json`, and what each
//! line says a job did.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use egret_common::{
    event::hook,
    rules::proto::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{IoError, events::EventRecord, jobs::JobIdentity};

/// Every event of the files read, in file order, and the lines that were
/// not events.
#[derive(Debug, Default)]
pub struct Recording {
    pub events: Vec<EventRecord>,
    /// Lines that are not event records, each with why: a recording cut
    /// short, a line from another program. Reported, never fatal.
    pub skipped: Vec<Skipped>,
    /// Flood summaries (`events_suppressed`): events the agent did not
    /// write one by one, so the recording is incomplete.
    pub suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Skipped {
    pub file: PathBuf,
    pub line: usize,
    pub why: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.why)
    }
}

/// The one line of a flood summary a recording may hold besides events.
#[derive(serde::Deserialize)]
struct Notice {
    notice: String,
    #[serde(default)]
    suppressed: u64,
}

impl Recording {
    /// Reads every file, `-` being standard input.
    pub fn read(paths: &[PathBuf]) -> Result<Self, IoError> {
        let mut recording = Self::default();
        for path in paths {
            if path == Path::new("-") {
                recording.add(path, std::io::stdin().lock());
            } else {
                let file = std::fs::File::open(path).map_err(IoError::at("open", path))?;
                recording.add(path, std::io::BufReader::new(file));
            }
        }
        Ok(recording)
    }

    /// Adds the lines of one source.
    pub fn add(&mut self, path: &Path, reader: impl std::io::BufRead) {
        for (index, line) in reader.lines().enumerate() {
            let skip = |why: String| Skipped {
                file: path.to_owned(),
                line: index + 1,
                why,
            };
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    self.skipped.push(skip(format!("unreadable: {e}")));
                    break;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<EventRecord>(&line) {
                Ok(event) => self.events.push(event),
                Err(e) => match serde_json::from_str::<Notice>(&line) {
                    Ok(n) if n.notice == "events_suppressed" => self.suppressed += n.suppressed,
                    Ok(n) => self.skipped.push(skip(format!("a '{}' notice", n.notice))),
                    Err(_) => self
                        .skipped
                        .push(skip(format!("not an egret event line: {e}"))),
                },
            }
        }
    }

    /// What each event of `runner` says its job did, in recorded order.
    pub fn steps<'a>(&'a self, runner: &'a str) -> impl Iterator<Item = Step<'a>> + 'a {
        self.events
            .iter()
            .filter(move |e| e.runner == runner)
            .filter_map(Step::of)
    }

    /// The runners the recording names, in order of first appearance.
    pub fn runners(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for e in &self.events {
            if !seen.contains(&e.runner.as_str()) {
                seen.push(&e.runner);
            }
        }
        seen
    }
}

/// Which job an event belongs to: the CI job when the agent could name it,
/// else the job's cgroup, else nothing better than the runner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobKey {
    Ci { ci: String, id: String },
    Cgroup(String),
    Unknown,
}

impl JobKey {
    pub fn of(event: &EventRecord) -> Self {
        match (&event.job, &event.cgroup) {
            (Some(JobIdentity { ci, id, .. }), _) => Self::Ci {
                ci: ci.clone(),
                id: id.clone(),
            },
            (None, Some(cgroup)) => Self::Cgroup(cgroup.clone()),
            (None, None) => Self::Unknown,
        }
    }
}

impl std::fmt::Display for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ci { ci, id } => write!(f, "{ci} job {id}"),
            Self::Cgroup(c) => write!(f, "the job in cgroup {c}"),
            Self::Unknown => f.write_str("an unnamed job"),
        }
    }
}

/// One thing a job did that its runner's policy judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<'a> {
    pub job: JobKey,
    pub event: &'a EventRecord,
    /// Whether it went through when recorded (audit mode), as opposed to
    /// being denied.
    pub let_through: bool,
    pub what: Attempt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// A DNS query for a name no entry covered, and what it resolved to
    /// (nothing when it was refused).
    Resolve { name: String, answers: Vec<IpAddr> },
    /// A connect or datagram to an address, with the names the agent knew
    /// for it.
    Reach {
        dst: IpAddr,
        port: u16,
        /// IP protocol number.
        proto: u8,
        /// [`hook`] code.
        hook: u8,
        names: Vec<String>,
        /// The reason it was refused or audited when recorded.
        reason: String,
    },
}

impl<'a> Step<'a> {
    fn of(event: &'a EventRecord) -> Option<Self> {
        let let_through = match event.action.as_ref() {
            "audit" => true,
            "deny" => false,
            _ => return None,
        };
        let what = match (event.reason.as_ref(), hook_code(&event.hook)?) {
            ("dns_refused", hook::DNS_PROXY) => Attempt::Resolve {
                name: event.host.clone()?,
                answers: event.answers.clone().unwrap_or_default(),
            },
            (
                reason,
                code @ (hook::CONNECT4
                | hook::CONNECT6
                | hook::SENDMSG4
                | hook::SENDMSG6
                | hook::EGRESS),
            ) if matches!(reason, "not_allowed" | "lateral" | "metadata") => Attempt::Reach {
                dst: event.dst.as_deref()?.parse().ok()?,
                port: event.port,
                proto: proto_code(&event.proto)?,
                hook: code,
                names: event
                    .host
                    .iter()
                    .flat_map(|h| h.split(','))
                    .map(str::to_owned)
                    .collect(),
                reason: reason.to_owned(),
            },
            _ => return None,
        };
        Some(Self {
            job: JobKey::of(event),
            event,
            let_through,
            what,
        })
    }
}

/// The code of a hook as events name it.
fn hook_code(name: &str) -> Option<u8> {
    (1..=u8::MAX).find(|c| hook::name(*c) == name)
}

/// The protocol number of an event's `proto` text.
pub fn proto_code(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(IPPROTO_TCP),
        "udp" => Some(IPPROTO_UDP),
        "icmp" => Some(IPPROTO_ICMP),
        "icmpv6" => Some(IPPROTO_ICMPV6),
        other => other.parse().ok(),
    }
}
