//! What a job does with DNS: single queries through any resolver path,
//! resolve-then-connect, and load.

use super::super::*;

/// The actions this module performs.
pub const KINDS: &[&str] = &["dns", "dns-connect", "dns-load", "dns-flood", "dns-rounds"];

/// The outcome of `action` when it is one of [`KINDS`].
pub fn run(action: &str, kind: &str, rest: &str) -> Option<Outcome> {
    KINDS.contains(&kind).then(|| act(action, kind, rest))
}

fn act(action: &str, kind: &str, rest: &str) -> Outcome {
    match kind {
        // dns:NAME:TYPE:VIA — one query; reports rcode, answers, peer.
        "dns" => {
            let mut f = rest.splitn(3, ':');
            let (name, t, via) = (
                f.next().expect("name"),
                f.next().expect("type"),
                parse_via(f.next().expect("via")),
            );
            match resolve(name, record_type(t), &via) {
                Ok(r) => dns_outcome(action, &r),
                Err(e) => failure(action, &e),
            }
        }
        // dns-connect:NAME:TYPE:PORT:VIA — resolve, then TCP to the first
        // address on PORT; the banner names the server reached.
        "dns-connect" => {
            let mut f = rest.splitn(4, ':');
            let (name, t, port, via) = (
                f.next().expect("name"),
                f.next().expect("type"),
                f.next().expect("port").parse::<u16>().expect("port"),
                parse_via(f.next().expect("via")),
            );
            let reply = match resolve(name, record_type(t), &via) {
                Ok(r) => r,
                Err(e) => return failure(action, &e),
            };
            let Some(ip) = reply.answers.first() else {
                let mut o = dns_outcome(action, &reply);
                o.result = "error";
                o.error = Some("no address in the answer".into());
                return o;
            };
            match TcpStream::connect_timeout(&SocketAddr::new(*ip, port), TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(TIMEOUT));
                    let mut line = String::new();
                    let _ =
                        std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line);
                    let mut o = dns_outcome(action, &reply);
                    o.banner = Some(line.trim().to_owned());
                    o
                }
                Err(e) => {
                    let mut o = failure(action, &e);
                    o.answers = Some(reply.answers.iter().map(|a| a.to_string()).collect());
                    o
                }
            }
        }
        // dns-load:RATE:MS:NAME:SERVER — open loop: RATE queries a second
        // for MS milliseconds on one connected UDP socket; latency of each.
        "dns-load" => {
            let mut f = rest.splitn(4, ':');
            let (rate, ms, name, server) = (
                f.next().expect("rate").parse::<u64>().expect("rate"),
                f.next().expect("ms").parse::<u64>().expect("ms"),
                f.next().expect("name").to_owned(),
                parse(f.next().expect("server")),
            );
            match dns_load(rate, Duration::from_millis(ms), &name, server) {
                Ok((sent, latencies)) => {
                    let mut o = success(action);
                    o.count = Some(sent);
                    o.oks = Some(latencies.len() as u64);
                    o.p50_ns = Some(percentile(&latencies, 50.0));
                    o.p99_ns = Some(percentile(&latencies, 99.0));
                    o
                }
                Err(e) => failure(action, &e),
            }
        }
        // dns-flood:MS:CLIENTS:NAME:SERVER — closed loop: CLIENTS threads,
        // each asking again as soon as it has its answer.
        "dns-flood" => {
            let mut f = rest.splitn(4, ':');
            let (ms, clients, name, server) = (
                f.next().expect("ms").parse::<u64>().expect("ms"),
                f.next().expect("clients").parse::<u32>().expect("clients"),
                f.next().expect("name").to_owned(),
                parse(f.next().expect("server")),
            );
            let until = Instant::now() + Duration::from_millis(ms);
            let threads: Vec<_> = (0..clients)
                .map(|client| {
                    let name = name.replace("{c}", &client.to_string());
                    std::thread::spawn(move || dns_flood(until, &name, server))
                })
                .collect();
            let answered: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
            let mut o = success(action);
            o.oks = Some(answered);
            o.qps = Some(answered * 1000 / ms.max(1));
            o
        }
        // dns-rounds:N:NAME:PORT:VIA — N resolve-then-connect rounds;
        // counts connects that worked, got EPERM, or failed otherwise.
        "dns-rounds" => {
            let mut f = rest.splitn(4, ':');
            let (n, name, port, via) = (
                f.next().expect("n").parse::<u64>().expect("n"),
                f.next().expect("name"),
                f.next().expect("port").parse::<u16>().expect("port"),
                parse_via(f.next().expect("via")),
            );
            let (mut oks, mut eperms, mut others) = (0, 0, 0);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..n {
                let ip = match resolve(name, RecordType::A, &via) {
                    Ok(r) if !r.answers.is_empty() => r.answers[0],
                    _ => {
                        others += 1;
                        continue;
                    }
                };
                seen.insert(ip);
                match TcpStream::connect_timeout(&SocketAddr::new(ip, port), TIMEOUT) {
                    Ok(s) => {
                        oks += 1;
                        close_without_time_wait(&s);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperms += 1,
                    Err(_) => others += 1,
                }
            }
            let mut o = success(action);
            (o.oks, o.eperms, o.others) = (Some(oks), Some(eperms), Some(others));
            o.count = Some(seen.len() as u64);
            o
        }
        other => panic!("unknown action {other}"),
    }
}

/// How a DNS action reaches its resolver: `udp` (sendto/recvfrom, as an
/// unconnected stub does), `udpc` (connect, send, recv, as glibc does) or
/// `tcp`, each `@` a socket address.
pub(crate) struct Via {
    pub(crate) how: String,
    pub(crate) server: SocketAddr,
}

pub(crate) fn parse_via(via: &str) -> Via {
    let (how, server) = via.split_once('@').expect("VIA is udp|udpc|tcp@ADDR:PORT");
    Via {
        how: how.to_owned(),
        server: server
            .parse()
            .unwrap_or_else(|e| panic!("resolver {server}: {e}")),
    }
}

pub(crate) struct DnsReply {
    pub(crate) rcode: ResponseCode,
    pub(crate) answers: Vec<std::net::IpAddr>,
    pub(crate) peer: SocketAddr,
    pub(crate) truncated: bool,
}

/// One stub-resolver exchange. A UDP reply from any address other than the
/// one asked is ignored, as real stub resolvers do.
pub(crate) fn dns_exchange(name: &str, rtype: RecordType, via: &Via) -> std::io::Result<DnsReply> {
    let id = (std::process::id() as u16) ^ (monotonic_ns() as u16);
    let bytes = query_bytes(id, name, rtype)?;
    let (reply, peer) = match via.how.as_str() {
        "udp" | "udpc" => {
            let sock = UdpSocket::bind(unspecified_for(&via.server))?;
            sock.set_read_timeout(Some(TIMEOUT))?;
            if via.how == "udpc" {
                sock.connect(via.server)?;
                sock.send(&bytes)?;
            } else {
                sock.send_to(&bytes, via.server)?;
            }
            let mut buf = vec![0u8; 65_535];
            loop {
                let (n, from) = sock.recv_from(&mut buf)?;
                if from == via.server && n >= 2 && buf[..2] == id.to_be_bytes() {
                    break (buf[..n].to_vec(), from);
                }
            }
        }
        "tcp" => {
            let mut stream = TcpStream::connect_timeout(&via.server, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            let peer = stream.peer_addr()?;
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            stream.write_all(&framed)?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut buf)?;
            (buf, peer)
        }
        other => panic!("unknown DNS transport {other}"),
    };
    let m = Message::from_vec(&reply).map_err(std::io::Error::other)?;
    let answers = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Ok(DnsReply {
        rcode: m.metadata.response_code,
        answers,
        peer,
        truncated: m.metadata.truncation,
    })
}

/// Resolves like a stub: over UDP, and again over TCP when truncated.
pub(crate) fn resolve(name: &str, rtype: RecordType, via: &Via) -> std::io::Result<DnsReply> {
    let reply = dns_exchange(name, rtype, via)?;
    if reply.truncated && via.how != "tcp" {
        return dns_exchange(
            name,
            rtype,
            &Via {
                how: "tcp".into(),
                server: via.server,
            },
        );
    }
    Ok(reply)
}

/// A recursive query, as a stub resolver sends it.
pub(crate) fn query_bytes(id: u16, name: &str, rtype: RecordType) -> std::io::Result<Vec<u8>> {
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(hickory_proto::op::Query::query(
        Name::from_ascii(format!("{name}.")).map_err(std::io::Error::other)?,
        rtype,
    ));
    q.to_vec().map_err(std::io::Error::other)
}

/// Sends at a fixed rate from one thread and receives on another; returns
/// how many were sent and the latency of each answered one.
pub(crate) fn dns_load(
    rate: u64,
    duration: Duration,
    name: &str,
    server: SocketAddr,
) -> std::io::Result<(u64, Vec<u64>)> {
    let sock = UdpSocket::bind(unspecified_for(&server))?;
    sock.connect(server)?;
    let total = (rate * duration.as_millis() as u64 / 1000).min(65_536) as usize;
    let sent_at: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>> = std::sync::Arc::new(
        (0..total)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
    );
    let receiver = {
        let sock = sock.try_clone()?;
        let sent_at = sent_at.clone();
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        std::thread::spawn(move || {
            let mut latencies = Vec::with_capacity(total);
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if n < 2 {
                    continue;
                }
                let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                let now = monotonic_ns();
                if let Some(t) = sent_at.get(id) {
                    let at = t.swap(0, std::sync::atomic::Ordering::Relaxed);
                    if at != 0 {
                        latencies.push(now - at);
                    }
                }
                if latencies.len() == total {
                    break;
                }
            }
            latencies
        })
    };
    let queries: Vec<Vec<u8>> = (0..total)
        .map(|i| {
            query_bytes(
                i as u16,
                &name.replace("{n}", &i.to_string()),
                RecordType::A,
            )
        })
        .collect::<std::io::Result<_>>()?;
    let interval_ns = 1_000_000_000 / rate.max(1);
    let start = monotonic_ns();
    for (i, q) in queries.iter().enumerate() {
        let due = start + i as u64 * interval_ns;
        // Sleep, never spin: a spinning sender would take a core from the
        // servers under test on a small machine.
        let now = monotonic_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        sent_at[i].store(monotonic_ns(), std::sync::atomic::Ordering::Relaxed);
        sock.send(q)?;
    }
    let mut latencies = receiver.join().unwrap_or_default();
    latencies.sort_unstable();
    Ok((total as u64, latencies))
}

pub(crate) fn dns_flood(until: Instant, name: &str, server: SocketAddr) -> u64 {
    let Ok(sock) = UdpSocket::bind(unspecified_for(&server)) else {
        return 0;
    };
    if sock.connect(server).is_err()
        || sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .is_err()
    {
        return 0;
    }
    let mut answered = 0;
    let mut buf = [0u8; 4096];
    let mut id: u16 = 0;
    while Instant::now() < until {
        id = id.wrapping_add(1);
        let Ok(query) = query_bytes(
            id,
            &name.replace("{n}", &answered.to_string()),
            RecordType::A,
        ) else {
            break;
        };
        if sock.send(&query).is_err() {
            break;
        }
        while let Ok(n) = sock.recv(&mut buf) {
            if n >= 2 && buf[..2] == id.to_be_bytes() {
                answered += 1;
                break;
            }
        }
    }
    answered
}

/// The p-th percentile of sorted samples; 0 for none.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) fn record_type(t: &str) -> RecordType {
    match t {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "TXT" => RecordType::TXT,
        other => panic!("record type {other}"),
    }
}

pub(crate) fn dns_outcome(action: &str, reply: &DnsReply) -> Outcome {
    let mut o = success(action);
    o.rcode = Some(format!("{:?}", reply.rcode));
    o.answers = Some(reply.answers.iter().map(|a| a.to_string()).collect());
    o.peer = Some(reply.peer.to_string());
    o
}
