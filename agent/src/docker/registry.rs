//! The CI job containers the agent knows, and what follows from them: which
//! containers belong together (a job and its services), the map entries
//! that let them reach each other, the names they resolve each other by,
//! and the job each one runs. Pure: fed with what the Docker API said.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use egret_common::maps::PeerKey;

use crate::jobs::{JobIdentity, Source};

/// GitLab Runner's labels on every container of a job.
pub mod label {
    pub const PREFIX: &str = "com.gitlab.gitlab-runner.";
    pub const JOB_ID: &str = "com.gitlab.gitlab-runner.job.id";
    pub const JOB_NAME: &str = "com.gitlab.gitlab-runner.job.name";
    pub const JOB_URL: &str = "com.gitlab.gitlab-runner.job.url";
    pub const JOB_REF: &str = "com.gitlab.gitlab-runner.job.ref";
    pub const PIPELINE_ID: &str = "com.gitlab.gitlab-runner.pipeline.id";
    pub const PROJECT_ID: &str = "com.gitlab.gitlab-runner.project.id";
}

/// Docker's own networks, which every container may share: never a reason
/// to group containers.
const SHARED_NETWORKS: [&str; 3] = ["bridge", "host", "none"];

/// One network a container is attached to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub network_id: String,
    pub network_name: String,
    pub addrs: Vec<IpAddr>,
    /// Names the container answers to on this network (`--network-alias`,
    /// GitLab's service aliases).
    pub aliases: Vec<String>,
}

/// What the Docker API and `/proc` tell about a running container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub labels: HashMap<String, String>,
    pub endpoints: Vec<Endpoint>,
    /// Its cgroup relative to the cgroup2 root, and that cgroup's id.
    pub cgroup: String,
    pub cgroup_id: u64,
}

/// Which containers belong together.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    /// GitLab Runner's job id label: the job's build and service
    /// containers.
    Job { runner: String, job: String },
    /// No labels: the containers sharing a user-defined network.
    Network { runner: String, network: String },
}

#[derive(Clone, Debug)]
struct Tracked {
    facts: ContainerFacts,
    runner: String,
    group: Option<GroupKey>,
    job: Option<JobIdentity>,
}

/// Every CI job container of every runner.
#[derive(Default)]
pub struct Registry {
    containers: BTreeMap<String, Tracked>,
    group_ids: HashMap<GroupKey, u64>,
    next_group: u64,
}

impl Registry {
    /// Records a running container. Containers outside every runner's
    /// cgroup are none of egret's business: `false`, and nothing changes.
    /// `runners` are (name, cgroup relative to the cgroup2 root).
    pub fn upsert(&mut self, facts: ContainerFacts, runners: &[(String, String)]) -> bool {
        let Some((runner, _)) = runners
            .iter()
            .find(|(_, cgroup)| crate::jobs::within(&facts.cgroup, cgroup))
        else {
            self.containers.remove(&facts.id);
            return false;
        };
        let runner = runner.clone();
        let group = group_of(&facts, &runner);
        if let Some(key) = &group
            && !self.group_ids.contains_key(key)
        {
            // Group ids are never reused, so a stale map entry cannot join
            // a new job's group.
            self.next_group += 1;
            self.group_ids.insert(key.clone(), self.next_group);
        }
        let job = job_from_labels(&facts.labels);
        self.containers.insert(
            facts.id.clone(),
            Tracked {
                facts,
                runner,
                group,
                job,
            },
        );
        true
    }

    pub fn remove(&mut self, id: &str) {
        self.containers.remove(id);
        let live: HashSet<&GroupKey> = self
            .containers
            .values()
            .filter_map(|t| t.group.as_ref())
            .collect();
        self.group_ids.retain(|k, _| live.contains(k));
    }

    /// Keeps only the containers in `running` (after the Docker daemon came
    /// back, say).
    pub fn retain(&mut self, running: &HashSet<String>) {
        let gone: Vec<String> = self
            .containers
            .keys()
            .filter(|id| !running.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    /// `EGRET_CT_GROUP`: each grouped container's cgroup → its group.
    pub fn container_groups(&self) -> HashMap<u64, u64> {
        self.containers
            .values()
            .filter_map(|t| Some((t.facts.cgroup_id, *self.group_ids.get(t.group.as_ref()?)?)))
            .collect()
    }

    /// `EGRET_PEERS`: every address of every grouped container, under its
    /// group, with the container's cgroup id.
    pub fn peers(&self) -> HashMap<PeerKey, u64> {
        let mut out = HashMap::new();
        for t in self.containers.values() {
            let Some(group) = t.group.as_ref().and_then(|g| self.group_ids.get(g)) else {
                continue;
            };
            for addr in t.facts.endpoints.iter().flat_map(|e| &e.addrs) {
                out.insert(
                    PeerKey {
                        group: *group,
                        addr: crate::compile::addr_of(*addr),
                    },
                    t.facts.cgroup_id,
                );
            }
        }
        out
    }

    /// The job of each container whose labels name one (trusted: the
    /// runner set them, the job cannot change them).
    pub fn jobs(&self) -> HashMap<u64, JobIdentity> {
        self.containers
            .values()
            .filter_map(|t| Some((t.facts.cgroup_id, t.job.clone()?)))
            .collect()
    }

    /// The addresses `name` stands for, asked by the container at `client`:
    /// another container of its group on a network they share, named by
    /// its container name or an alias there. `None` when the name is no
    /// such container, and the query goes on to the policy.
    pub fn resolve(&self, client: IpAddr, name: &str) -> Option<Vec<IpAddr>> {
        let (asker, network) = self.containers.values().find_map(|t| {
            t.facts
                .endpoints
                .iter()
                .find(|e| e.addrs.contains(&client))
                .map(|e| (t, e.network_id.as_str()))
        })?;
        let group = asker.group.as_ref()?;
        let name = name.trim_end_matches('.');
        let found: Vec<IpAddr> = self
            .containers
            .values()
            .filter(|t| t.group.as_ref() == Some(group))
            .flat_map(|t| {
                t.facts
                    .endpoints
                    .iter()
                    .filter(|e| {
                        e.network_id == network
                            && !SHARED_NETWORKS.contains(&e.network_name.as_str())
                    })
                    .filter(|e| {
                        t.facts.name.eq_ignore_ascii_case(name)
                            || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
                    })
                    .flat_map(|e| e.addrs.iter().copied())
            })
            .collect();
        (!found.is_empty()).then_some(found)
    }

    /// What `egret status` shows: runner, container name, job, addresses.
    pub fn summary(&self) -> Vec<(String, String, Option<String>, Vec<IpAddr>)> {
        self.containers
            .values()
            .map(|t| {
                (
                    t.runner.clone(),
                    t.facts.name.clone(),
                    t.job.as_ref().map(|j| j.id.clone()),
                    t.facts
                        .endpoints
                        .iter()
                        .flat_map(|e| e.addrs.clone())
                        .collect(),
                )
            })
            .collect()
    }
}

fn group_of(facts: &ContainerFacts, runner: &str) -> Option<GroupKey> {
    if let Some(job) = facts.labels.get(label::JOB_ID).filter(|j| !j.is_empty()) {
        return Some(GroupKey::Job {
            runner: runner.to_owned(),
            job: job.clone(),
        });
    }
    // Without labels, the first user-defined network (by id, so the choice
    // is stable) stands for the job.
    facts
        .endpoints
        .iter()
        .filter(|e| !SHARED_NETWORKS.contains(&e.network_name.as_str()))
        .map(|e| &e.network_id)
        .min()
        .map(|network| GroupKey::Network {
            runner: runner.to_owned(),
            network: network.clone(),
        })
}

/// A GitLab job from the labels its runner put on the container.
pub fn job_from_labels(labels: &HashMap<String, String>) -> Option<JobIdentity> {
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
    let id = get(label::JOB_ID)?;
    let url = get(label::JOB_URL);
    // `https://host/group/proj/-/jobs/42` names the project; the labels
    // carry only its numeric id.
    let project = url
        .as_deref()
        .and_then(|u| u.split_once("://").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_once('/').map(|(_, path)| path))
        .and_then(|path| {
            path.split_once("/-/")
                .map(|(project, _)| project.to_owned())
        })
        .or_else(|| get(label::PROJECT_ID));
    Some(JobIdentity {
        ci: "gitlab".into(),
        id,
        name: get(label::JOB_NAME),
        url,
        project,
        pipeline: get(label::PIPELINE_ID),
        git_ref: get(label::JOB_REF),
        source: Source::Labels,
    })
}

#[cfg(test)]
mod tests;
