//! The fixture servers of the test world's "internet": TCP, UDP and sink
//! listeners, and the authoritative DNS fixture.

use super::*;

pub(crate) fn serve(specs: &[String]) -> ExitCode {
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
            "udp-discard" => {
                let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while sock.recv_from(&mut buf).is_ok() {}
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
pub(crate) fn deep_listener(addr: SocketAddr) -> TcpListener {
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

pub(crate) struct ZoneRecord {
    pub(crate) name: Name,
    pub(crate) rtype: RecordType,
    pub(crate) value: String,
    pub(crate) ttl: u32,
}

pub(crate) fn read_zone(path: &PathBuf) -> Vec<ZoneRecord> {
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
pub(crate) fn a_values(value: &str) -> Vec<std::net::Ipv4Addr> {
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

pub(crate) fn answer(
    query: &[u8],
    zone_path: &PathBuf,
    log: &PathBuf,
    udp: bool,
) -> Option<Vec<u8>> {
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

pub(crate) fn dns(args: &[String]) -> ExitCode {
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
