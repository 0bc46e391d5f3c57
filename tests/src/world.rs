//! The namespaces, links, addresses and fixture servers of the test world.
//!
//! ```text
//!  host (agent, jobs)                internet (fixtures on lo)
//!  192.0.2.2/24  2001:db8:ffff::2 ─── 192.0.2.1  2001:db8:ffff::1
//!  10.0.0.1/24 ─── neighbour 10.0.0.5
//! ```

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::netns::{self, Netns};

pub const GITLAB: &str = "203.0.113.10";
pub const REGISTRY: &str = "203.0.113.20";
pub const DNS: &str = "203.0.113.53";
pub const ATTACKER: &str = "198.51.100.66";
pub const METADATA: &str = "169.254.169.254";
pub const METADATA6: &str = "fd00:ec2::254";
pub const GITLAB6: &str = "2001:db8::10";
pub const NEIGHBOUR: &str = "10.0.0.5";
/// A stand-in for a public DNS-over-HTTPS resolver (Cloudflare's address,
/// here inside the test's own internet namespace).
pub const DOH_RESOLVER: &str = "1.1.1.1";
/// Where jobs in a container namespace reach the host (see
/// [`World::container`]).
pub const CONTAINER_GATEWAY: &str = "172.30.0.1";
/// A listener that accepts and closes at once, for connect benchmarks.
pub const BENCH_SINK: &str = "203.0.113.10:9000";
/// A listener that reads and discards, for throughput benchmarks.
pub const BENCH_DISCARD: &str = "203.0.113.10:9001";
/// A UDP port that reads and discards, for datagram benchmarks.
pub const BENCH_UDP: &str = "203.0.113.10:9002";

/// Addresses the internet namespace carries on its loopback.
const INTERNET_V4: &[&str] = &[
    GITLAB,
    "203.0.113.11",
    REGISTRY,
    "203.0.113.21",
    "203.0.113.22",
    DNS,
    ATTACKER,
    METADATA,
    DOH_RESOLVER,
];
const INTERNET_V6: &[&str] = &[
    METADATA6,
    GITLAB6,
    "2001:db8::20",
    "2001:db8::66",
    // Where a NAT64 gateway would answer for the metadata service and the
    // neighbour, behind the local-use prefix (RFC 8215, /96 layout) and an
    // operator's own (2001:db8:64::/96): stand-ins that prove a job outside
    // egret reaches them.
    "64:ff9b:1::a9fe:a9fe",
    "64:ff9b:1::a00:5",
    "64:ff9b:1:1::a9fe:a9fe",
    "2001:db8:64::a9fe:a9fe",
];

/// TCP listeners in the internet namespace; each answers with a banner line
/// naming itself, so a test knows which server it reached.
const INTERNET_TCP: &[&str] = &[
    "203.0.113.10:443",
    "203.0.113.10:22",
    "203.0.113.10:80",
    "203.0.113.11:443",
    "203.0.113.20:443",
    "203.0.113.21:443",
    "203.0.113.22:443",
    "198.51.100.66:443",
    "198.51.100.66:80",
    "169.254.169.254:80",
    "[fd00:ec2::254]:80",
    "[2001:db8::10]:443",
    "[2001:db8::20]:443",
    "[2001:db8::66]:443",
    "1.1.1.1:443",
    "198.51.100.66:853",
    "[64:ff9b:1::a9fe:a9fe]:80",
    "[64:ff9b:1::a00:5]:22",
    "[64:ff9b:1:1::a9fe:a9fe]:80",
    "[2001:db8:64::a9fe:a9fe]:80",
];
const INTERNET_UDP: &[&str] = &[
    "198.51.100.66:53",
    "198.51.100.66:443",
    "203.0.113.10:443",
    "[2001:db8::10]:443",
];
const NEIGHBOUR_TCP: &[&str] = &["10.0.0.5:22", "10.0.0.5:80"];

pub struct World {
    pub host: Netns,
    pub internet: Netns,
    pub neighbour: Netns,
    pub dir: PathBuf,
    pub dns_log: PathBuf,
    pub dns_zone: PathBuf,
    tag: String,
    containers: Vec<Netns>,
    fixtures: Vec<Child>,
}

/// Default zone served by the DNS fixture: `name type value ttl`.
pub const ZONE: &str = "\
gitlab.test A 203.0.113.10 60
files.pkg.test A 203.0.113.22 60
gitlab.test AAAA 2001:db8::10 60
registry.test A 203.0.113.20 60
registry.test A 203.0.113.21 60
attacker.test A 198.51.100.66 60
cdn.test A 203.0.113.128-203.0.113.254 1
alias.test CNAME edge.cdn-provider.test 30
edge.cdn-provider.test A 203.0.113.21 60
big.test A 203.0.113.160+40 60
rebind.test A 10.0.0.5 60
meta.test A 169.254.169.254 60
mixed.test A 203.0.113.21 60
mixed.test A 10.0.0.5 60
*.bench.test A 203.0.113.30 60
";

/// Every address of this block answers in the internet namespace, on
/// [`CDN_PORT`]: the rotating CDN of the zone.
pub const CDN_BLOCK: &str = "203.0.113.128/25";
pub const CDN_PORT: u16 = 8443;

impl World {
    /// Builds the world. The calling thread is moved into a fresh namespace
    /// of its own first.
    pub fn new() -> Self {
        sweep_stale();
        netns::isolate_this_thread();
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "egt{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("egret-{tag}"));
        std::fs::create_dir_all(&dir).expect("world temp dir");

        let host = Netns::create(&format!("{tag}-host"));
        let internet = Netns::create(&format!("{tag}-inet"));
        let neighbour = Netns::create(&format!("{tag}-nbr"));

        // Each veth end is created directly inside its namespace, so fixed
        // names never clash between worlds.
        let (h_i, i_h) = ("to-inet", "to-host");
        let (h_n, n_h) = ("to-nbr", "to-host");
        veth(h_i, &host, i_h, &internet);
        veth(h_n, &host, n_h, &neighbour);

        host.ip(&["addr", "add", "192.0.2.2/24", "dev", h_i]);
        host.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:ffff::2/64",
            "dev",
            h_i,
            "nodad",
        ]);
        host.ip(&["addr", "add", "10.0.0.1/24", "dev", h_n]);
        host.ip(&["link", "set", h_i, "up"]);
        host.ip(&["link", "set", h_n, "up"]);
        internet.ip(&["addr", "add", "192.0.2.1/24", "dev", i_h]);
        internet.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:ffff::1/64",
            "dev",
            i_h,
            "nodad",
        ]);
        internet.ip(&["link", "set", i_h, "up"]);
        neighbour.ip(&["addr", "add", "10.0.0.5/24", "dev", n_h]);
        neighbour.ip(&["link", "set", n_h, "up"]);
        host.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        // As systemd sets it on most distributions: anyone may open ping
        // sockets. egret must cope with that.
        netns::run_ip(&[
            "netns",
            "exec",
            &host.name,
            "sh",
            "-c",
            "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range",
        ]);
        host.ip(&["-6", "route", "add", "default", "via", "2001:db8:ffff::1"]);
        for a in INTERNET_V4 {
            internet.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        for a in INTERNET_V6 {
            internet.ip(&["-6", "addr", "add", &format!("{a}/128"), "dev", "lo"]);
        }
        // On loopback a prefix makes every address in it local.
        internet.ip(&["addr", "add", CDN_BLOCK, "dev", "lo"]);

        let dns_log = dir.join("dns-queries.log");
        let dns_zone = dir.join("zone.txt");
        std::fs::write(&dns_zone, ZONE).expect("write zone");
        std::fs::write(&dns_log, "").expect("create dns log");

        let mut world = Self {
            host,
            internet,
            neighbour,
            dir,
            dns_log,
            dns_zone,
            tag,
            containers: Vec::new(),
            fixtures: Vec::new(),
        };
        // Fixtures start only now that every address is in place.
        let mut serve = vec!["serve".to_owned()];
        serve.extend(INTERNET_TCP.iter().map(|a| format!("tcp:{a}")));
        serve.extend(INTERNET_UDP.iter().map(|a| format!("udp:{a}")));
        serve.push(format!("tcp:0.0.0.0:{CDN_PORT}"));
        serve.push(format!("sink:{BENCH_SINK}"));
        serve.push(format!("discard:{BENCH_DISCARD}"));
        serve.push(format!("udp-discard:{BENCH_UDP}"));
        world.start_fixture(Side::Internet, &serve);
        let mut serve = vec!["serve".to_owned()];
        serve.extend(NEIGHBOUR_TCP.iter().map(|a| format!("tcp:{a}")));
        world.start_fixture(Side::Neighbour, &serve);
        let dns = vec![
            "dns".to_owned(),
            format!("{DNS}:53"),
            world.dns_zone.display().to_string(),
            world.dns_log.display().to_string(),
        ];
        world.start_fixture(Side::Internet, &dns);
        world
    }

    /// A network namespace of its own behind the host, as docker gives a
    /// container: a veth to the host ([`CONTAINER_GATEWAY`] on the host
    /// side, 172.30.0.2 inside) and a default route through the host, which
    /// forwards to the internet.
    pub fn container(&mut self) -> &Netns {
        let ns = Netns::create(&format!("{}-ctr{}", self.tag, self.containers.len()));
        veth("to-ctr", &self.host, "eth0", &ns);
        self.host.ip(&[
            "addr",
            "add",
            &format!("{CONTAINER_GATEWAY}/24"),
            "dev",
            "to-ctr",
        ]);
        self.host.ip(&["link", "set", "to-ctr", "up"]);
        ns.ip(&["addr", "add", "172.30.0.2/24", "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", CONTAINER_GATEWAY]);
        self.internet
            .ip(&["route", "add", "172.30.0.0/24", "via", "192.0.2.2"]);
        netns::run_ip(&[
            "netns",
            "exec",
            &self.host.name,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ]);
        self.containers.push(ns);
        self.containers.last().expect("just pushed")
    }

    /// Another host beside [`World::host`], wired to the internet the same
    /// way (its own veth, 198.18.N.2/24 routed through 198.18.N.1; `n`
    /// tells twins apart): where a benchmark loads a netfilter ruleset,
    /// whose conntrack would otherwise tax every side sharing the host's
    /// namespace.
    pub fn twin_host(&self, n: u8) -> Netns {
        let twin = Netns::create(&format!("{}-twin{n}", self.tag));
        let internet_end = format!("to-twin{n}");
        veth("to-inet", &twin, &internet_end, &self.internet);
        twin.ip(&["addr", "add", &format!("198.18.{n}.2/24"), "dev", "to-inet"]);
        twin.ip(&["link", "set", "to-inet", "up"]);
        self.internet.ip(&[
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            &internet_end,
        ]);
        self.internet.ip(&["link", "set", &internet_end, "up"]);
        twin.ip(&["route", "add", "default", "via", &format!("198.18.{n}.1")]);
        twin
    }

    /// A second DNS fixture at `addr` in the internet namespace, serving
    /// the default zone from memory without logging: an upstream fast
    /// enough for benchmarks.
    pub fn start_fast_dns(&mut self, addr: &str) {
        self.internet
            .ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        let zone = self.dir.join("fast-zone.txt");
        std::fs::write(&zone, ZONE).expect("write zone");
        let args = vec![
            "dns".to_owned(),
            format!("{addr}:53"),
            zone.display().to_string(),
            "-".to_owned(),
        ];
        self.start_fixture(Side::Internet, &args);
    }

    /// The `n`th namespace [`World::container`] made.
    pub fn container_ns(&self, n: usize) -> &Netns {
        &self.containers[n]
    }

    /// Servers on the host itself, outside any runner: a host service on
    /// loopback such as a database or a docker API. Stopped with the world.
    pub fn serve_on_host(&mut self, specs: &[&str]) {
        let mut args = vec!["serve".to_owned()];
        args.extend(specs.iter().map(|s| (*s).to_owned()));
        self.start_fixture(Side::Host, &args);
    }

    fn start_fixture(&mut self, side: Side, args: &[String]) {
        let ns = match side {
            Side::Internet => &self.internet,
            Side::Neighbour => &self.neighbour,
            Side::Host => &self.host,
        };
        let mut cmd = Command::new(crate::workspace_bin("egret-testkit"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = ns.spawn(&mut cmd, None);
        wait_ready(child.stdout.take().expect("piped stdout"), args);
        self.fixtures.push(child);
    }

    /// Names the DNS fixture saw queries for, in order.
    pub fn dns_queries(&self) -> Vec<String> {
        std::fs::read_to_string(&self.dns_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn write_zone(&self, zone: &str) {
        let tmp = self.dns_zone.with_extension("new");
        std::fs::write(&tmp, zone).expect("write zone");
        std::fs::rename(&tmp, &self.dns_zone).expect("replace zone");
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Waits until a TCP connection from the host namespace to `remote`
    /// (an IPv4 `ADDR:PORT`) is established, polling the kernel's table.
    pub fn wait_established(&self, remote: &str) {
        self.wait_tcp_state(remote, TCP_ESTABLISHED);
    }

    /// Polls the host namespace's TCP table until a handshake to `remote`
    /// (IPv4 ADDR:PORT) is in flight: SYN_SENT.
    pub fn wait_connecting(&self, remote: &str) {
        self.wait_tcp_state(remote, TCP_SYN_SENT);
    }

    fn wait_tcp_state(&self, remote: &str, state: u8) {
        // The state is the field after both addresses, as its number.
        let needle = format!(" {} {state:02X} ", proc_net_addr(remote));
        self.wait_host_sockets(
            "tcp",
            &format!("no connection to {remote} reached TCP state {state}"),
            move |l| l.contains(&needle),
        );
    }

    /// Polls the host namespace's UDP table until `count` sockets are bound
    /// to `local` (IPv4 ADDR:PORT).
    pub fn wait_udp_bound(&self, local: &str, count: usize) {
        let needle = proc_net_addr(local);
        let mut bound = 0;
        self.wait_host_sockets(
            "udp",
            &format!("{count} UDP sockets were never bound to {local}"),
            move |l| {
                if l.split_whitespace().nth(1) == Some(needle.as_str()) {
                    bound += 1;
                }
                bound >= count
            },
        );
    }

    /// Polls the host namespace's `/proc/net/<table>` (for up to 10 s)
    /// until `found` says yes to one of its lines, fed every line of each
    /// read anew from a fresh clone of itself; panics with `otherwise`.
    fn wait_host_sockets(
        &self,
        table: &str,
        otherwise: &str,
        found: impl FnMut(&str) -> bool + Clone + Send + 'static,
    ) {
        let path = format!("/proc/thread-self/net/{table}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let (path, found) = (path.clone(), found.clone());
            let seen = self.host.run_in(move || {
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .any(found)
            });
            if seen {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("{otherwise}");
    }
}

/// An IPv4 ADDR:PORT as /proc/net shows it: the address's four bytes in
/// host order, and the port, both in hex.
fn proc_net_addr(addr: &str) -> String {
    let addr: std::net::SocketAddrV4 = addr.parse().expect("IPv4 ADDR:PORT");
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(addr.ip().octets()),
        addr.port()
    )
}

/// TCP state numbers, as /proc/net/tcp shows them.
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;

/// Removes what an interrupted earlier run left behind: namespaces, bpffs
/// mounts and temp dirs of worlds whose process is gone.
fn sweep_stale() {
    let dead = |pid: &str| {
        pid.parse::<i32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
    };
    let out = Command::new("ip").args(["netns", "list"]).output();
    for line in out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
    {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = name.strip_prefix("egt").and_then(|r| r.split('x').next())
            && dead(pid)
        {
            netns::run_ip(&["netns", "del", name]);
        }
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("egret-egt")
            .and_then(|r| r.split('x').next())
        else {
            continue;
        };
        if dead(pid) {
            let bpffs = e.path().join("bpffs");
            let _ = Command::new(crate::workspace_bin("egret"))
                .args(["teardown", "--bpffs"])
                .arg(&bpffs)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A veth pair with one end in each namespace.
fn veth(a: &str, ns_a: &Netns, b: &str, ns_b: &Netns) {
    netns::run_ip(&[
        "link", "add", a, "netns", &ns_a.name, "type", "veth", "peer", "name", b, "netns",
        &ns_b.name,
    ]);
}

enum Side {
    Internet,
    Neighbour,
    Host,
}

fn wait_ready(stdout: ChildStdout, what: &[String]) {
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line).expect("fixture stdout");
    assert_eq!(line.trim(), "ready", "fixture {what:?} did not come up");
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.fixtures {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Namespaces are deleted by their own Drop.
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

pub fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename {}: {e}", path.display()));
}
