use super::*;

use std::{net::IpAddr, path::PathBuf};

use egret_common::rules::{PortRule, proto, rule_flags};
use ipnet::IpNet;

fn check(text: &str) -> Result<Policy, Vec<String>> {
    let (policy, diags) = validate(&[(PathBuf::from("p.yaml"), text.as_bytes().to_vec())]);
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
        vec!["p.yaml:6:9: error: allow entry needs `cidr`, `host` or `preset`"]
    );
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - cidr: 10.0.0.0/8\n        host: x.test\n",
    );
    assert_eq!(
        e,
        vec!["p.yaml:7:15: error: an allow entry takes one of `cidr`, `host` or `preset`"]
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
        "version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - host: \"a*.example.com\"\n",
    );
    assert!(e[0].contains("whole first label"), "{e:?}");
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
    let (_, d) = validate(&[(PathBuf::from("p.yaml"), b"version: 1\n\xff\xfe\n".to_vec())]);
    assert_eq!(
        d[0].to_string(),
        "p.yaml:2:1: error: file is not valid UTF-8"
    );
}

#[test]
fn metadata_in_a_cidr_warns() {
    let (policy, d) = validate(&[(
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

fn runner(allow: &str) -> String {
    format!("version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n{allow}")
}

fn warnings(text: &str) -> Vec<String> {
    let (_, d) = validate(&[(PathBuf::from("p.yaml"), text.as_bytes().to_vec())]);
    d.iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(ToString::to_string)
        .collect()
}

#[test]
fn wildcards_match_below_a_registrable_domain_only() {
    let p = check(&runner(
        "      - host: \"*.npmjs.org\"\n        ports: [443]\n",
    ))
    .unwrap();
    assert_eq!(p.runners[0].patterns[0].name, "*.npmjs.org");
    assert!(p.runners[0].hosts.is_empty());
    for bad in ["*", "*.com", "*.co.uk", "*.*.example.com"] {
        let e = errors(&runner(&format!("      - host: \"{bad}\"\n")));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with("p.yaml:6:15: error: host "),
            "{bad}: {e:?}"
        );
    }
    let e = errors(&runner("      - host: \"*.com\"\n"));
    assert!(e[0].contains("'com' is a public suffix"), "{e:?}");
}

#[test]
fn multitenant_wildcards_warn_unless_acknowledged() {
    for pattern in [
        "*.github.io",
        "*.s3.amazonaws.com",
        "*.herokuapp.com",
        "*.amazonaws.com",
    ] {
        let w = warnings(&runner(&format!("      - host: \"{pattern}\"\n")));
        assert_eq!(w.len(), 1, "{pattern}: {w:?}");
        assert!(
            w[0].contains("anyone can register") && w[0].contains("i_understand_multitenant"),
            "{w:?}"
        );
        let w = warnings(&runner(&format!(
            "      - host: \"{pattern}\"\n        i_understand_multitenant: true\n"
        )));
        assert!(w.is_empty(), "{pattern}: {w:?}");
    }
    assert!(
        warnings(&runner("      - host: \"*.myname.github.io\"\n")).is_empty(),
        "one tenant's own names"
    );
}

#[test]
fn presets_expand_to_their_entries() {
    let p = check(&runner("      - preset: pypi\n      - preset: npm\n")).unwrap();
    let names: Vec<&str> = p.runners[0].hosts.iter().map(|h| h.name.as_str()).collect();
    assert!(
        names.contains(&"pypi.org") && names.contains(&"files.pythonhosted.org"),
        "{names:?}"
    );
    assert!(names.contains(&"registry.npmjs.org"), "{names:?}");
    assert!(
        p.runners[0]
            .hosts
            .iter()
            .all(|h| h.ports == vec![PortRule::new(443, 443, proto::ANY)])
    );
}

#[test]
fn the_gitlab_preset_takes_the_instance_and_marks_it_as_the_forge() {
    let p = check(&runner(
        "      - preset: gitlab\n        with: {host: git.example.com}\n",
    ))
    .unwrap();
    let h = &p.runners[0].hosts[0];
    assert_eq!(h.name, "git.example.com");
    assert!(
        h.ports.iter().all(|r| r.flags & rule_flags::FORGE != 0),
        "{h:?}"
    );
    let e = errors(&runner("      - preset: gitlab\n"));
    assert_eq!(
        e,
        vec!["p.yaml:6:17: error: preset 'gitlab' needs `with: {host: ...}`"]
    );
    let e = errors(&runner(
        "      - preset: gitlab\n        with: {hots: x.example}\n",
    ));
    assert!(
        e[0].contains("takes no parameter 'hots' (it takes: host)"),
        "{e:?}"
    );
}

#[test]
fn unknown_presets_are_named_with_a_suggestion() {
    let e = errors(&runner("      - preset: pipy\n"));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("p.yaml:6:17: error: unknown preset 'pipy'; did you mean 'pypi'?"),
        "{e:?}"
    );
}

#[test]
fn presets_bring_their_own_ports() {
    let e = errors(&runner("      - preset: npm\n        ports: [80]\n"));
    assert!(e[0].contains("brings its own ports"), "{e:?}");
}

#[test]
fn every_embedded_preset_is_valid() {
    for (name, _) in presets::EMBEDDED {
        let with = if *name == "gitlab" {
            "\n        with: {host: gitlab.example.com}"
        } else {
            ""
        };
        let text = runner(&format!("      - preset: {name}{with}\n"));
        let (policy, d) = validate(&[(PathBuf::from("p.yaml"), text.into_bytes())]);
        assert!(policy.is_some() && d.is_empty(), "{name}: {d:?}");
        let r = &policy.unwrap().runners[0];
        assert!(
            !r.hosts.is_empty() || !r.patterns.is_empty(),
            "{name} allows something"
        );
    }
}

#[test]
fn user_presets_extend_and_override() {
    let preset = "preset: internal-mirror\nversion: 2\ndescription: our mirror\nallow:\n  - host: mirror.corp.example\n    ports: [8443]\n";
    let npm = "preset: npm\nversion: 7\nallow:\n  - host: npm.corp.example\n    ports: [443]\n";
    let (policy, d) = validate(&[
        (
            PathBuf::from("mirror.preset.yaml"),
            preset.as_bytes().to_vec(),
        ),
        (PathBuf::from("npm.preset.yaml"), npm.as_bytes().to_vec()),
        (
            PathBuf::from("p.yaml"),
            runner("      - preset: internal-mirror\n      - preset: npm\n").into_bytes(),
        ),
    ]);
    assert!(d.is_empty(), "{d:?}");
    let names: Vec<String> = policy.unwrap().runners[0]
        .hosts
        .iter()
        .map(|h| h.name.clone())
        .collect();
    assert_eq!(names, vec!["mirror.corp.example", "npm.corp.example"]);
}

#[test]
fn errors_inside_a_user_preset_point_into_it() {
    let preset = "preset: broken\nversion: 1\nallow:\n  - cidr: 10.0.0.300/32\n";
    let (_, d) = validate(&[
        (
            PathBuf::from("broken.preset.yaml"),
            preset.as_bytes().to_vec(),
        ),
        (
            PathBuf::from("p.yaml"),
            runner("      - preset: broken\n").into_bytes(),
        ),
    ]);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].to_string()
            .starts_with("broken.preset.yaml:4:11: error: '10.0.0.300/32'"),
        "{d:?}"
    );
}

#[test]
fn variables_expand_everywhere_a_site_differs() {
    let text = "version: 1\nvars:\n  SITE_GITLAB: git.site-a.example\n  SITE_NET: 203.0.113.0/24\n  DNS: 203.0.113.53\nrunners:\n  - name: a\n    cgroup: /egret.slice/${SITE_GITLAB}\n    dns:\n      upstream: [\"${DNS}\"]\n    allow:\n      - host: ${SITE_GITLAB}\n      - cidr: ${SITE_NET}\n      - preset: gitlab\n        with: {host: \"${SITE_GITLAB}\"}\n";
    let p = check(text).unwrap();
    let r = &p.runners[0];
    assert_eq!(r.cgroup, "/egret.slice/git.site-a.example");
    assert_eq!(r.hosts[0].name, "git.site-a.example");
    assert_eq!(r.hosts[1].name, "git.site-a.example");
    assert_eq!(r.cidrs[0].net, "203.0.113.0/24".parse::<IpNet>().unwrap());
    assert_eq!(
        r.dns_upstream,
        vec!["203.0.113.53".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn undefined_variables_are_located_with_a_suggestion() {
    let text = "version: 1\nvars:\n  GITLAB_HOST: g.example\nrunners:\n  - name: a\n    cgroup: /a\n    allow:\n      - host: ${GITLAB_HSOT}\n";
    assert_eq!(
        errors(text),
        vec!["p.yaml:8:15: error: undefined variable ${GITLAB_HSOT}; did you mean ${GITLAB_HOST}?"]
    );
}

#[test]
fn conflicting_variables_across_files_are_errors() {
    let (_, d) = validate(&[
        (
            PathBuf::from("a.yaml"),
            b"version: 1\nvars:\n  X: one\n".to_vec(),
        ),
        (
            PathBuf::from("b.yaml"),
            b"version: 1\nvars:\n  X: two\n".to_vec(),
        ),
    ]);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        d[0].to_string(),
        "b.yaml:3:6: error: variable X is already set to 'one' at a.yaml:3"
    );
}

#[test]
fn unknown_fields_get_a_did_you_mean() {
    let e = errors("version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    alow: []\n");
    assert_eq!(
        e,
        vec![
            "p.yaml:5:5: error: unknown field `alow` (expected one of: name, cgroup, slice, mode, sockets, loopback, multicast, dns, allow); did you mean `allow`?"
        ]
    );
    let e = errors("version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    mode: enfroce\n");
    assert_eq!(
        e,
        vec![
            "p.yaml:5:11: error: unknown value `enfroce` (expected one of: enforce, audit); did you mean `enforce`?"
        ]
    );
}

#[test]
fn audit_mode_warns() {
    let w = warnings("version: 1\nrunners:\n  - name: a\n    cgroup: /a\n    mode: audit\n");
    assert_eq!(
        w,
        vec![
            "p.yaml:3:11: warning: runner 'a' is in audit mode: denials are reported, not enforced"
        ]
    );
}

#[test]
fn only_a_trailing_location_is_stripped() {
    assert_eq!(
        strip_location_suffix(
            "invalid type: sequence (defined at line 7, column 20) (used at line 9, column 21)"
        ),
        "invalid type: sequence (defined at line 7, column 20)"
    );
    assert_eq!(
        strip_location_suffix("unclosed bracket at line 2, column 10"),
        "unclosed bracket"
    );
    assert_eq!(
        strip_location_suffix("look at line noise"),
        "look at line noise"
    );
}

#[test]
fn wildcards_match_one_or_more_labels_but_not_the_suffix_itself() {
    let rule = HostRule {
        name: "*.npmjs.org".into(),
        ports: vec![],
        private_answers: false,
    };
    assert!(rule.matches("registry.npmjs.org"));
    assert!(rule.matches("a.b.npmjs.org."));
    assert!(rule.matches("REGISTRY.NPMJS.ORG"));
    assert!(!rule.matches("npmjs.org"));
    assert!(!rule.matches("evilnpmjs.org"));
    assert!(!rule.matches(".npmjs.org"));
    assert!(!rule.matches("a..npmjs.org"));
    assert!(!rule.matches("npmjs.org.evil.example"));
    let exact = HostRule {
        name: "gitlab.test".into(),
        ports: vec![],
        private_answers: false,
    };
    assert!(exact.matches("GitLab.test."));
    assert!(!exact.matches("x.gitlab.test"));
}

/// Docker's systemd driver takes a slice name; the policy takes the same
/// name and derives the cgroup the containers land in.
#[test]
fn a_slice_names_the_runners_cgroup() {
    let p = check("version: 1\nrunners:\n  - name: gitlab\n    slice: egret-gitlab.slice\n")
        .expect("valid");
    assert_eq!(p.runners[0].cgroup, "/egret.slice/egret-gitlab.slice");
    // The derived cgroup overlaps another runner's as a path would.
    let e = errors(
        "version: 1\nrunners:\n  - name: a\n    cgroup: /egret.slice\n  - name: b\n    slice: egret-b.slice\n",
    );
    assert!(e[0].contains("overlaps cgroup '/egret.slice'"), "{e:?}");
}

/// What a reload keeps (parses, preset expansions) never changes what a
/// load says: after every kind of edit, a cached load equals a fresh one,
/// findings included.
#[test]
fn a_cached_load_equals_a_fresh_one_after_every_edit() {
    let dir = tempfile::tempdir().unwrap();
    let preset = dir.path().join("ranges.preset.yaml");
    let policy = dir.path().join("policy.yaml");
    let write = |path: &std::path::Path, text: &str| std::fs::write(path, text).unwrap();
    let ranges = "preset: ranges\nversion: 1\nparams: [net]\nallow:\n  - cidr: \"${net}\"\n    ports: [443]\n  - cidr: 169.254.0.0/16\n";
    write(&preset, ranges);
    write(
        &policy,
        "version: 1\nvars:\n  NET: 11.0.0.0/24\nrunners:\n  - name: ci\n    cgroup: /ci\n    allow:\n      - preset: ranges\n        with: {net: \"${NET}\"}\n",
    );
    let mut cache = PolicyCache::default();
    let same = |cache: &mut PolicyCache, what: &str| {
        let cached = load_with(dir.path(), cache);
        let fresh = load(dir.path());
        match (cached, fresh) {
            (Ok(c), Ok(f)) => {
                assert_eq!(c.policy, f.policy, "{what}");
                assert_eq!(c.warnings, f.warnings, "{what}");
                c.policy
            }
            (Err(PolicyError::Invalid(c)), Err(PolicyError::Invalid(f))) => {
                assert_eq!(c, f, "{what}");
                panic!("{what}: invalid: {c:?}")
            }
            (c, f) => panic!("{what}: cached {c:?}, fresh {f:?}"),
        }
    };
    let first = same(&mut cache, "first load");
    assert!(
        load_with(dir.path(), &mut cache)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.message.contains("metadata")),
        "the preset's warning is replayed from the cache"
    );
    assert_eq!(same(&mut cache, "nothing changed"), first);
    write(&preset, &format!("{ranges}  - cidr: 12.0.0.0/24\n"));
    let grown = same(&mut cache, "an entry added to the preset");
    assert_eq!(
        grown.runners[0].cidrs.len(),
        first.runners[0].cidrs.len() + 1
    );
    write(
        &policy,
        "version: 1\nvars:\n  NET: 11.1.0.0/24\nrunners:\n  - name: ci\n    cgroup: /ci\n    allow:\n      - preset: ranges\n        with: {net: \"${NET}\"}\n",
    );
    let moved = same(&mut cache, "a variable the preset's parameter names");
    assert_eq!(
        moved.runners[0].cidrs[0].net,
        "11.1.0.0/24".parse::<ipnet::IpNet>().unwrap()
    );
}
