//! One query, answered: a container's own service, a name the policy
//! allows (forwarded, screened, its addresses learned before the reply
//! leaves), or a refusal (in audit mode, resolved all the same and
//! reported with what it resolved to).

use super::*;

/// Answers one query; `None` drops it (not a query at all).
pub(super) async fn answer(
    query: &[u8],
    transport: Transport,
    peer: SocketAddr,
    runner: &RunnerDns,
    shared: &Arc<Shared>,
) -> Option<Vec<u8>> {
    let (request, asked) = match examine(query) {
        Examined::Drop => return None,
        Examined::Reply(reply) => return Some(reply),
        Examined::Query { request, asked } => (request, asked),
    };
    let id = request.metadata.id;
    let question = &request.queries[0];
    let name = asked.to_ascii_lowercase();
    // Policy names are matched as text, where a dot inside a wire label
    // (printed `\.`) would pass for a separator: `["data", "evil.pkg",
    // "test"]` reads as a name under `*.pkg.test` but is resolved under
    // `test`. No hostname has such a label; none is allowed.
    let rules = if has_dotted_label(question.name()) {
        Vec::new()
    } else {
        runner.rules_for(&name)
    };
    if let Some(reply) = service_answer(shared, &request, peer, &name) {
        runner.stats.answered.fetch_add(1, Ordering::Relaxed);
        return Some(reply);
    }
    let asked = asked.as_str();
    // Refusals are reported before the reply: the job's socket, which
    // names the process, is open only while it waits for it.
    if rules.is_empty() {
        runner.stats.refused.fetch_add(1, Ordering::Relaxed);
        if runner.mode == Mode::Enforce {
            report_refusal(runner, shared, asked, transport, peer, None).await;
            let code = match runner.refuse_with {
                DnsRefusal::Refused => ResponseCode::Refused,
                DnsRefusal::Nxdomain => ResponseCode::NXDomain,
            };
            return Some(error_reply(id, OpCode::Query, code, Some(&request)));
        }
    }
    let private_ok = rules.iter().any(|r| r.private_answers);
    let resolved = resolve(query, transport, runner, shared, question, private_ok).await;
    if rules.is_empty() {
        // Audit mode let the name through: report what it resolved to, and
        // name the job's connects to those addresses after it, which is
        // what learn mode builds a policy from.
        let answers = resolved
            .as_ref()
            .map(|r| r.screened.ips.clone())
            .unwrap_or_default();
        shared
            .learning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note_audited(runner.id, &name, &answers);
        report_refusal(runner, shared, asked, transport, peer, Some(answers)).await;
    }
    let servfail = || {
        runner.stats.failed.fetch_add(1, Ordering::Relaxed);
        Some(error_reply(
            id,
            OpCode::Query,
            ResponseCode::ServFail,
            Some(&request),
        ))
    };
    let Some(Resolved {
        raw,
        mut response,
        screened,
    }) = resolved
    else {
        return servfail();
    };
    if !rules.is_empty() && !screened.ips.is_empty() {
        let ports: Vec<PortRule> = rules.iter().flat_map(|r| r.ports.iter().copied()).collect();
        match learn(
            shared,
            runner.id,
            &name,
            &ports,
            &screened.ips,
            screened.ttl,
        ) {
            Ok(()) => {}
            // Not in the map: the job's connect would be refused anyway;
            // tell it now rather than hand it an address it cannot reach.
            Err(NotLearned::Quota(over)) => {
                runner.stats.quota.fetch_add(1, Ordering::Relaxed);
                report_quota(runner, shared, asked, over);
                return servfail();
            }
            Err(NotLearned::Map(e)) => {
                tracing::warn!(runner = %runner.name, error = %e, "cannot write a learned address");
                return servfail();
            }
        }
    }
    runner.stats.answered.fetch_add(1, Ordering::Relaxed);
    if screened.changed {
        response.metadata.id = id;
        return response.to_vec().ok().or_else(servfail);
    }
    Some(raw)
}

/// An upstream answer, screened.
struct Resolved {
    raw: Vec<u8>,
    response: Message,
    screened: Screened,
}

/// Forwards `query` upstream and screens the answer; `None` when no usable
/// answer to this very question came back.
async fn resolve(
    query: &[u8],
    transport: Transport,
    runner: &RunnerDns,
    shared: &Shared,
    question: &hickory_proto::op::Query,
    private_ok: bool,
) -> Option<Resolved> {
    let raw = forward(query, transport, &runner.upstream, &shared.upstreams).await?;
    let mut response = Message::from_vec(&raw).ok()?;
    if response.queries.len() != 1
        || response.queries[0].name() != question.name()
        || response.queries[0].query_type() != question.query_type()
    {
        return None;
    }
    let screened = screen(&mut response, shared.ttl.cap, private_ok, &runner.nat64);
    runner
        .stats
        .stripped
        .fetch_add(screened.stripped as u64, Ordering::Relaxed);
    Some(Resolved {
        raw,
        response,
        screened,
    })
}

/// Seconds a service container's address is cached by the job: it lives
/// as long as the job, and the agent forgets it when it stops.
const SERVICE_TTL: u32 = 30;

/// The answer for a job container asking for one of its own job's
/// containers by name or alias (what Docker's embedded resolver would have
/// said on the job's network), or `None` when the name is no such thing.
fn service_answer(
    shared: &Shared,
    request: &Message,
    peer: SocketAddr,
    name: &str,
) -> Option<Vec<u8>> {
    let client = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let ips = shared
        .containers
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .resolve(client, name)?;
    let question = &request.queries[0];
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.queries = request.queries.clone();
    for ip in ips {
        let data = match (ip, question.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(v4.into()),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(v6.into()),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(
            question.name().clone(),
            SERVICE_TTL,
            data,
        ));
    }
    reply.to_vec().ok()
}

/// Whether a wire label of `name` holds a dot.
pub(super) fn has_dotted_label(name: &hickory_proto::rr::Name) -> bool {
    name.iter().any(|label| label.contains(&b'.'))
}

/// Writes the addresses into the runner's learned map, under the lock that
/// orders every write to it.
fn learn(
    shared: &Shared,
    runner: u32,
    name: &str,
    ports: &[PortRule],
    ips: &[IpAddr],
    ttl: Duration,
) -> Result<(), NotLearned> {
    let mut learning = shared.learning.lock().unwrap_or_else(|e| e.into_inner());
    let changes = learning
        .learn_answer(runner, name, ports, ips, ttl)
        .map_err(NotLearned::Quota)?;
    let mut maps = shared.learned.lock().unwrap_or_else(|e| e.into_inner());
    maps.insert(&changes).map_err(NotLearned::Map)
}

/// Why an answer's addresses are not in the map.
#[derive(Debug)]
enum NotLearned {
    /// The runner holds its whole share of the map.
    Quota(crate::learned::OverQuota),
    Map(aya::maps::MapError),
}
