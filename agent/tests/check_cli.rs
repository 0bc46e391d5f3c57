//! `egret check` as CI runs it: exact output lines and exit codes for bad
//! input, JSON output, warnings that do not fail, directories.

use std::{path::PathBuf, process::Command};

const RUNNER: &str =
    "version: 1\nrunners:\n  - name: ci\n    cgroup: /egret.slice/ci\n    allow:\n";

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("egret-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        Self(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egret"))
        .arg("check")
        .args(args)
        .output()
        .expect("egret check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn golden(name: &str, bytes: &[u8], expected: &str) {
    let dir = Dir::new(name);
    let path = dir.file(&format!("{name}.yaml"), bytes);
    let (code, out) = check(&[path.as_os_str()]);
    let out = out.replace(&format!("{}/", dir.0.display()), "");
    assert_eq!((code, out.trim_end()), (1, expected), "{name}");
}

fn runner(allow: &str) -> Vec<u8> {
    format!("{RUNNER}{allow}").into_bytes()
}

#[test]
fn golden_bad_inputs() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-cidr", runner("      - cidr: 203.0.113.300/24\n"), "bad-cidr.yaml:6:15: error: '203.0.113.300/24' is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32"),
        ("port-zero", runner("      - cidr: 203.0.113.0/24\n        ports: [0]\n"), "port-zero.yaml:7:17: error: port 0 is out of range 1-65535"),
        ("port-high", runner("      - cidr: 203.0.113.0/24\n        ports: [70000]\n"), "port-high.yaml:7:17: error: port 70000 is out of range 1-65535"),
        ("reversed", runner("      - cidr: 203.0.113.0/24\n        ports: [\"9000-8000\"]\n"), "reversed.yaml:7:17: error: port range 9000-8000 is reversed; write 8000-9000"),
        ("unknown-field", b"version: 1\nrunners:\n  - name: ci\n    cgroups: /egret.slice/ci\n".to_vec(), "unknown-field.yaml:4:5: error: unknown field `cgroups` (expected one of: name, cgroup, slice, mode, sockets, loopback, multicast, dns, allow); did you mean `cgroup`?"),
        ("unknown-preset", runner("      - preset: nmp\n"), "unknown-preset.yaml:6:17: error: unknown preset 'nmp'; did you mean 'npm'? available: alpine, crates, debian, docker-hub, ghcr, github, github-actions-cache, gitlab, gitlab-com, go-proxy, maven-central, npm, nuget, pypi, quay, rubygems, ubuntu (or add a *.preset.yaml file)"),
        ("star-com", runner("      - host: \"*.com\"\n"), "star-com.yaml:6:15: error: host '*.com': 'com' is a public suffix: the pattern would match every domain registered under it"),
        ("co-uk", runner("      - host: \"*.co.uk\"\n"), "co-uk.yaml:6:15: error: host '*.co.uk': 'co.uk' is a public suffix: the pattern would match every domain registered under it"),
        ("star", runner("      - host: \"*\"\n"), "star.yaml:6:15: error: host '*': a wildcard must be the whole first label: '*.example.com'"),
        ("duplicate", b"version: 1\nrunners:\n  - name: ci\n    cgroup: /a\n  - name: ci\n    cgroup: /b\n".to_vec(), "duplicate.yaml:5:11: error: duplicate runner name 'ci' (first defined at duplicate.yaml:3)"),
        ("overlap", b"version: 1\nrunners:\n  - name: a\n    cgroup: /egret.slice\n  - name: b\n    cgroup: /egret.slice/b\n".to_vec(), "overlap.yaml:6:13: error: cgroup '/egret.slice/b' overlaps cgroup '/egret.slice' of another runner (overlap.yaml:4); each job cgroup must belong to exactly one runner"),
        ("missing-version", b"runners: []\n".to_vec(), "missing-version.yaml:1:1: error: missing field `version`"),
        ("bad-version", b"version: 3\n".to_vec(), "bad-version.yaml:1:10: error: unsupported policy version 3; this egret reads version 1"),
        ("wrong-type", b"version: 1\nrunners:\n  - name: ci\n    cgroup: /a\n    allow: everything\n".to_vec(), "wrong-type.yaml:5:12: error: expected a list (`[a, b]` or lines starting with `- `)"),
        ("tab", b"version: 1\nrunners:\n\t- name: ci\n".to_vec(), "tab.yaml:3:1: error: tab used for indentation; YAML indents with spaces only"),
        ("empty", b"".to_vec(), "empty.yaml:1:1: error: file is empty; a policy needs at least `version: 1`"),
        ("non-utf8", b"version: 1\nrunners:\n  - name: \xff\n".to_vec(), "non-utf8.yaml:3:1: error: file is not valid UTF-8"),
        ("host-bits", runner("      - cidr: 10.1.2.3/8\n"), "host-bits.yaml:6:15: error: '10.1.2.3/8' has host bits set; did you mean 10.0.0.0/8?"),
        ("bad-proto", runner("      - cidr: 10.0.0.0/8\n        proto: icmp\n"), "bad-proto.yaml:7:16: error: unknown value `icmp` (expected one of: tcp, udp, any)"),
        ("two-targets", runner("      - cidr: 10.0.0.0/8\n        host: a.example\n"), "two-targets.yaml:7:15: error: an allow entry takes one of `cidr`, `host` or `preset`"),
        ("no-target", runner("      - ports: [443]\n"), "no-target.yaml:6:9: error: allow entry needs `cidr`, `host` or `preset`"),
        ("bad-name", b"version: 1\nrunners:\n  - name: ci runner\n    cgroup: /a\n".to_vec(), "bad-name.yaml:3:11: error: runner name 'ci runner' is invalid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        ("root-cgroup", b"version: 1\nrunners:\n  - name: ci\n    cgroup: /\n".to_vec(), "root-cgroup.yaml:4:13: error: cgroup '/' would put every process on the host under this runner's policy; name the runner's own cgroup"),
        ("undefined-var", runner("      - host: ${GITLAB}\n"), "undefined-var.yaml:6:15: error: undefined variable ${GITLAB}"),
        ("bad-upstream", b"version: 1\nrunners:\n  - name: ci\n    cgroup: /a\n    dns:\n      upstream: [dns.example]\n".to_vec(), "bad-upstream.yaml:6:18: error: dns.upstream 'dns.example' is not an IP address"),
        ("bad-port-text", runner("      - cidr: 10.0.0.0/8\n        ports: [https]\n"), "bad-port-text.yaml:7:17: error: 'https' is not a port number or a range such as 8000-8100"),
        ("empty-ports", runner("      - cidr: 10.0.0.0/8\n        ports: []\n"), "empty-ports.yaml:7:16: error: ports is empty; leave it out to allow every port"),
        ("yaml-syntax", b"version: 1\nrunners: [\n".to_vec(), "yaml-syntax.yaml:2:10: error: unclosed bracket '['"),
        ("listen-loopback", b"version: 1\nrunners:\n  - name: ci\n    cgroup: /a\n    dns:\n      listen: 127.0.0.1\n".to_vec(), "listen-loopback.yaml:6:15: error: dns.listen '127.0.0.1' must be an address of the host that containers reach, such as the docker bridge gateway 172.17.0.1"),
        ("bad-refusal", b"version: 1\nrunners:\n  - name: ci\n    cgroup: /a\n    dns:\n      refuse_with: drop\n".to_vec(), "bad-refusal.yaml:6:20: error: unknown value `drop` (expected one of: refused, nxdomain)"),
        ("cgroup-and-slice", b"version: 1\nrunners:\n  - name: ci\n    cgroup: /a\n    slice: egret-ci.slice\n".to_vec(), "cgroup-and-slice.yaml:5:12: error: give the runner's `cgroup` or its `slice`, not both"),
        ("no-cgroup", b"version: 1\nrunners:\n  - name: ci\n    mode: audit\n".to_vec(), "no-cgroup.yaml:3:11: error: runner 'ci' needs `cgroup` (a path such as /egret.slice/ci: a shell or GitHub runner's service, or Docker's cgroupfs driver) or `slice` (a systemd slice name such as egret-gitlab.slice: Docker's systemd driver)"),
        ("slice-path", b"version: 1\nrunners:\n  - name: ci\n    slice: /egret.slice/ci\n".to_vec(), "slice-path.yaml:4:12: error: slice '/egret.slice/ci' must be a systemd slice name ending in .slice, e.g. egret-gitlab.slice"),
        ("private-answers-cidr", runner("      - cidr: 10.0.0.0/8\n        private_answers: true\n"), "private-answers-cidr.yaml:7:26: error: `private_answers` applies to `host` entries: it keeps their DNS answers in private ranges"),
    ];
    assert!(cases.len() >= 20);
    for (name, bytes, expected) in cases {
        golden(name, &bytes, expected);
    }
}

#[test]
fn every_problem_of_every_file_in_one_run() {
    let dir = Dir::new("many");
    let a = dir.file(
        "a.yaml",
        &runner("      - cidr: nope\n      - cidr: 10.0.0.0/8\n        ports: [0]\n"),
    );
    let b = dir.file("b.yaml", b"version: 2\n");
    let (code, out) = check(&[a.as_os_str(), b.as_os_str()]);
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn warnings_do_not_fail_the_check() {
    let dir = Dir::new("warn");
    let p = dir.file(
        "p.yaml",
        format!("{RUNNER}      - host: \"*.github.io\"\n")
            .replace("allow:", "mode: audit\n    allow:")
            .as_bytes(),
    );
    let (code, out) = check(&[p.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(": warning: ")).count(),
        2,
        "{out}"
    );
}

#[test]
fn warnings_are_printed_beside_errors() {
    let dir = Dir::new("warn-and-error");
    let p = dir.file(
        "p.yaml",
        &runner("      - cidr: 169.254.0.0/16\n      - cidr: 203.0.113.0/33\n"),
    );
    let (code, out) = check(&[p.as_os_str()]);
    let out = out.replace(&format!("{}/", dir.0.display()), "");
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out.trim_end(),
        "p.yaml:6:15: warning: 169.254.0.0/16 includes the cloud instance metadata service \
         (AWS, GCP, Azure, OCI, DigitalOcean, Hetzner, OpenStack); egret never allows cloud \
         metadata endpoints\n\
         p.yaml:7:15: error: '203.0.113.0/33' is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32"
    );
}

#[test]
fn json_output_for_ci_annotations() {
    let dir = Dir::new("json");
    let p = dir.file(
        "p.yaml",
        &runner("      - cidr: 10.0.0.0/8\n        ports: [0]\n"),
    );
    let (code, out) = check(&[
        std::ffi::OsStr::new("--format"),
        std::ffi::OsStr::new("json"),
        p.as_os_str(),
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["valid"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(7), Some(17))
    );
    assert_eq!(d["severity"], "error");
    assert_eq!(d["message"], "port 0 is out of range 1-65535");
    assert!(d["file"].as_str().is_some_and(|f| f.ends_with("p.yaml")));
}

#[test]
fn a_directory_with_presets_and_vars_checks_as_one_policy() {
    let dir = Dir::new("dir");
    dir.file(
        "site.yaml",
        b"version: 1\nvars:\n  MIRROR: mirror.corp.example\n",
    );
    dir.file(
        "mirror.preset.yaml",
        b"preset: mirror\nversion: 1\nallow:\n  - host: ${MIRROR}\n    ports: [443]\n",
    );
    dir.file("runners.yaml", &runner("      - preset: mirror\n"));
    dir.file("README.txt", b"not a policy");
    let (code, out) = check(&[dir.0.as_os_str()]);
    assert_eq!((code, out.as_str()), (0, ""));
}

#[test]
fn a_missing_path_is_an_environment_error() {
    let (code, out) = check(&[std::ffi::OsStr::new("/nonexistent/egret-policy.yaml")]);
    assert_eq!(code, 2);
    assert!(out.contains("cannot read policy"), "{out}");
}
