//! Helper processes of the test world:
//! - `serve tcp:ADDR udp:ADDR ...`: fixture servers; TCP answers with a banner
//!   line naming the address, UDP echoes.
//! - `dns ADDR ZONE LOG`: an authoritative DNS fixture for the test zone that
//!   appends every query it sees to LOG and re-reads ZONE on each query. An
//!   A value `FIRST-LAST` rotates through that range, one address per
//!   answer (a CDN); `FIRST+N` answers N consecutive addresses at once (a
//!   large answer, truncated over UDP so the client retries over TCP).
//! - `job ACTION...`: what a CI job does; one JSON outcome per action.
//!
//! Every mode first checks it is not in the test's initial network namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(why) = assert_isolated() {
        eprintln!("egret-testkit: {why}");
        return ExitCode::from(3);
    }
    let Some((mode, rest)) = args.split_first() else {
        eprintln!("usage: egret-testkit serve|dns|job ...");
        return ExitCode::from(2);
    };
    match mode.as_str() {
        "serve" => serve(rest),
        "dns" => dns(rest),
        "job" => job(rest),
        other => {
            eprintln!("unknown mode {other}");
            ExitCode::from(2)
        }
    }
}

fn assert_isolated() -> Result<(), String> {
    let initial: u64 = std::env::var("EGRET_TEST_INITIAL_NETNS")
        .map_err(|_| {
            "EGRET_TEST_INITIAL_NETNS not set; run me through the test harness".to_owned()
        })?
        .parse()
        .map_err(|_| "EGRET_TEST_INITIAL_NETNS is not a number".to_owned())?;
    let here = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| e.to_string())?
        .ino();
    if here == initial {
        return Err("refusing to touch the network from the initial network namespace".into());
    }
    Ok(())
}

fn serve(specs: &[String]) -> ExitCode {
    for spec in specs {
        let (kind, addr) = spec.split_once(':').expect("kind:addr");
        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
        match kind {
            "tcp" => {
                let listener =
                    TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
                std::thread::spawn(move || {
                    for mut stream in listener.incoming().flatten() {
                        std::thread::spawn(move || {
                            let _ = stream.write_all(format!("fixture {addr}\n").as_bytes());
                            // Keep the connection open until the client closes,
                            // so long-lived connections can be tested.
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = stream.read(&mut buf) {
                                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                });
            }
            // Accept and close at once, no thread: for connect benchmarks.
            "sink" => {
                let listener = deep_listener(addr);
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        drop(stream);
                    }
                });
            }
            // Read and throw away everything: for throughput benchmarks.
            "discard" => {
                let listener = deep_listener(addr);
                std::thread::spawn(move || {
                    for stream in listener.incoming().flatten() {
                        std::thread::spawn(move || {
                            let mut stream = stream;
                            let mut buf = vec![0u8; 1 << 16];
                            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                        });
                    }
                });
            }
            "udp" => {
                let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], peer);
                    }
                });
            }
            other => panic!("unknown listener kind {other}"),
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

/// A listener with a deep accept queue: with the default of 128, bursts of
/// short connections see SYNs dropped and 1 s retransmits, which would turn a
/// connect benchmark into a timer benchmark.
fn deep_listener(addr: SocketAddr) -> TcpListener {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket
        .bind(&addr.into())
        .unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
    socket.listen(4096).expect("listen");
    socket.into()
}

struct ZoneRecord {
    name: Name,
    rtype: RecordType,
    value: String,
    ttl: u32,
}

fn read_zone(path: &PathBuf) -> Vec<ZoneRecord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [name, rtype, value, ttl] = f[..] else {
                return None;
            };
            Some(ZoneRecord {
                name: Name::from_ascii(format!("{name}.")).ok()?,
                rtype: match rtype {
                    "A" => RecordType::A,
                    "AAAA" => RecordType::AAAA,
                    "CNAME" => RecordType::CNAME,
                    _ => return None,
                },
                value: value.to_owned(),
                ttl: ttl.parse().ok()?,
            })
        })
        .collect()
}

/// Addresses one A record stands for: one, the next of a rotating range,
/// or a run of consecutive ones.
fn a_values(value: &str) -> Vec<std::net::Ipv4Addr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static ROTATION: AtomicU32 = AtomicU32::new(0);
    if let Some((first, last)) = value.split_once('-') {
        let (Ok(first), Ok(last)) = (
            first.parse::<std::net::Ipv4Addr>(),
            last.parse::<std::net::Ipv4Addr>(),
        ) else {
            return Vec::new();
        };
        let span = u32::from(last) - u32::from(first) + 1;
        let n = ROTATION.fetch_add(1, Ordering::Relaxed) % span;
        return vec![std::net::Ipv4Addr::from(u32::from(first) + n)];
    }
    if let Some((first, count)) = value.split_once('+') {
        let (Ok(first), Ok(count)) = (first.parse::<std::net::Ipv4Addr>(), count.parse::<u32>())
        else {
            return Vec::new();
        };
        return (0..count)
            .map(|i| std::net::Ipv4Addr::from(u32::from(first) + i))
            .collect();
    }
    value.parse().into_iter().collect()
}

fn answer(query: &[u8], zone_path: &PathBuf, log: &PathBuf, udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let q = request.queries.first()?.clone();
    // LOG "-": a benchmark upstream; the zone is read once, nothing logged.
    static FIXED_ZONE: std::sync::OnceLock<Vec<ZoneRecord>> = std::sync::OnceLock::new();
    let fixed = log.as_os_str() == "-";
    let reread;
    let zone: &[ZoneRecord] = if fixed {
        FIXED_ZONE.get_or_init(|| read_zone(zone_path))
    } else {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
            let _ = writeln!(
                f,
                "{} {}",
                q.name().to_ascii().trim_end_matches('.'),
                q.query_type()
            );
        }
        reread = read_zone(zone_path);
        &reread
    };
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(q.clone());
    let mut name = q.name().clone();
    let mut found_name = false;
    // Follow CNAMEs inside the zone, as a recursive resolver would hand back.
    for _ in 0..8 {
        let mut next = None;
        // `*.suffix` answers every name below the suffix.
        let matching = |r: &&ZoneRecord| {
            r.name == name
                || (r.name.is_wildcard()
                    && name != r.name.base_name()
                    && r.name.base_name().zone_of(&name))
        };
        for r in zone.iter().filter(matching) {
            found_name = true;
            let rdata = match r.rtype {
                RecordType::A if q.query_type() == RecordType::A => {
                    for ip in a_values(&r.value) {
                        response.add_answer(Record::from_rdata(
                            name.clone(),
                            r.ttl,
                            RData::A(rdata::A(ip)),
                        ));
                    }
                    continue;
                }
                RecordType::AAAA if q.query_type() == RecordType::AAAA => {
                    RData::AAAA(rdata::AAAA(r.value.parse().ok()?))
                }
                RecordType::CNAME => {
                    let target = Name::from_ascii(format!("{}.", r.value)).ok()?;
                    next = Some(target.clone());
                    RData::CNAME(rdata::CNAME(target))
                }
                _ => continue,
            };
            response.add_answer(Record::from_rdata(r.name.clone(), r.ttl, rdata));
        }
        match next {
            Some(n) => name = n,
            None => break,
        }
    }
    if !found_name {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    let full = response.to_vec().ok()?;
    // Plain DNS over UDP carries 512 bytes: a longer answer is truncated
    // and the client must ask again over TCP.
    if udp && full.len() > 512 {
        response.answers.clear();
        response.metadata.truncation = true;
        return response.to_vec().ok();
    }
    Some(full)
}

fn dns(args: &[String]) -> ExitCode {
    let [addr, zone, log] = args else {
        eprintln!("usage: egret-testkit dns ADDR ZONE LOG");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = addr.parse().expect("dns listen address");
    let (zone, log) = (PathBuf::from(zone), PathBuf::from(log));
    let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
    let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
    {
        let (zone, log) = (zone.clone(), log.clone());
        std::thread::spawn(move || {
            for mut stream in tcp.incoming().flatten() {
                let (zone, log) = (zone.clone(), log.clone());
                std::thread::spawn(move || {
                    let mut len = [0u8; 2];
                    while stream.read_exact(&mut len).is_ok() {
                        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut q).is_err() {
                            break;
                        }
                        let Some(r) = answer(&q, &zone, &log, false) else {
                            break;
                        };
                        let mut framed = (r.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&r);
                        if stream.write_all(&framed).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut buf = [0u8; 4096];
    while let Ok((n, peer)) = udp.recv_from(&mut buf) {
        if let Some(r) = answer(&buf[..n], &zone, &log, true) {
            let _ = udp.send_to(&r, peer);
        }
    }
    ExitCode::SUCCESS
}

#[derive(serde::Serialize, Default)]
struct Outcome {
    action: String,
    result: &'static str,
    errno: Option<i32>,
    error: Option<String>,
    banner: Option<String>,
    pid: u32,
    elapsed_ns: Option<u64>,
    count: Option<u64>,
    oks: Option<u64>,
    eperms: Option<u64>,
    others: Option<u64>,
    /// DNS actions: the response code, the addresses answered, and where
    /// the reply came from as the job's socket reports it.
    rcode: Option<String>,
    answers: Option<Vec<String>>,
    peer: Option<String>,
    /// Load actions: latency percentiles and replies per second.
    p50_ns: Option<u64>,
    p99_ns: Option<u64>,
    qps: Option<u64>,
}

fn failure(action: &str, e: &std::io::Error) -> Outcome {
    Outcome {
        action: action.to_owned(),
        result: "error",
        errno: e.raw_os_error(),
        error: Some(e.to_string()),
        pid: std::process::id(),
        ..Default::default()
    }
}

fn success(action: &str) -> Outcome {
    Outcome {
        action: action.to_owned(),
        result: "ok",
        pid: std::process::id(),
        ..Default::default()
    }
}

const TIMEOUT: Duration = Duration::from_secs(3);

fn unspecified_for(dst: &SocketAddr) -> SocketAddr {
    if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("v4")
    } else {
        "[::]:0".parse().expect("v6")
    }
}

/// How a DNS action reaches its resolver: `udp` (sendto/recvfrom, as an
/// unconnected stub does), `udpc` (connect, send, recv, as glibc does) or
/// `tcp`, each `@` a socket address.
struct Via {
    how: String,
    server: SocketAddr,
}

fn parse_via(via: &str) -> Via {
    let (how, server) = via.split_once('@').expect("VIA is udp|udpc|tcp@ADDR:PORT");
    Via {
        how: how.to_owned(),
        server: server
            .parse()
            .unwrap_or_else(|e| panic!("resolver {server}: {e}")),
    }
}

struct DnsReply {
    rcode: ResponseCode,
    answers: Vec<std::net::IpAddr>,
    peer: SocketAddr,
    truncated: bool,
}

/// One stub-resolver exchange. A UDP reply from any address other than the
/// one asked is ignored, as real stub resolvers do.
fn dns_exchange(name: &str, rtype: RecordType, via: &Via) -> std::io::Result<DnsReply> {
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
fn resolve(name: &str, rtype: RecordType, via: &Via) -> std::io::Result<DnsReply> {
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
fn query_bytes(id: u16, name: &str, rtype: RecordType) -> std::io::Result<Vec<u8>> {
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
fn dns_load(
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

fn dns_flood(until: Instant, name: &str, server: SocketAddr) -> u64 {
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
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn record_type(t: &str) -> RecordType {
    match t {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "TXT" => RecordType::TXT,
        other => panic!("record type {other}"),
    }
}

fn dns_outcome(action: &str, reply: &DnsReply) -> Outcome {
    let mut o = success(action);
    o.rcode = Some(format!("{:?}", reply.rcode));
    o.answers = Some(reply.answers.iter().map(|a| a.to_string()).collect());
    o.peer = Some(reply.peer.to_string());
    o
}

fn run_action(action: &str) -> Outcome {
    let (kind, rest) = action.split_once(':').unwrap_or((action, ""));
    let parse =
        |s: &str| -> SocketAddr { s.parse().unwrap_or_else(|e| panic!("address {s}: {e}")) };
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
        // Connect, read the server's banner line.
        "tcp" => match TcpStream::connect_timeout(&parse(rest), TIMEOUT) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let mut line = String::new();
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line);
                let mut o = success(action);
                o.banner = Some(line.trim().to_owned());
                o
            }
            Err(e) => failure(action, &e),
        },
        // Unconnected UDP: sendto without connect().
        "udp-sendto" => {
            let dst = parse(rest);
            let sock = UdpSocket::bind(unspecified_for(&dst)).expect("bind udp");
            match sock.send_to(b"egret-probe", dst) {
                Ok(_) => {
                    let _ = sock.set_read_timeout(Some(TIMEOUT));
                    let mut buf = [0u8; 64];
                    let mut o = success(action);
                    if let Ok((n, _)) = sock.recv_from(&mut buf) {
                        o.banner = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                    o
                }
                Err(e) => failure(action, &e),
            }
        }
        // Connected UDP: connect(), then send().
        "udp-connect" => {
            let dst = parse(rest);
            let sock = UdpSocket::bind(unspecified_for(&dst)).expect("bind udp");
            match sock.connect(dst).and_then(|()| sock.send(b"egret-probe")) {
                Ok(_) => success(action),
                Err(e) => failure(action, &e),
            }
        }
        // N connects in a loop: connect-loop:ADDR:PORT:N (v6 in brackets).
        "connect-loop" => {
            let (addr, n) = rest.rsplit_once(':').expect("connect-loop:ADDR:N");
            let dst = parse(addr);
            let n: u64 = n.parse().expect("count");
            let start = Instant::now();
            for i in 0..n {
                match TcpStream::connect_timeout(&dst, TIMEOUT) {
                    Ok(s) => close_without_time_wait(&s),
                    Err(e) => {
                        let mut o = failure(action, &e);
                        o.count = Some(i);
                        return o;
                    }
                }
            }
            let mut o = success(action);
            o.elapsed_ns = Some(start.elapsed().as_nanos() as u64);
            o.count = Some(n);
            o
        }
        // Connect over and over for a while: hammer:ADDR:PORT:MS. Counts how
        // many attempts succeeded, got EPERM, or failed otherwise.
        "hammer" => {
            let (addr, ms) = rest.rsplit_once(':').expect("hammer:ADDR:MS");
            let dst = parse(addr);
            let until = Instant::now() + Duration::from_millis(ms.parse().expect("ms"));
            let (mut oks, mut eperms, mut others) = (0, 0, 0);
            while Instant::now() < until {
                match TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
                    Ok(_) => oks += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperms += 1,
                    Err(_) => others += 1,
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let mut o = success(action);
            (o.oks, o.eperms, o.others) = (Some(oks), Some(eperms), Some(others));
            o
        }
        // Connect, wait, then prove the connection still carries data:
        // tcp-hold:ADDR:PORT:MS.
        "tcp-hold" => {
            let (addr, ms) = rest.rsplit_once(':').expect("tcp-hold:ADDR:MS");
            let mut stream = match TcpStream::connect_timeout(&parse(addr), TIMEOUT) {
                Ok(s) => s,
                Err(e) => return failure(action, &e),
            };
            let _ = stream.set_read_timeout(Some(TIMEOUT));
            let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
            let mut banner = String::new();
            let _ = std::io::BufRead::read_line(&mut reader, &mut banner);
            std::thread::sleep(Duration::from_millis(ms.parse().expect("ms")));
            let mut echo = String::new();
            match stream
                .write_all(b"still here\n")
                .and_then(|()| std::io::BufRead::read_line(&mut reader, &mut echo))
            {
                Ok(n) if n > 0 => {
                    let mut o = success(action);
                    o.banner = Some(echo.trim().to_owned());
                    o
                }
                Ok(_) => failure(action, &std::io::Error::other("connection closed")),
                Err(e) => failure(action, &e),
            }
        }
        // Connect in a tight loop until refused: until-eperm:ADDR:PORT:MS.
        // Reports the CLOCK_MONOTONIC time of the first EPERM.
        "until-eperm" => {
            let (addr, ms) = rest.rsplit_once(':').expect("until-eperm:ADDR:MS");
            let dst = parse(addr);
            let until = Instant::now() + Duration::from_millis(ms.parse().expect("ms"));
            let mut attempts = 0;
            // A connect in flight when the lockdown lands has its handshake
            // dropped by the packet check and times out; in the test world a
            // handshake takes well under a millisecond, so a short timeout
            // tells that apart, and the next attempt meets the EPERM.
            let mut cut = 0;
            while Instant::now() < until {
                attempts += 1;
                match TcpStream::connect_timeout(&dst, Duration::from_millis(100)) {
                    Ok(s) => close_without_time_wait(&s),
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        let mut o = success(action);
                        o.elapsed_ns = Some(monotonic_ns());
                        o.count = Some(attempts);
                        o.others = Some(cut);
                        return o;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => cut += 1,
                    Err(e) => return failure(action, &e),
                }
            }
            failure(action, &std::io::Error::other("never refused"))
        }
        // Socket kinds no connect hook sees: create one and, when that works,
        // send something to ADDR with it. raw-icmp:IP, raw-udp:IP, ping:IP,
        // sctp:IP:PORT, mptcp:IP:PORT, packet.
        "raw-icmp" | "raw-udp" | "ping" | "sctp" | "mptcp" | "packet" => {
            socket_kind(action, kind, rest)
        }
        // Listen on ADDR for a while, answering with a banner: listen:ADDR:MS.
        "listen" => {
            let (addr, ms) = rest.rsplit_once(':').expect("listen:ADDR:MS");
            let listener = match TcpListener::bind(parse(addr)) {
                Ok(l) => l,
                Err(e) => return failure(action, &e),
            };
            listener.set_nonblocking(true).expect("nonblocking");
            let until = Instant::now() + Duration::from_millis(ms.parse().expect("ms"));
            let mut served = 0;
            while Instant::now() < until {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"job listener\n");
                        served += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            let mut o = success(action);
            o.count = Some(served);
            o
        }
        // Listen on loopback and connect to it from the same process:
        // self-loopback:ADDR (port 0 for any).
        "self-loopback" => {
            let listener = match TcpListener::bind(parse(rest)) {
                Ok(l) => l,
                Err(e) => return failure(action, &e),
            };
            let local = listener.local_addr().expect("local addr");
            match TcpStream::connect_timeout(&local, TIMEOUT) {
                Ok(_) => success(action),
                Err(e) => failure(action, &e),
            }
        }
        // TCP Fast Open: sendto(MSG_FASTOPEN) connects and sends in one call.
        "tfo" => raw_connect(action, parse(rest), Connect::FastOpen),
        // io_uring IORING_OP_CONNECT.
        "uring-connect" => raw_connect(action, parse(rest), Connect::Uring),
        // IPv6 link-local with a scope: link-local:IFNAME:PORT to fe80::1%IFNAME.
        "link-local" => {
            let (ifname, port) = rest.split_once(':').expect("link-local:IFNAME:PORT");
            let name = std::ffi::CString::new(ifname).expect("ifname");
            // SAFETY: a valid NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(index, 0, "no interface {ifname}");
            let dst = SocketAddr::V6(std::net::SocketAddrV6::new(
                "fe80::1".parse().expect("v6"),
                port.parse().expect("port"),
                0,
                index,
            ));
            match TcpStream::connect_timeout(&dst, TIMEOUT) {
                Ok(_) => success(action),
                Err(e) => failure(action, &e),
            }
        }
        // A socket created before this process moved into a cgroup:
        // premove:ADDR:/path/to/cgroup.procs. Reports the connect of that old
        // socket; `count` is 1 when a socket made after the move was refused.
        "premove" => {
            let (addr, procs) = rest.split_once(",").expect("premove:ADDR,PROCS");
            let dst = parse(addr);
            let old = socket2::Socket::new(
                socket2::Domain::for_address(dst),
                socket2::Type::STREAM,
                None,
            )
            .expect("socket");
            std::fs::write(procs, "0").expect("move into the cgroup");
            let fresh = TcpStream::connect_timeout(&dst, TIMEOUT);
            let mut o = match old.connect_timeout(&dst.into(), TIMEOUT) {
                Ok(()) => success(action),
                Err(e) => failure(action, &e),
            };
            o.count = Some(u64::from(
                fresh.is_err_and(|e| e.raw_os_error() == Some(libc::EPERM)),
            ));
            o
        }
        // Move this process to another cgroup: escape:/path/to/cgroup.procs
        "escape" => match std::fs::write(rest, "0") {
            Ok(()) => success(action),
            Err(e) => failure(action, &e),
        },
        // Send MB megabytes over one TCP connection: bulk:ADDR:PORT:MB.
        "bulk" => {
            let (addr, mb) = rest.rsplit_once(':').expect("bulk:ADDR:MB");
            let mb: u64 = mb.parse().expect("MB");
            let mut stream = match TcpStream::connect_timeout(&parse(addr), TIMEOUT) {
                Ok(s) => s,
                Err(e) => return failure(action, &e),
            };
            let chunk = vec![0x5au8; 1 << 20];
            let start = Instant::now();
            for _ in 0..mb {
                if let Err(e) = stream.write_all(&chunk) {
                    return failure(action, &e);
                }
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut o = success(action);
            o.elapsed_ns = Some(start.elapsed().as_nanos() as u64);
            o.count = Some(mb);
            o
        }
        "sleep" => {
            std::thread::sleep(Duration::from_millis(rest.parse().expect("ms")));
            success(action)
        }
        other => panic!("unknown action {other}"),
    }
}

/// SO_LINGER 0: close with RST, so thousands of connects do not exhaust the
/// ephemeral ports with TIME_WAIT sockets.
fn close_without_time_wait(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

enum Connect {
    FastOpen,
    Uring,
}

/// Connects a TCP socket by a path other than connect(2).
fn raw_connect(action: &str, dst: SocketAddr, how: Connect) -> Outcome {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    let addr = socket2::SockAddr::from(dst);
    use std::os::fd::AsRawFd as _;
    let fd = socket.as_raw_fd();
    let result = match how {
        Connect::FastOpen => {
            // SAFETY: a valid socket, buffer and address.
            let n = unsafe {
                libc::sendto(
                    fd,
                    b"egret".as_ptr().cast(),
                    5,
                    libc::MSG_FASTOPEN,
                    addr.as_ptr().cast(),
                    addr.len(),
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        Connect::Uring => {
            let mut ring = io_uring::IoUring::new(4).expect("io_uring");
            let sqe = io_uring::opcode::Connect::new(
                io_uring::types::Fd(fd),
                addr.as_ptr().cast(),
                addr.len(),
            )
            .build();
            // SAFETY: the address outlives the submission, which we wait for.
            unsafe { ring.submission().push(&sqe).expect("queue") };
            ring.submit_and_wait(1).expect("submit");
            let res = ring.completion().next().expect("completion").result();
            if res < 0 {
                Err(std::io::Error::from_raw_os_error(-res))
            } else {
                Ok(())
            }
        }
    };
    match result {
        Ok(()) => success(action),
        Err(e) => failure(action, &e),
    }
}

fn os_error(action: &str) -> Outcome {
    failure(action, &std::io::Error::last_os_error())
}

fn socket_kind(action: &str, kind: &str, rest: &str) -> Outcome {
    // SAFETY: plain socket syscalls on values built here; every fd is closed.
    unsafe {
        let (domain, ty, proto) = match kind {
            "raw-icmp" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
            "raw-udp" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP),
            "ping" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
            "sctp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
            "mptcp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP),
            _ => (
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            ),
        };
        let fd = libc::socket(domain, ty, proto);
        if fd < 0 {
            return os_error(action);
        }
        let close = || libc::close(fd);
        if kind == "packet" {
            close();
            return success(action);
        }
        let (ip, port) = match rest.rsplit_once(':') {
            Some((ip, port)) if kind == "sctp" || kind == "mptcp" => {
                (ip, port.parse::<u16>().expect("port"))
            }
            _ => (rest, 0),
        };
        let ip: std::net::Ipv4Addr = ip.parse().expect("IPv4 address");
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let addr = (&raw const sin).cast::<libc::sockaddr>();
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = match kind {
            "sctp" | "mptcp" => libc::connect(fd, addr, len),
            _ => {
                // An ICMP echo request (type 8), or for raw UDP a bare UDP header
                // to port 53: what an exfiltration tool would craft.
                let packet: [u8; 8] = if kind == "raw-udp" {
                    [0x30, 0x39, 0, 53, 0, 8, 0, 0]
                } else {
                    [8, 0, 0xf7, 0xff, 0, 0, 0, 0]
                };
                let n = libc::sendto(fd, packet.as_ptr().cast(), packet.len(), 0, addr, len);
                if n < 0 { -1 } else { 0 }
            }
        };
        let outcome = if rc == 0 {
            success(action)
        } else {
            os_error(action)
        };
        close();
        outcome
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn job(actions: &[String]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    for a in actions {
        let o = run_action(a);
        let _ = writeln!(out, "{}", serde_json::to_string(&o).expect("json"));
        let _ = out.flush();
    }
    ExitCode::SUCCESS
}
