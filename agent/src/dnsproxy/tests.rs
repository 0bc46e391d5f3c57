use std::{net::Ipv4Addr, str::FromStr as _};

use hickory_proto::{
    op::Query,
    rr::{Name, RData, Record, RecordType, rdata},
};

use super::*;

fn name(n: &str) -> Name {
    Name::from_str(n).expect("name")
}

fn response(question: &str, answers: Vec<Record>) -> Message {
    let mut m = Message::response(7, OpCode::Query);
    m.add_query(Query::query(name(question), RecordType::A));
    for a in answers {
        m.add_answer(a);
    }
    m
}

fn a(owner: &str, ip: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(rdata::A(Ipv4Addr::from(ip))))
}

fn cname(owner: &str, target: &str, ttl: u32) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(rdata::CNAME(name(target))))
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_cname_chain_credits_its_addresses_with_the_lowest_ttl() {
    let mut m = response(
        "alias.test.",
        vec![
            cname("alias.test.", "edge.cdn.test.", 30),
            cname("edge.cdn.test.", "pop.cdn.test.", 300),
            a("pop.cdn.test.", [203, 0, 113, 21], 60),
            // Not on the chain: kept in the reply, never learned.
            a("other.test.", [203, 0, 113, 99], 5),
        ],
    );
    let s = screen(&mut m, HOUR, false, &[]);
    assert_eq!(s.ips, vec![IpAddr::from([203, 0, 113, 21])]);
    assert_eq!(s.ttl, Duration::from_secs(30));
    assert!(!s.changed);
    assert_eq!(m.answers.len(), 4);
}

#[test]
fn private_and_metadata_answers_are_dropped_unless_the_entry_opts_in() {
    let records = || {
        vec![
            a("x.test.", [10, 0, 0, 5], 60),
            a("x.test.", [169, 254, 169, 254], 60),
            a("x.test.", [127, 0, 0, 1], 60),
            a("x.test.", [203, 0, 113, 22], 60),
        ]
    };
    let mut m = response("x.test.", records());
    let s = screen(&mut m, HOUR, false, &[]);
    assert_eq!(s.ips, vec![IpAddr::from([203, 0, 113, 22])]);
    assert_eq!((s.stripped, s.changed), (3, true));
    assert_eq!(m.answers.len(), 1);

    let mut m = response("x.test.", records());
    let s = screen(&mut m, HOUR, true, &[]);
    // Metadata goes even when private answers are kept.
    assert_eq!(s.stripped, 1);
    assert_eq!(s.ips.len(), 3);
}

#[test]
fn ttls_above_the_cap_are_lowered_so_jobs_never_outcache_the_map() {
    let mut m = response("x.test.", vec![a("x.test.", [203, 0, 113, 22], 86_400)]);
    let s = screen(&mut m, HOUR, false, &[]);
    assert!(s.changed);
    assert_eq!(m.answers[0].ttl, 3600);
    assert_eq!(s.ttl, Duration::from_secs(86_400));
}

fn runner(rules: &[(&str, bool)]) -> RunnerDns {
    RunnerDns {
        id: 1,
        name: "ci".into(),
        mode: Mode::Enforce,
        rules: rules
            .iter()
            .map(|(n, private)| HostRule {
                name: (*n).into(),
                ports: vec![PortRule::all_ports(egret_common::rules::proto::ANY)],
                private_answers: *private,
            })
            .collect(),
        upstream: vec![],
        refuse_with: DnsRefusal::Refused,
        listen: None,
        cgroup_dir: PathBuf::new(),
        nat64: Vec::new(),
        stats: Default::default(),
    }
}

#[test]
fn names_match_exact_entries_and_patterns_case_blind() {
    let r = runner(&[("gitlab.test", false), ("*.pkg.test", false)]);
    assert_eq!(r.rules_for("gitlab.test").len(), 1);
    assert_eq!(r.rules_for("a.b.pkg.test").len(), 1);
    assert!(r.rules_for("pkg.test").is_empty());
    assert!(r.rules_for("x.gitlab.test").is_empty());
    assert!(r.rules_for("gitlab.test.attacker.test").is_empty());
}

#[test]
fn a_doh_service_needs_an_exact_entry() {
    let r = runner(&[("*.cloudflare-dns.com", false), ("dns.google", false)]);
    assert!(r.rules_for("mozilla.cloudflare-dns.com").is_empty());
    assert_eq!(r.rules_for("dns.google").len(), 1);
}

#[test]
fn upstreams_prefer_the_runner_then_the_agent() {
    let runner_up: Vec<IpAddr> = vec!["203.0.113.53".parse().unwrap()];
    let agent_up: Vec<IpAddr> = vec!["192.0.2.53".parse().unwrap()];
    assert_eq!(
        upstream_servers(&runner_up, &agent_up),
        vec!["203.0.113.53:53".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        upstream_servers(&[], &agent_up),
        vec!["192.0.2.53:53".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn process_scans_are_budgeted_per_runner_and_second() {
    let budget = crate::budget::PerRunnerBudget::new(SCANS_PER_SECOND);
    let t0 = std::time::Instant::now();
    assert!((0..SCANS_PER_SECOND).all(|_| budget.allow(1, t0)));
    assert!(!budget.allow(1, t0), "over the budget");
    assert!(budget.allow(2, t0), "another runner has its own");
    assert!(budget.allow(1, t0 + Duration::from_secs(1)), "a new second");
}

/// A reply of `answers` A records for `big.test.`, each pointing back at
/// the question's name, written by hand: hickory will not encode a message
/// longer than a TCP length prefix can carry.
fn oversized_reply(answers: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1];
    m.extend_from_slice(&answers.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(b"\x03big\x04test\x00\x00\x01\x00\x01");
    for i in 0..answers {
        m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0]);
        m.extend_from_slice(&i.to_be_bytes());
    }
    m
}

#[test]
fn tcp_frames_carry_their_exact_length() {
    let reply = oversized_reply(3);
    let framed = listen::tcp_frame(reply.clone()).expect("framed");
    assert_eq!(
        usize::from(u16::from_be_bytes([framed[0], framed[1]])),
        reply.len()
    );
    assert_eq!(&framed[2..], &reply[..]);
}

#[test]
fn a_reply_too_long_for_tcp_is_truncated_not_desynchronised() {
    let reply = oversized_reply(5000);
    assert!(reply.len() > usize::from(u16::MAX));
    let framed = listen::tcp_frame(reply).expect("a truncated reply");
    let len = usize::from(u16::from_be_bytes([framed[0], framed[1]]));
    assert_eq!(len, framed.len() - 2, "the prefix says what follows");
    let m = Message::from_vec(&framed[2..]).expect("a DNS message");
    assert!(m.metadata.truncation, "TC set: the client knows it is cut");
    assert!(m.answers.is_empty());
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.queries.len(), 1);
    // Not even a message: the connection is dropped instead.
    assert!(listen::tcp_frame(vec![0xffu8; 70_000]).is_none());
}

#[test]
fn a_dot_inside_a_wire_label_is_never_a_separator() {
    let rule = HostRule {
        name: "*.pkg.test".into(),
        ports: vec![],
        private_answers: false,
    };
    let dotted = Name::from_labels(vec![&b"data"[..], &b"evil.pkg"[..], &b"test"[..]]).unwrap();
    // As text it reads like a name the wildcard covers...
    assert!(
        rule.matches(
            dotted
                .to_ascii()
                .trim_end_matches('.')
                .replace("\\.", ".")
                .as_str()
        )
    );
    // ...but on the wire it is not one.
    assert!(has_dotted_label(&dotted));
    assert!(!has_dotted_label(&name("files.pkg.test.")));
}

#[test]
fn nat64_answers_carrying_metadata_or_a_neighbour_are_stripped() {
    let aaaa = |owner: &str, ip: &str| {
        Record::from_rdata(
            name(owner),
            60,
            RData::AAAA(rdata::AAAA(ip.parse().expect("v6"))),
        )
    };
    let operator: ipnet::Ipv6Net = "2001:db8:64::/96".parse().unwrap();
    let mut m = response(
        "dns64.test.",
        vec![
            aaaa("dns64.test.", "64:ff9b::a9fe:a9fe"),
            aaaa("dns64.test.", "64:ff9b:1::a00:5"),
            aaaa("dns64.test.", "2001:db8:64::a9fe:a9fe"),
            aaaa("dns64.test.", "64:ff9b::cb00:710a"),
        ],
    );
    let s = screen(&mut m, HOUR, false, &[operator]);
    assert_eq!(
        s.stripped, 3,
        "metadata (well-known and operator) and the neighbour"
    );
    assert_eq!(s.ips, vec!["64:ff9b::cb00:710a".parse::<IpAddr>().unwrap()]);
}

#[test]
fn a_dns64_answer_is_learned_as_the_v4_address_it_is_judged_as() {
    use egret_common::addr::mapped_v4;
    let operator: ipnet::Ipv6Net = "2001:db8:64::/96".parse().unwrap();
    let judged = |ip: &str| crate::compile::judged_addr(ip.parse().unwrap(), &[operator]);
    assert_eq!(judged("64:ff9b::cb00:710a"), mapped_v4([203, 0, 113, 10]));
    assert_eq!(
        judged("2001:db8:64::cb00:710a"),
        mapped_v4([203, 0, 113, 10])
    );
    assert_eq!(judged("203.0.113.10"), mapped_v4([203, 0, 113, 10]));
    let local_use: IpAddr = "64:ff9b:1::cb00:710a".parse().unwrap();
    assert_eq!(
        crate::compile::judged_addr(local_use, &[]),
        crate::compile::addr_of(local_use),
        "the local-use block's layout is unknown: the address stays as it is"
    );
}
