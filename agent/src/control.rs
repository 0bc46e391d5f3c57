//! The agent's local API: newline-delimited, versioned JSON on a Unix socket.
//!
//! Request: `{"v":1,"cmd":"status"}`, `{"v":1,"cmd":"reload"}`,
//! `{"v":1,"cmd":"events","follow":true,"runner":"ci","job":"4242"}`.
//! Reply: `{"v":1,"ok":true,...}` or `{"v":1,"ok":false,"error":"..."}`;
//! an events stream then carries one event object per line.
//!
//! Only root (or members of `--socket-group`) may talk to it; the peer's
//! credentials come from the kernel (SO_PEERCRED). Requests are bounded in
//! size and time, connections in number, and a subscriber that cannot keep
//! up is cut off with a notice, so no client can stall the agent.

use crate::{
    IoError,
    events::{EventLine, Hub},
};
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, broadcast, mpsc, oneshot},
};

pub const PROTOCOL_VERSION: u64 = 1;
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CLIENTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("no agent is listening on {0} (is `egret agent` running, with this --socket?)")]
    NoAgent(PathBuf),
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("unexpected reply from the agent: {0}")]
    Protocol(String),
}

/// Requests only the agent's main loop can answer.
pub enum AgentRequest {
    Status(oneshot::Sender<Value>),
    Reload(oneshot::Sender<Result<String, String>>),
}

/// Parses one request line. Fed by any client the socket admits: it never
/// panics (the fuzz target `control_request` holds it to that).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let request: Request =
        serde_json::from_slice(line).map_err(|e| format!("invalid request: {e}"))?;
    if request.v != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported; this agent speaks version {PROTOCOL_VERSION}",
            request.v
        ));
    }
    Ok(request)
}

#[derive(Deserialize, Debug)]
pub struct Request {
    v: u64,
    cmd: String,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    runner: Option<String>,
    /// Only the events of the CI job with this id.
    #[serde(default)]
    job: Option<String>,
}

#[derive(Serialize)]
struct Reply<'a> {
    v: u64,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn error_line(message: &str) -> String {
    format!(
        "{}\n",
        serde_json::to_string(&Reply {
            v: PROTOCOL_VERSION,
            ok: false,
            error: Some(message),
        })
        .unwrap_or_default()
    )
}

/// Creates the socket: parent directory, stale socket removed, mode 0600
/// (0660 and the group when one is given).
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ControlError> {
    let io = |op: &'static str, source| ControlError::from(IoError::at(op, path)(source));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create directory for", e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io(
                "bind",
                std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another agent is listening on this socket",
                ),
            ));
        }
        std::fs::remove_file(path).map_err(|e| io("remove stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("bind", e))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", e))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| io("chown", std::io::Error::from(e)))?;
    }
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    hub: Arc<Hub>,
    agent: mpsc::Sender<AgentRequest>,
    group: Option<u32>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let _ = tokio::time::timeout(
                WRITE_TIMEOUT,
                stream.write_all(error_line("too many clients").as_bytes()),
            )
            .await;
            continue;
        };
        let (hub, agent) = (hub.clone(), agent.clone());
        tokio::spawn(async move {
            handle(stream, hub, agent, group).await;
            drop(permit);
        });
    }
}

fn authorized(stream: &UnixStream, group: Option<u32>) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    if cred.uid() == 0 {
        return Ok(());
    }
    if let Some(gid) = group
        && (cred.gid() == gid
            || cred
                .pid()
                .is_some_and(|pid| supplementary_groups(pid).contains(&gid)))
    {
        return Ok(());
    }
    Err(format!(
        "permission denied: uid {} may not use the egret socket",
        cred.uid()
    ))
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

async fn handle(
    stream: UnixStream,
    hub: Arc<Hub>,
    agent: mpsc::Sender<AgentRequest>,
    group: Option<u32>,
) {
    if let Err(why) = authorized(&stream, group) {
        tracing::warn!("control: {why}");
        let mut stream = stream;
        let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(error_line(&why).as_bytes()))
            .await;
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES + 1));
    let mut line = Vec::new();
    let request =
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => Err("timed out waiting for a request".to_owned()),
            Ok(Err(e)) => Err(format!("read failed: {e}")),
            Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST_BYTES => {
                Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"))
            }
            Ok(Ok(_)) => parse_request(&line),
        };
    let reply = match request {
        Err(why) => error_line(&why),
        Ok(req) => match req.cmd.as_str() {
            "status" => ask(&agent, AgentRequest::Status).await.map_or_else(
                |why| error_line(&why),
                |status| {
                    format!(
                        "{}\n",
                        json!({ "v": PROTOCOL_VERSION, "ok": true, "status": status })
                    )
                },
            ),
            "reload" => match ask(&agent, AgentRequest::Reload).await {
                Ok(Ok(message)) => format!(
                    "{}\n",
                    json!({ "v": PROTOCOL_VERSION, "ok": true, "message": message })
                ),
                Ok(Err(why)) | Err(why) => error_line(&why),
            },
            "events" => {
                let filter = Filter {
                    runner: req.runner.as_deref(),
                    job: req.job.as_deref(),
                };
                stream_events(&mut write, &hub, req.follow, filter).await;
                return;
            }
            other => error_line(&format!(
                "unknown command '{other}' (status, reload, events)"
            )),
        },
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(reply.as_bytes())).await;
}

async fn ask<T>(
    agent: &mpsc::Sender<AgentRequest>,
    make: impl FnOnce(oneshot::Sender<T>) -> AgentRequest,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    agent
        .send(make(tx))
        .await
        .map_err(|_| "the agent is shutting down".to_owned())?;
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .map_err(|_| "the agent did not answer in time".to_owned())?
        .map_err(|_| "the agent dropped the request".to_owned())
}

/// Which events a subscriber wants: all, or a runner's, or a job's.
#[derive(Clone, Copy)]
struct Filter<'a> {
    runner: Option<&'a str>,
    job: Option<&'a str>,
}

impl Filter<'_> {
    fn wants(&self, l: &EventLine) -> bool {
        self.runner.is_none_or(|r| r == l.runner)
            && self.job.is_none_or(|j| l.job.as_deref() == Some(j))
    }
}

async fn stream_events(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    hub: &Hub,
    follow: bool,
    filter: Filter<'_>,
) {
    // Subscribe before reading the backlog so nothing falls in between.
    let mut rx = hub.subscribe();
    let wanted = |l: &EventLine| filter.wants(l);
    let mut out = format!("{}\n", json!({ "v": PROTOCOL_VERSION, "ok": true }));
    if !follow {
        for l in hub.recent().iter().filter(|l| wanted(l)) {
            out.push_str(&l.json);
            out.push('\n');
        }
        let _ = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(out.as_bytes())).await;
        return;
    }
    if tokio::time::timeout(WRITE_TIMEOUT, write.write_all(out.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let line = match rx.recv().await {
            Ok(l) => l,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let notice =
                    json!({ "notice": "cut off: this subscriber fell behind", "missed": missed });
                let _ = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    write.write_all(format!("{notice}\n").as_bytes()),
                )
                .await;
                tracing::warn!(
                    missed,
                    "control: disconnected an events subscriber that fell behind"
                );
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !wanted(&line) {
            continue;
        }
        let mut bytes = line.json.clone().into_bytes();
        bytes.push(b'\n');
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!("control: disconnected an events subscriber that stopped reading");
                return;
            }
        }
    }
}

/// Client side, for the CLI: sends one request, returns the first reply
/// line and a reader positioned after it.
pub fn request(
    socket: &Path,
    body: &Value,
) -> Result<(Value, BufReader<std::os::unix::net::UnixStream>), ControlError> {
    let mut stream =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ControlError::NoAgent(socket.to_owned())
            }
            _ => IoError::at("connect to", socket)(e).into(),
        })?;
    let mut line = serde_json::to_vec(body).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(IoError::at("write to", socket))?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader
        .read_line(&mut first)
        .map_err(IoError::at("read from", socket))?;
    let reply: Value = serde_json::from_str(&first)
        .map_err(|_| ControlError::Protocol(first.trim().to_owned()))?;
    if reply["ok"] != true {
        return Err(ControlError::Refused(
            reply["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned(),
        ));
    }
    Ok((reply, reader))
}
