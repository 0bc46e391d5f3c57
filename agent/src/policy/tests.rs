use super::*;

fn check(text: &str) -> Result<Policy, Vec<String>> {
    let (policy, diags) = compile(&[(PathBuf::from("p.yaml"), text.as_bytes().to_vec())]);
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    match policy {
        Some(p) if errors.is_empty() => Ok(p),
        _ => Err(errors),
    }
}

fn errors(text: &str) -> Vec<String> {
    check(text).expect_err("policy should be rejected")
}

const MINIMAL: &str = "version: 1
runners:
  - name: ci
    cgroup: /egret-demo/ci
    mode: enforce
    allow:
      - cidr: 203.0.113.10/32
        ports: [443]
        proto: tcp
      - host: gitlab.test
        ports: [443, 22]
";

#[test]
fn the_skeleton_format_parses() {
    let p = check(MINIMAL).unwrap();
    let r = &p.runners[0];
    assert_eq!(r.name, "ci");
    assert_eq!(r.cgroup, "/egret-demo/ci");
    assert_eq!(r.mode, Mode::Enforce);
    assert_eq!(r.cidrs[0].net, "203.0.113.10/32".parse::<IpNet>().unwrap());
    assert_eq!(r.cidrs[0].ports, vec![PortRule::new(443, 443, proto::TCP)]);
    assert_eq!(r.hosts[0].name, "gitlab.test");
    assert_eq!(
        r.hosts[0].ports,
        vec![
            PortRule::new(22, 22, proto::ANY),
            PortRule::new(443, 443, proto::ANY)
        ]
    );
}

#[test]
fn defaults_are_enforce_any_proto_all_ports() {
    let p = check("version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 2001:db8::/32\n").unwrap();
    assert_eq!(p.runners[0].mode, Mode::Enforce);
    assert_eq!(
        p.runners[0].cidrs[0].ports,
        vec![PortRule::all_ports(proto::ANY)]
    );
}

#[test]
fn ranges_and_bare_ips() {
    let p = check(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 203.0.113.7\n        ports: [\"8000-8100\", 8101, 22]\n",
    )
    .unwrap();
    let c = &p.runners[0].cidrs[0];
    assert_eq!(c.net, "203.0.113.7/32".parse::<IpNet>().unwrap());
    assert_eq!(
        c.ports,
        vec![
            PortRule::new(22, 22, proto::ANY),
            PortRule::new(8000, 8101, proto::ANY)
        ]
    );
}

#[test]
fn bad_cidr_is_located() {
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 300.1.2.3/8\n",
    );
    assert_eq!(
        e,
        vec![
            "p.yaml:6:15: error: '300.1.2.3/8' is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32"
        ]
    );
}

#[test]
fn host_bits_are_refused_with_a_suggestion() {
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 10.1.2.3/8\n",
    );
    assert_eq!(
        e,
        vec!["p.yaml:6:15: error: '10.1.2.3/8' has host bits set; did you mean 10.0.0.0/8?"]
    );
}

#[test]
fn port_errors() {
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 10.0.0.0/8\n        ports: [0, 70000, \"90-80\"]\n",
    );
    assert_eq!(
        e,
        vec![
            "p.yaml:7:17: error: port 0 is out of range 1-65535",
            "p.yaml:7:20: error: port 70000 is out of range 1-65535",
            "p.yaml:7:27: error: port range 90-80 is reversed; write 80-90",
        ]
    );
}

#[test]
fn unknown_field_is_an_error() {
    let e = errors("version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    alow: []\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("p.yaml:5:5: error: "), "{e:?}");
    assert!(e[0].contains("alow"), "{e:?}");
}

#[test]
fn missing_version() {
    let e = errors("runners: []\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("version"), "{e:?}");
}

#[test]
fn wrong_version() {
    assert_eq!(
        errors("version: 2\n"),
        vec!["p.yaml:1:10: error: unsupported policy version 2; this egret reads version 1"]
    );
}

#[test]
fn wrong_type() {
    let e = errors("version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow: yes\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("p.yaml:5:"), "{e:?}");
}

#[test]
fn unknown_mode_and_proto() {
    let e = errors("version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    mode: learn\n");
    assert!(e[0].starts_with("p.yaml:5:11: error: "), "{e:?}");
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 10.0.0.0/8\n        proto: sctp\n",
    );
    assert!(e[0].starts_with("p.yaml:7:16: error: "), "{e:?}");
}

#[test]
fn entry_needs_exactly_one_target() {
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - ports: [443]\n",
    );
    assert_eq!(
        e,
        vec!["p.yaml:6:9: error: allow entry needs `cidr` or `host`"]
    );
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 10.0.0.0/8\n        host: x.test\n",
    );
    assert_eq!(
        e,
        vec!["p.yaml:7:15: error: an allow entry takes either `cidr` or `host`, not both"]
    );
}

#[test]
fn duplicate_runner_and_overlapping_cgroups() {
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /x\n  - name: a\n    cgroup: /y\n  - name: b\n    cgroup: /x/job\n",
    );
    assert_eq!(
        e,
        vec![
            "p.yaml:5:11: error: duplicate runner name 'a' (first defined at p.yaml:3)",
            "p.yaml:8:13: error: cgroup '/x/job' overlaps cgroup '/x' of another runner (p.yaml:4); each job cgroup must belong to exactly one runner",
        ]
    );
}

#[test]
fn root_cgroup_and_relative_paths_are_refused() {
    let e = errors("version: 1\nrunners:\n  - name: a\n    cgroup: /\n");
    assert!(e[0].contains("every process on the host"), "{e:?}");
    let e = errors("version: 1\nrunners:\n  - name: a\n    cgroup: ci\n");
    assert!(e[0].contains("must be absolute"), "{e:?}");
    let e = errors("version: 1\nrunners:\n  - name: a\n    cgroup: /a/../b\n");
    assert!(e[0].contains("'..'"), "{e:?}");
}

#[test]
fn bad_names() {
    let e = errors("version: 1\nrunners:\n  - name: \"a b\"\n    cgroup: /a\n");
    assert!(
        e[0].starts_with("p.yaml:3:11: error: runner name 'a b' is invalid"),
        "{e:?}"
    );
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - host: \"*.example.com\"\n",
    );
    assert!(e[0].contains("wildcards"), "{e:?}");
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - host: 203.0.113.1\n",
    );
    assert!(e[0].contains("use `cidr`"), "{e:?}");
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: nope\n      - cidr: 10.0.0.1/8\n  - name: b\n    cgroup: b\n",
    );
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn empty_file_tabs_and_non_utf8() {
    assert_eq!(
        errors("\n  \n"),
        vec!["p.yaml:1:1: error: file is empty; a policy needs at least `version: 1`"]
    );
    assert_eq!(
        errors("version: 1\nrunners:\n\t- name: a\n"),
        vec!["p.yaml:3:1: error: tab used for indentation; YAML indents with spaces only"]
    );
    let (_, d) = compile(&[(PathBuf::from("p.yaml"), b"version: 1\n\xff\xfe\n".to_vec())]);
    assert_eq!(
        d[0].to_string(),
        "p.yaml:2:1: error: file is not valid UTF-8"
    );
}

#[test]
fn metadata_in_a_cidr_warns() {
    let (policy, d) = compile(&[(
        PathBuf::from("p.yaml"),
        b"version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 0.0.0.0/0\n"
            .to_vec(),
    )]);
    assert!(policy.is_some());
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].severity, Severity::Warning);
    assert!(
        d[0].message.contains("never allows cloud metadata"),
        "{d:?}"
    );
}

#[test]
fn directories_merge_and_detect_duplicates_across_files() {
    let dir = std::env::temp_dir().join(format!("egret-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        "version: 1\nrunners:\n  - name: b\n    cgroup: /b\n",
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), "not a policy").unwrap();
    let loaded = load(&dir).unwrap();
    assert_eq!(loaded.policy.runners.len(), 2);
    std::fs::write(
        dir.join("c.yaml"),
        "version: 1\nrunners:\n  - name: a\n    cgroup: /c\n",
    )
    .unwrap();
    let Err(PolicyError::Invalid(d)) = load(&dir) else {
        panic!("duplicate across files accepted")
    };
    assert!(
        d[0].to_string()
            .contains("c.yaml:3:11: error: duplicate runner name 'a'"),
        "{d:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merge_ranges_joins_touching_ranges() {
    assert_eq!(
        merge_ranges(vec![(5, 6), (1, 2), (3, 4), (10, 12)]),
        vec![(1, 6), (10, 12)]
    );
    assert_eq!(merge_ranges(vec![(1, 3), (5, 6)]), vec![(1, 3), (5, 6)]);
}
