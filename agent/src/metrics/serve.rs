//! `--metrics-listen`: `GET /metrics` over HTTP/1 (hyper). A scrape costs
//! the agent at most one status a second whatever the request rate, and
//! clients are few and bounded in time, so a flood of requests cannot slow
//! the agent's loop, its DNS proxies or the kernel's verdicts.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Mutex, Semaphore},
};

use crate::status::Status;

/// Scrapes served at once; more wait their turn in the kernel's backlog.
const CLIENTS: usize = 8;
/// A rendered scrape is reused for this long.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// A client that has not sent its request head by then, or not finished
/// reading the answer, is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the agent for its status; `None` when it does not answer.
pub type StatusSource =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Option<Status>> + Send + Sync>;

/// Statuses asked of the agent's loop over its control channel, as
/// `egret status` gets them.
pub fn from_agent(
    requests: tokio::sync::mpsc::Sender<crate::control::AgentRequest>,
) -> StatusSource {
    Arc::new(move || {
        let requests = requests.clone();
        Box::pin(async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            requests
                .send(crate::control::AgentRequest::Status(reply))
                .await
                .ok()?;
            let value = tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .ok()?
                .ok()?;
            serde_json::from_value(value).ok()
        })
    })
}

/// `9464` means the loopback address; an address with a port is taken as
/// it is.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        format!("'{text}' is neither a port (9464, on loopback) nor an address with a port (0.0.0.0:9464, [::1]:9464)")
    })
}

pub async fn serve(listener: TcpListener, source: StatusSource) {
    let seats = Arc::new(Semaphore::new(CLIENTS));
    let cache: Arc<Mutex<Option<(Instant, Bytes)>>> = Arc::default();
    loop {
        let Ok(seat) = seats.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint cannot accept a client");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (source, cache) = (source.clone(), cache.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, source.clone(), cache.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, connection).await;
            drop(seat);
        });
    }
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    source: StatusSource,
    cache: Arc<Mutex<Option<(Instant, Bytes)>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |code: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = code;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"egret serves /metrics\n"),
        ));
    }
    let mut cached = cache.lock().await;
    if let Some((at, body)) = cached.as_ref()
        && at.elapsed() < FRESH_FOR
    {
        return Ok(reply(StatusCode::OK, body.clone()));
    }
    let Some(status) = source().await else {
        return Ok(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"the agent did not answer\n"),
        ));
    };
    let body = Bytes::from(super::render(&status));
    *cached = Some((Instant::now(), body.clone()));
    Ok(reply(StatusCode::OK, body))
}
