use super::*;

const RUNNERS: &[(&str, &str)] = &[("gitlab", "/egret.slice/egret-gitlab.slice")];

fn runners() -> Vec<(String, String)> {
    RUNNERS
        .iter()
        .map(|(n, c)| ((*n).to_owned(), (*c).to_owned()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A container of GitLab job `job` (None: no labels) with `ty` build or
/// service, at `addr` on `network`.
fn container(
    id: &str,
    job: Option<&str>,
    network: (&str, &str),
    addr: &str,
    aliases: &[&str],
) -> ContainerFacts {
    let mut labels = HashMap::new();
    if let Some(job) = job {
        labels.insert(label::JOB_ID.to_owned(), job.to_owned());
        labels.insert(
            label::JOB_URL.to_owned(),
            format!("https://gitlab.example.com/group/proj/-/jobs/{job}"),
        );
        labels.insert(label::PIPELINE_ID.to_owned(), "77".to_owned());
        labels.insert(label::JOB_REF.to_owned(), "main".to_owned());
    }
    ContainerFacts {
        id: id.to_owned(),
        name: id.to_owned(),
        labels,
        endpoints: vec![Endpoint {
            network_id: network.0.to_owned(),
            network_name: network.1.to_owned(),
            addrs: vec![ip(addr)],
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
        }],
        cgroup: format!("/egret.slice/egret-gitlab.slice/docker-{id}.scope"),
        cgroup_id: id.bytes().map(u64::from).sum(),
    }
}

const BRIDGE: (&str, &str) = ("b0", "bridge");

fn peer(r: &Registry, group_of: &str, addr: &str) -> bool {
    let groups = r.container_groups();
    let cg = r.containers[group_of].facts.cgroup_id;
    groups.get(&cg).is_some_and(|g| {
        r.peers().contains_key(&PeerKey {
            group: *g,
            addr: crate::compile::addr_of(ip(addr)),
        })
    })
}

#[test]
fn a_job_and_its_services_are_one_group_and_another_job_is_not() {
    let mut r = Registry::default();
    assert!(r.upsert(
        container("build-1", Some("41"), BRIDGE, "172.17.0.2", &[]),
        &runners()
    ));
    assert!(r.upsert(
        container("pg-1", Some("41"), BRIDGE, "172.17.0.3", &[]),
        &runners()
    ));
    assert!(r.upsert(
        container("pg-2", Some("42"), BRIDGE, "172.17.0.4", &[]),
        &runners()
    ));
    assert!(peer(&r, "build-1", "172.17.0.3"), "its service");
    assert!(peer(&r, "pg-1", "172.17.0.2"), "and back");
    assert!(!peer(&r, "build-1", "172.17.0.4"), "another job's service");
    assert!(!peer(&r, "pg-2", "172.17.0.2"));
    let jobs = r.jobs();
    let job = &jobs[&r.containers["build-1"].facts.cgroup_id];
    assert_eq!(job.project.as_deref(), Some("group/proj"));
    assert_eq!(job.source, Source::Labels);
}

#[test]
fn without_labels_a_user_defined_network_is_the_group_and_the_default_bridge_none() {
    let mut r = Registry::default();
    let net = ("n1", "build-net-1");
    r.upsert(container("a", None, net, "172.18.0.2", &[]), &runners());
    r.upsert(
        container("b", None, net, "172.18.0.3", &["postgres"]),
        &runners(),
    );
    r.upsert(container("c", None, BRIDGE, "172.17.0.5", &[]), &runners());
    r.upsert(container("d", None, BRIDGE, "172.17.0.6", &[]), &runners());
    assert!(peer(&r, "a", "172.18.0.3"));
    assert!(
        !peer(&r, "c", "172.17.0.6"),
        "the default bridge groups nothing"
    );
    assert!(
        !r.container_groups()
            .contains_key(&r.containers["c"].facts.cgroup_id)
    );
}

#[test]
fn containers_outside_every_runner_are_ignored() {
    let mut r = Registry::default();
    let mut other = container("x", Some("41"), BRIDGE, "172.17.0.9", &[]);
    other.cgroup = "/system.slice/docker-x.scope".into();
    assert!(!r.upsert(other, &runners()));
    let mut prefix = container("y", Some("41"), BRIDGE, "172.17.0.10", &[]);
    prefix.cgroup = "/egret.slice/egret-gitlab.slice-other/y".into();
    assert!(!r.upsert(prefix, &runners()));
    assert!(r.is_empty());
}

#[test]
fn aliases_resolve_for_the_same_group_on_a_shared_network_only() {
    let mut r = Registry::default();
    let net = ("n1", "runner-abc-project-1-concurrent-0-job-41-network");
    r.upsert(
        container("build-41", Some("41"), net, "172.18.0.2", &[]),
        &runners(),
    );
    r.upsert(
        container("svc-41", Some("41"), net, "172.18.0.3", &["postgres", "db"]),
        &runners(),
    );
    let other_net = ("n2", "runner-abc-project-1-concurrent-1-job-42-network");
    r.upsert(
        container("build-42", Some("42"), other_net, "172.19.0.2", &[]),
        &runners(),
    );
    r.upsert(
        container("svc-42", Some("42"), other_net, "172.19.0.3", &["postgres"]),
        &runners(),
    );
    assert_eq!(
        r.resolve(ip("172.18.0.2"), "postgres"),
        Some(vec![ip("172.18.0.3")])
    );
    assert_eq!(
        r.resolve(ip("172.18.0.2"), "DB."),
        Some(vec![ip("172.18.0.3")])
    );
    assert_eq!(
        r.resolve(ip("172.18.0.2"), "svc-41"),
        Some(vec![ip("172.18.0.3")])
    );
    assert_eq!(
        r.resolve(ip("172.19.0.2"), "postgres"),
        Some(vec![ip("172.19.0.3")])
    );
    assert_eq!(r.resolve(ip("172.18.0.2"), "svc-42"), None, "another job's");
    assert_eq!(r.resolve(ip("172.18.0.2"), "gitlab.example.com"), None);
    assert_eq!(
        r.resolve(ip("127.0.0.1"), "postgres"),
        None,
        "not a container"
    );
}

#[test]
fn group_ids_are_never_reused() {
    let mut r = Registry::default();
    r.upsert(
        container("a", Some("1"), BRIDGE, "172.17.0.2", &[]),
        &runners(),
    );
    let first = r.container_groups()[&r.containers["a"].facts.cgroup_id];
    r.remove("a");
    assert!(r.peers().is_empty() && r.container_groups().is_empty());
    r.upsert(
        container("a", Some("1"), BRIDGE, "172.17.0.2", &[]),
        &runners(),
    );
    let second = r.container_groups()[&r.containers["a"].facts.cgroup_id];
    assert_ne!(first, second);
    r.retain(&HashSet::new());
    assert!(r.is_empty());
}

#[test]
fn labels_name_the_job() {
    let labels: HashMap<String, String> = [
        (label::JOB_ID, "4242"),
        (
            label::JOB_URL,
            "https://gitlab.example.com/group/sub/proj/-/jobs/4242",
        ),
        (label::JOB_REF, "main"),
        (label::PIPELINE_ID, "77"),
        (label::PROJECT_ID, "9"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let job = job_from_labels(&labels).expect("a job");
    assert_eq!(
        (
            job.ci.as_str(),
            job.id.as_str(),
            job.project.as_deref(),
            job.pipeline.as_deref(),
            job.git_ref.as_deref()
        ),
        (
            "gitlab",
            "4242",
            Some("group/sub/proj"),
            Some("77"),
            Some("main")
        )
    );
    assert_eq!(job_from_labels(&HashMap::new()), None);
}
