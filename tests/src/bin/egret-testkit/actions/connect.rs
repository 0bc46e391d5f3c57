//! TCP and UDP from a job: single connects and sends, loops, held
//! connections and bulk transfers.

use super::super::*;

/// The actions this module performs.
pub const KINDS: &[&str] = &[
    "tcp",
    "tcp-host",
    "udp-sendto",
    "udp-cmsg",
    "udp-connect",
    "connect-loop",
    "connect-rounds",
    "sendto-loop",
    "hammer",
    "tcp-from",
    "deny-flood",
    "tcp-hold",
    "until-eperm",
    "tcp-wait",
    "udp-reuse-wait",
    "lockdown-probe",
    "bulk",
];

/// The outcome of `action` when it is one of [`KINDS`].
pub fn run(action: &str, kind: &str, rest: &str) -> Option<Outcome> {
    KINDS.contains(&kind).then(|| act(action, kind, rest))
}

/// A connect's outcome, with the first line the server sent.
fn banner(action: &str, connected: std::io::Result<TcpStream>) -> Outcome {
    match connected {
        Ok(s) => {
            let _ = s.set_read_timeout(Some(TIMEOUT));
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line);
            let mut o = success(action);
            o.banner = Some(line.trim().to_owned());
            o
        }
        Err(e) => failure(action, &e),
    }
}

fn act(action: &str, kind: &str, rest: &str) -> Outcome {
    match kind {
        // Connect, read the server's banner line.
        "tcp" => banner(action, TcpStream::connect_timeout(&parse(rest), TIMEOUT)),
        // A name resolved as any program resolves it (getaddrinfo:
        // /etc/hosts, then the resolver in /etc/resolv.conf), then as
        // `tcp`: tcp-host:NAME:PORT. `answers` lists what it resolved to.
        "tcp-host" => {
            use std::net::ToSocketAddrs as _;
            let (name, port) = rest.rsplit_once(':').expect("tcp-host:NAME:PORT");
            let port: u16 = port.parse().expect("port");
            let addrs: Vec<SocketAddr> = match (name, port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => return failure(action, &e),
            };
            let Some(first) = addrs.first() else {
                return failure(action, &std::io::Error::other("no address"));
            };
            let mut o = banner(action, TcpStream::connect_timeout(first, TIMEOUT));
            o.answers = Some(addrs.iter().map(|a| a.ip().to_string()).collect());
            o
        }
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
        // Connect, then send with a control message (IP_TOS, or
        // IPV6_TCLASS), as ECN-aware software does; the echo is the banner.
        "udp-cmsg" => udp_with_cmsg(action, parse(rest)),
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
            timed_loop(action, n.parse().expect("count"), || short_connection(&dst))
        }
        // A benchmark's worker: for each line on stdin, N connects as in
        // connect-loop, each round's outcome on a line of its own, until
        // stdin closes: connect-rounds:ADDR:PORT:N. One warm process per
        // side lets a benchmark alternate its sides in short turns without
        // a process start between them.
        "connect-rounds" => {
            let (addr, n) = rest.rsplit_once(':').expect("connect-rounds:ADDR:N");
            let (dst, n) = (parse(addr), n.parse().expect("count"));
            let mut out = std::io::stdout().lock();
            let mut rounds = 0;
            for _ in std::io::stdin().lines().map_while(Result::ok) {
                let o = timed_loop(action, n, || short_connection(&dst));
                let _ = writeln!(out, "{}", serde_json::to_string(&o).expect("json"));
                let _ = out.flush();
                rounds += 1;
            }
            let mut o = success(action);
            o.count = Some(rounds);
            o
        }
        // N datagrams from one unconnected socket: sendto-loop:ADDR:PORT:N.
        "sendto-loop" => {
            let (addr, n) = rest.rsplit_once(':').expect("sendto-loop:ADDR:N");
            let dst = parse(addr);
            let sock = UdpSocket::bind(unspecified_for(&dst)).expect("bind udp");
            timed_loop(action, n.parse().expect("count"), || {
                sock.send_to(b"egret-bench", dst).map(drop)
            })
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
        // A TCP connect from a given source address (one the namespace
        // holds): tcp-from:SRC@DST. The banner names the server reached.
        "tcp-from" => {
            let (src, dst) = rest.split_once('@').expect("tcp-from:SRC@DST");
            let (src, dst): (std::net::IpAddr, SocketAddr) =
                (src.parse().expect("source"), parse(dst));
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(dst),
                socket2::Type::STREAM,
                None,
            )
            .expect("socket");
            let connected = sock
                .bind(&SocketAddr::new(src, 0).into())
                .and_then(|()| sock.connect_timeout(&dst.into(), TIMEOUT));
            match connected {
                Ok(()) => {
                    let stream: TcpStream = sock.into();
                    let _ = stream.set_read_timeout(Some(TIMEOUT));
                    let mut banner = String::new();
                    let _ = std::io::BufRead::read_line(
                        &mut std::io::BufReader::new(&stream),
                        &mut banner,
                    );
                    let mut o = success(action);
                    o.banner = Some(banner.trim().to_owned()).filter(|b| !b.is_empty());
                    o
                }
                Err(e) => failure(action, &e),
            }
        }
        // A flood of denied sends, as fast as one socket goes:
        // deny-flood:ADDR:PORT:MS. Counts the EPERMs.
        "deny-flood" => {
            let (addr, ms) = rest.rsplit_once(':').expect("deny-flood:ADDR:MS");
            let dst = parse(addr);
            let sock = UdpSocket::bind(unspecified_for(&dst)).expect("bind udp");
            let until = Instant::now() + Duration::from_millis(ms.parse().expect("ms"));
            let (mut eperms, mut others) = (0u64, 0u64);
            while Instant::now() < until {
                for _ in 0..1000 {
                    match sock.send_to(b"x", dst) {
                        Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperms += 1,
                        _ => others += 1,
                    }
                }
            }
            let mut o = success(action);
            (o.eperms, o.others) = (Some(eperms), Some(others));
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
            let mut outcome = match stream
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
            };
            // A failure after connecting names the banner it got first.
            if outcome.result != "ok" {
                outcome.banner = Some(banner.trim().to_owned());
            }
            outcome
        }
        // Connect, read the banner, then wait for more: tcp-wait:ADDR:PORT:MS.
        // The errno is what ended the wait (EAGAIN: nothing came in MS),
        // or the banner's read if that failed first; `elapsed_ns` is the
        // CLOCK_MONOTONIC time it ended.
        "tcp-wait" => {
            let (addr, ms) = rest.rsplit_once(':').expect("tcp-wait:ADDR:MS");
            let stream = match TcpStream::connect_timeout(&parse(addr), TIMEOUT) {
                Ok(s) => s,
                Err(e) => return failure(action, &e),
            };
            let mut reader = std::io::BufReader::new(stream);
            let mut banner = String::new();
            let _ = reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_millis(ms.parse().expect("ms"))));
            let mut more = String::new();
            let mut o = match std::io::BufRead::read_line(&mut reader, &mut banner)
                .and_then(|_| std::io::BufRead::read_line(&mut reader, &mut more))
            {
                Ok(_) => failure(action, &std::io::Error::other("the connection went on")),
                Err(e) => failure(action, &e),
            };
            o.banner = Some(banner.trim().to_owned());
            o.elapsed_ns = Some(monotonic_ns());
            o
        }
        // Two UDP sockets on one address (SO_REUSEPORT), each blocked
        // reading for MS: udp-reuse-wait:ADDR:PORT:MS. `count` is how many
        // reads ECONNABORTED ended; `errno` what ended the first.
        "udp-reuse-wait" => {
            let (addr, ms) = rest.rsplit_once(':').expect("udp-reuse-wait:ADDR:MS");
            let at = parse(addr);
            let wait = Duration::from_millis(ms.parse().expect("ms"));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let sock = socket2::Socket::new(
                        socket2::Domain::for_address(at),
                        socket2::Type::DGRAM,
                        None,
                    )
                    .expect("udp socket");
                    sock.set_reuse_port(true).expect("SO_REUSEPORT");
                    sock.bind(&at.into()).expect("bind");
                    let sock = UdpSocket::from(sock);
                    sock.set_read_timeout(Some(wait)).expect("timeout");
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64];
                        sock.recv(&mut buf).err().and_then(|e| e.raw_os_error())
                    })
                })
                .collect();
            let errnos: Vec<Option<i32>> = readers
                .into_iter()
                .map(|r| r.join().expect("reader"))
                .collect();
            let mut o = success(action);
            o.errno = errnos[0];
            o.count = Some(
                errnos
                    .iter()
                    .filter(|e| **e == Some(libc::ECONNABORTED))
                    .count() as u64,
            );
            o
        }
        // What a lockdown ends, measured from the job: a connection held
        // open to HELD (blocked reading) and connects to LOOP in a tight
        // loop, for MS at most: lockdown-probe:HELD,LOOP:MS. `elapsed_ns` is
        // the CLOCK_MONOTONIC time by which both had seen an error; `others`
        // counts connects that timed out instead (a handshake cut).
        "lockdown-probe" => {
            let (addrs, ms) = rest.rsplit_once(':').expect("lockdown-probe:HELD,LOOP:MS");
            let (held_at, dst) = addrs.split_once(',').expect("HELD,LOOP");
            let dst = parse(dst);
            let ms: u64 = ms.parse().expect("ms");
            let held = match TcpStream::connect_timeout(&parse(held_at), TIMEOUT) {
                Ok(s) => s,
                Err(e) => return failure(action, &e),
            };
            let _ = held.set_read_timeout(Some(Duration::from_millis(ms)));
            let reader = std::thread::spawn(move || {
                let mut held = held;
                let mut buf = [0u8; 256];
                loop {
                    match std::io::Read::read(&mut held, &mut buf) {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => return (monotonic_ns(), None),
                        Err(e) => return (monotonic_ns(), e.raw_os_error()),
                    }
                }
            });
            let until = Instant::now() + Duration::from_millis(ms);
            let (mut attempts, mut cut) = (0, 0);
            let mut refused_at = None;
            while Instant::now() < until {
                attempts += 1;
                match TcpStream::connect_timeout(&dst, Duration::from_millis(100)) {
                    Ok(s) => close_without_time_wait(&s),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => cut += 1,
                    Err(_) => {
                        refused_at = Some(monotonic_ns());
                        break;
                    }
                }
            }
            let (held_ended, held_errno) = reader.join().expect("reader");
            let Some(refused_at) = refused_at else {
                return failure(action, &std::io::Error::other("never refused"));
            };
            let mut o = success(action);
            o.elapsed_ns = Some(refused_at.max(held_ended));
            o.errno = held_errno;
            o.count = Some(attempts);
            o.others = Some(cut);
            o
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
        other => panic!("unknown action {other}"),
    }
}

/// `step` done `n` times, timed; the first failure ends it, with how many
/// went through before.
/// A benchmark's unit of work: connect, then close with a reset, leaving
/// no TIME_WAIT behind to fill the port range.
fn short_connection(dst: &SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(dst, TIMEOUT).map(|s| close_without_time_wait(&s))
}

fn timed_loop(action: &str, n: u64, mut step: impl FnMut() -> std::io::Result<()>) -> Outcome {
    let cpu = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .expect("thread CPU clock")
    };
    let cpu_start = cpu();
    let start = Instant::now();
    for i in 0..n {
        if let Err(e) = step() {
            let mut o = failure(action, &e);
            o.count = Some(i);
            return o;
        }
    }
    let mut o = success(action);
    o.elapsed_ns = Some(start.elapsed().as_nanos() as u64);
    o.cpu_ns = Some(cpu() - cpu_start);
    o.count = Some(n);
    o
}

fn udp_with_cmsg(action: &str, dst: SocketAddr) -> Outcome {
    use std::os::fd::AsRawFd as _;
    let sock = UdpSocket::bind(unspecified_for(&dst)).expect("bind udp");
    if let Err(e) = sock.connect(dst) {
        return failure(action, &e);
    }
    let (level, kind) = if dst.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_TOS)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
    };
    let payload = b"egret-probe";
    // SAFETY: one control message of one int, in a buffer sized and
    // aligned for it by the CMSG macros; every pointer outlives the call.
    let sent = unsafe {
        let space = libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
        // ECT(0): what ECN-capable transports mark.
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), 0x02);
        libc::sendmsg(sock.as_raw_fd(), &raw const msg, 0)
    };
    if sent < 0 {
        return failure(action, &std::io::Error::last_os_error());
    }
    let _ = sock.set_read_timeout(Some(TIMEOUT));
    let mut buf = [0u8; 64];
    match sock.recv(&mut buf) {
        Ok(n) => {
            let mut o = success(action);
            o.banner = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            o
        }
        Err(e) => failure(action, &e),
    }
}
