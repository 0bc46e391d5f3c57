//! Docker executor jobs: which containers belong to which CI job, from the
//! Docker Engine API.
//!
//! GitLab Runner's docker executor starts a job's build container and its
//! service containers (postgres, redis, ...) below the runner's cgroup.
//! They must reach each other, on any port, and no other job's containers.
//! The agent follows the daemon's container and network events (no
//! polling), keeps each job's containers, addresses and aliases in a
//! [`Registry`], and writes the groups into `EGRET_CT_GROUP` and
//! `EGRET_PEERS`, which the verdict reads as its last step before a
//! refusal. The DNS proxy answers a job's queries for its services' names
//! from the same registry. Until the agent knows a container, its traffic
//! is judged as any other: a service is lateral, and refused.
//!
//! With no Docker socket (shell executors, GitHub runners) the watcher
//! waits for one to appear and nothing else changes. When the daemon goes
//! away the maps keep what they hold (containers may live on); when it
//! comes back the agent lists what runs and catches up.

mod registry;

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use bollard::{
    Docker,
    models::{EventMessage, EventMessageTypeEnum},
    query_parameters::{EventsOptions, ListContainersOptions},
};
use egret_common::maps::{CONTAINER_GROUPS, GROUP_PEERS, PeerKey};
use futures_util::StreamExt as _;

pub use registry::{ContainerFacts, Endpoint, GroupKey, Registry, job_from_labels, label};

use crate::{datapath::Pins, jobs::Jobs};

/// The registry, shared by the watcher (which writes it) and the DNS
/// proxies (which answer service names from it).
pub type SharedRegistry = Arc<RwLock<Registry>>;

/// How often the watcher looks for a socket that is not there yet, or
/// tries again after the daemon went away.
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait for one API call.
const API_TIMEOUT_S: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("open the pinned map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

/// The agent's handles on the two maps, and what it last wrote to them.
struct PeerMaps {
    groups: BpfHashMap<MapData, u64, u64>,
    peers: BpfHashMap<MapData, PeerKey, u64>,
    written_groups: HashMap<u64, u64>,
    written_peers: HashMap<PeerKey, u64>,
}

impl PeerMaps {
    fn open(pins: &Pins) -> Result<Self, DockerError> {
        fn open_map<K: aya::Pod, V: aya::Pod>(
            pins: &Pins,
            name: &'static str,
        ) -> Result<BpfHashMap<MapData, K, V>, DockerError> {
            let data = MapData::from_pin(pins.map(name))
                .map_err(|source| DockerError::Map { name, source })?;
            BpfHashMap::try_from(Map::HashMap(data))
                .map_err(|source| DockerError::Map { name, source })
        }
        let mut maps = Self {
            groups: open_map(pins, CONTAINER_GROUPS)?,
            peers: open_map(pins, GROUP_PEERS)?,
            written_groups: HashMap::new(),
            written_peers: HashMap::new(),
        };
        // What an earlier agent left counts as written, so the first sync
        // removes what no longer runs.
        maps.written_groups = maps.groups.iter().flatten().collect();
        maps.written_peers = maps.peers.iter().flatten().collect();
        Ok(maps)
    }

    /// Brings the maps to what `registry` says: addresses before the
    /// container's group on the way in, the group before its addresses on
    /// the way out, so a container never points at a half-written group.
    fn sync(&mut self, registry: &Registry) {
        let (groups, peers) = (registry.container_groups(), registry.peers());
        for (key, value) in &peers {
            if self.written_peers.get(key) != Some(value) {
                match self.peers.insert(key, value, 0) {
                    Ok(()) => {
                        self.written_peers.insert(*key, *value);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot write a container address"),
                }
            }
        }
        for (key, value) in &groups {
            if self.written_groups.get(key) != Some(value) {
                match self.groups.insert(key, value, 0) {
                    Ok(()) => {
                        self.written_groups.insert(*key, *value);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot write a container's group"),
                }
            }
        }
        self.written_groups
            .retain(|key, _| groups.contains_key(key) || self.groups.remove(key).is_err());
        self.written_peers
            .retain(|key, _| peers.contains_key(key) || self.peers.remove(key).is_err());
    }
}

/// Where the watcher finds what it needs from the rest of the agent.
pub struct WatchContext {
    pub socket: PathBuf,
    pub pins: Pins,
    pub cgroup_root: PathBuf,
    pub registry: SharedRegistry,
    pub jobs: Arc<Jobs>,
    /// Every runner's name and cgroup directory, as the last apply left
    /// them.
    pub runners: Box<dyn Fn() -> Vec<(String, PathBuf)> + Send + Sync>,
}

impl WatchContext {
    fn runner_cgroups(&self) -> Vec<(String, String)> {
        (self.runners)()
            .into_iter()
            .filter_map(|(name, dir)| {
                Some((name, crate::runners::relative(&self.cgroup_root, &dir)?))
            })
            .collect()
    }
}

/// Follows the Docker daemon until the task is dropped.
pub async fn watch(ctx: WatchContext) -> Result<(), DockerError> {
    let mut maps = PeerMaps::open(&ctx.pins)?;
    let mut said_absent = false;
    loop {
        if !ctx.socket.exists() {
            if !said_absent {
                tracing::info!(socket = %ctx.socket.display(), "no Docker socket; watching for one");
                said_absent = true;
            }
            tokio::time::sleep(RETRY).await;
            continue;
        }
        said_absent = false;
        match follow(&ctx, &mut maps).await {
            Ok(()) => tracing::warn!("the Docker daemon went away; the maps keep what they hold"),
            Err(e) => tracing::warn!(error = %e, "cannot follow the Docker daemon"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One connection to the daemon: events first (so nothing falls between),
/// then the containers already running, then every event as it comes.
async fn follow(ctx: &WatchContext, maps: &mut PeerMaps) -> Result<(), bollard::errors::Error> {
    let path = ctx.socket.to_string_lossy();
    let docker = Docker::connect_with_unix(&path, API_TIMEOUT_S, bollard::API_DEFAULT_VERSION)?
        .negotiate_version()
        .await?;
    let filters = HashMap::from([(
        "type".to_owned(),
        vec!["container".to_owned(), "network".to_owned()],
    )]);
    let mut events = docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    let running = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            ..Default::default()
        }))
        .await?;
    let mut alive = HashSet::new();
    for summary in running {
        let Some(id) = summary.id else { continue };
        if let Some(facts) = inspect(&docker, &id, &ctx.cgroup_root).await {
            record(ctx, facts);
        }
        alive.insert(id);
    }
    ctx.registry
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .retain(&alive);
    publish(ctx, maps);
    tracing::info!(
        containers = ctx.registry.read().unwrap_or_else(|e| e.into_inner()).len(),
        "following the Docker daemon"
    );
    while let Some(event) = events.next().await {
        let event = event?;
        apply(ctx, &docker, &event).await;
        publish(ctx, maps);
    }
    Ok(())
}

async fn apply(ctx: &WatchContext, docker: &Docker, event: &EventMessage) {
    let action = event.action.as_deref().unwrap_or_default();
    let actor = event.actor.as_ref();
    let id = match event.typ {
        Some(EventMessageTypeEnum::CONTAINER) => actor.and_then(|a| a.id.clone()),
        Some(EventMessageTypeEnum::NETWORK) => actor
            .and_then(|a| a.attributes.as_ref())
            .and_then(|attrs| attrs.get("container").cloned()),
        _ => None,
    };
    let Some(id) = id else { return };
    match action {
        "start" | "unpause" | "restart" | "connect" | "disconnect" => {
            match inspect(docker, &id, &ctx.cgroup_root).await {
                Some(facts) => record(ctx, facts),
                None => forget(ctx, &id),
            }
        }
        "die" | "destroy" | "stop" => forget(ctx, &id),
        _ => {}
    }
}

fn record(ctx: &WatchContext, facts: ContainerFacts) {
    let runners = ctx.runner_cgroups();
    ctx.registry
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .upsert(facts, &runners);
}

fn forget(ctx: &WatchContext, id: &str) {
    ctx.registry
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
}

/// Writes the registry to the maps, and its labelled jobs to the job cache.
fn publish(ctx: &WatchContext, maps: &mut PeerMaps) {
    let registry = ctx.registry.read().unwrap_or_else(|e| e.into_inner());
    maps.sync(&registry);
    ctx.jobs.cache.set_labelled(registry.jobs());
}

/// What a running container is, from the API and `/proc`; `None` when it
/// is not running (or went away meanwhile).
async fn inspect(docker: &Docker, id: &str, cgroup_root: &Path) -> Option<ContainerFacts> {
    let c = docker.inspect_container(id, None).await.ok()?;
    let state = c.state?;
    if state.running != Some(true) {
        return None;
    }
    let pid = u32::try_from(state.pid?).ok().filter(|p| *p > 0)?;
    let cgroup = crate::jobs::ProcFs::default().cgroup(pid)?;
    let cgroup_id = std::fs::metadata(cgroup_root.join(cgroup.trim_start_matches('/')))
        .ok()?
        .ino();
    let endpoints = c
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(network_name, ep)| Endpoint {
            network_id: ep.network_id.unwrap_or_default(),
            network_name,
            addrs: [ep.ip_address, ep.global_ipv6_address]
                .into_iter()
                .flatten()
                .filter_map(|a| a.parse().ok())
                .collect(),
            aliases: ep.aliases.unwrap_or_default(),
        })
        .collect();
    Some(ContainerFacts {
        id: c.id.unwrap_or_else(|| id.to_owned()),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
        endpoints,
        cgroup,
        cgroup_id,
    })
}
