//! The local API on `DOCKHAND_API_LISTEN` (loopback by default): read-only
//! JSON views of the supervisor's latest snapshot and of its state-change
//! stream. Anything but GET or HEAD is refused with 405; unknown paths get
//! 404.
//!
//! It is small and must never take the agent down: at most
//! [`MAX_CONNECTIONS`] clients at once (more wait in the kernel's backlog),
//! and a client has [`HEADER_TIMEOUT`] to send each request's headers, idle
//! keep-alive connections included.

use crate::changes::Changes;
use crate::status::Snapshot;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Clients served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers (and how long an idle
/// keep-alive connection is kept).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// State changes returned per request, at most.
const MAX_CHANGES: usize = 1000;

/// What the API reads.
#[derive(Clone)]
pub struct ApiState {
    pub status: Arc<RwLock<Snapshot>>,
    pub proxy: dockhand_proxy::Proxy,
    pub changes: Arc<Changes>,
    /// Managed mode: the control endpoint as the session sees it.
    pub control: Option<crate::managed::SharedStatus>,
}

/// Serves until `shutdown` is signaled; in-flight requests are tiny reads
/// of memory and finish at once.
pub async fn serve(listener: TcpListener, state: ApiState, shutdown: drain::Watch) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let signaled = shutdown.signaled();
    tokio::pin!(signaled);
    loop {
        let permit = tokio::select! {
            _ = &mut signaled => return,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, _) = tokio::select! {
            _ = &mut signaled => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cause = %e, "local API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&req, &state)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .half_close(true)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(cause = %e, "local API connection ended with an error");
            }
        });
    }
}

fn handle(req: &Request<Incoming>, state: &ApiState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed here\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let snapshot = match state.status.read() {
        Ok(s) => s.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let body = match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(
                &snapshot,
                &state.proxy,
            ))));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return r;
        }
        "/v1/metadata" => {
            let mut m = snapshot.metadata_json();
            if let Some(c) = &state.control {
                let c = c.read().map(|c| c.clone()).unwrap_or_default();
                if let Some(arn) = &c.instance_arn {
                    m["ContainerInstanceArn"] = json!(arn);
                }
                m["ControlEndpoint"] = json!({
                    "Url": c.url,
                    "Connected": c.connected,
                    "Since": c.since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    "LastError": c.last_error,
                    "Ec2InstanceId": c.ec2_instance_id,
                    "Draining": c.draining,
                });
            }
            m
        }
        "/v1/tasks" => snapshot.tasks_json(),
        "/v1/services" => snapshot.services_json(),
        "/v1/changes" => {
            let after = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("after="))
                .map(str::parse::<u64>);
            let after = match after {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "after= must be a sequence number\n",
                    )
                }
            };
            changes_json(&state.changes, after)
        }
        _ => return text(
            StatusCode::NOT_FOUND,
            "no such endpoint; try /v1/metadata, /v1/tasks, /v1/services, /v1/changes, /metrics\n",
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `GET /v1/changes?after=N`: the task state changes after N, oldest first.
fn changes_json(changes: &Changes, after: u64) -> serde_json::Value {
    let (list, oldest) = changes.since(after, MAX_CHANGES);
    json!({
        "Changes": list.iter().map(|c| json!({
            "Sequence": c.report.sequence,
            "ServiceName": c.service,
            "TaskId": c.task_id,
            "Revision": c.revision,
            "DesiredStatus": c.desired,
            "Change": c.report,
        })).collect::<Vec<_>>(),
        "Oldest": oldest,
        "Last": changes.last(),
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}
