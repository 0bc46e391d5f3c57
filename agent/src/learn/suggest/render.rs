//! A suggestion as a policy file, each entry with a comment saying what
//! needed it.

use std::fmt::Write as _;

use egret_common::rules::{MAX_PORT_RULES, proto::IPPROTO_TCP};

use super::{ASSUMED_PORT, Base, Entry, EntryKind, Options, Suggestion};
use crate::policy::{DnsRefusal, Loopback, SocketKind};

/// Names listed in a wildcard's or preset's comment before "and N more".
const NAMES_SHOWN: usize = 6;

/// The policy text: one runner, in enforce mode, with the suggested allow
/// list and, as comments, what was left out and why.
pub fn render(s: &Suggestion, opts: &Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Suggested by `egret suggest` from {} of {} of runner '{}'.",
        super::plural(s.events, "event"),
        super::plural(s.jobs, "job"),
        opts.runner
    );
    out.push_str(
        "# Review it, then check it against the recording with `egret replay` before\n\
         # enforcing. Each entry says how many recorded jobs and events needed it.\n",
    );
    out.push_str("version: 1\nrunners:\n");
    let _ = writeln!(out, "  - name: {}", opts.runner);
    runner_settings(&mut out, &opts.base);
    out.push_str("    mode: enforce\n");
    if s.entries.is_empty() {
        out.push_str("    allow: []\n");
    } else {
        out.push_str("    allow:\n");
    }
    for entry in &s.entries {
        render_entry(&mut out, entry);
    }
    if !s.left_out.is_empty() {
        out.push_str("    # Seen in the recording and left out:\n");
        for l in &s.left_out {
            let _ = writeln!(out, "    #   {}: {}", l.what, l.why);
        }
    }
    out
}

fn runner_settings(out: &mut String, base: &Base) {
    let runner = match base {
        Base::Cgroup(cgroup) => {
            let _ = writeln!(out, "    cgroup: {}", quoted(cgroup));
            return;
        }
        Base::Runner(r) => r,
    };
    let _ = writeln!(out, "    cgroup: {}", quoted(&runner.cgroup));
    match runner.loopback {
        Loopback::Own => {}
        Loopback::Allow => out.push_str("    loopback: allow\n"),
        Loopback::Deny => out.push_str("    loopback: deny\n"),
    }
    if !runner.sockets.is_empty() {
        let kinds: Vec<&str> = runner
            .sockets
            .iter()
            .map(|k| match k {
                SocketKind::Raw => "raw",
                SocketKind::Sctp => "sctp",
            })
            .collect();
        let _ = writeln!(out, "    sockets: [{}]", kinds.join(", "));
    }
    if runner.multicast {
        out.push_str("    multicast: true\n");
    }
    let refuse_nxdomain = runner.dns_refuse == DnsRefusal::Nxdomain;
    if runner.dns_upstream.is_empty() && runner.dns_listen.is_none() && !refuse_nxdomain {
        return;
    }
    out.push_str("    dns:\n");
    if !runner.dns_upstream.is_empty() {
        let list: Vec<String> = runner
            .dns_upstream
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        let _ = writeln!(out, "      upstream: [{}]", list.join(", "));
    }
    if let Some(listen) = runner.dns_listen {
        let _ = writeln!(out, "      listen: {listen}");
    }
    if refuse_nxdomain {
        out.push_str("      refuse_with: nxdomain\n");
    }
}

fn render_entry(out: &mut String, entry: &Entry) {
    let count = entry.usage.count();
    let target = match &entry.kind {
        EntryKind::Preset { name, covers } => {
            let _ = writeln!(
                out,
                "      # preset {name}, for {}: {count}",
                listed(covers)
            );
            let _ = writeln!(out, "      - preset: {name}");
            return;
        }
        EntryKind::Host(name) => {
            let _ = writeln!(out, "      # {count}");
            format!("host: {}", quoted(name))
        }
        EntryKind::Wildcard { parent, names } => {
            let _ = writeln!(out, "      # {}: {count}", listed(names));
            format!("host: {}", quoted(&format!("*.{parent}")))
        }
        EntryKind::Cidr(net) => {
            let _ = writeln!(out, "      # reached with no name: {count}");
            format!("cidr: {}", quoted(&net.to_string()))
        }
    };
    if entry.usage.ports.is_empty() {
        let _ = writeln!(
            out,
            "      # resolved, but no connection to it was recorded: port {ASSUMED_PORT} assumed"
        );
        let _ = writeln!(
            out,
            "      - {target}\n        ports: [{ASSUMED_PORT}]\n        proto: tcp"
        );
        return;
    }
    for proto in [IPPROTO_TCP, egret_common::rules::proto::IPPROTO_UDP] {
        let ports: Vec<u16> = entry
            .usage
            .ports
            .iter()
            .filter(|(p, _)| *p == proto)
            .map(|(_, port)| *port)
            .collect();
        let name = if proto == IPPROTO_TCP { "tcp" } else { "udp" };
        for chunk in ranges(&ports).chunks(MAX_PORT_RULES) {
            let _ = writeln!(
                out,
                "      - {target}\n        ports: [{}]\n        proto: {name}",
                chunk.join(", ")
            );
        }
    }
}

/// Sorted ports as the policy writes them: `443`, or `"8000-8002"` for a
/// run of neighbours.
fn ranges(ports: &[u16]) -> Vec<String> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match out.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(p) => *last = p,
            _ => out.push((p, p)),
        }
    }
    out.into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("\"{a}-{b}\"")
            }
        })
        .collect()
}

fn listed(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > NAMES_SHOWN {
        let _ = write!(text, " and {} more", items.len() - NAMES_SHOWN);
    }
    text
}

/// A YAML double-quoted scalar: names and addresses hold nothing that
/// needs more than quotes, but a leading `*` must not start an alias.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}
