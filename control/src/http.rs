//! The HTTP side: one `POST /` per operation (JSON 1.1), authenticated by
//! SigV4, answered in JSON; `GET /health` (unauthenticated) for a load
//! balancer in front of the replicas, and `GET /metrics` (Prometheus text:
//! API latency by operation). Plain HTTP, or HTTPS when a
//! certificate is configured.

use crate::api::{self, ApiError};
use crate::auth;
use crate::Control;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Request bodies larger than this are refused (ECS's own limit is 1 MB
/// for most calls; a task definition is at most 64 KiB).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Clients at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// A client has this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// And then this long to send the body (2 MiB in 30 s is 70 KB/s). A
/// connection slot held by a body that never ends would otherwise be held
/// for good: 4096 of them and no agent could poll.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

fn json_response(status: u16, body: &serde_json::Value, request_id: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    r
}

fn error_response(e: &ApiError, request_id: &str) -> Response<Full<Bytes>> {
    json_response(e.status, &e.body(), request_id)
}

/// Answers one HTTP request.
async fn handle(ctl: Arc<Control>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let request_id = crate::ids::request_id();
    if req.method() == Method::GET && req.uri().path() == "/health" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        *r.status_mut() = StatusCode::OK;
        return r;
    }
    if req.method() == Method::GET && req.uri().path() == "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render())));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    if req.method() != Method::POST {
        return error_response(
            &ApiError::new(
                "UnknownOperationException",
                "only POST / is served (and GET /health, GET /metrics)",
            ),
            &request_id,
        );
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect());
    let bytes = match read.await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return error_response(
                &ApiError::new(
                    "SerializationException",
                    format!("cannot read the request body (at most {MAX_BODY_BYTES} bytes): {e}"),
                ),
                &request_id,
            )
        }
        Err(_) => {
            let mut e = ApiError::new(
                "RequestTimeoutException",
                format!(
                    "the request body did not arrive within {}s",
                    BODY_TIMEOUT.as_secs()
                ),
            );
            e.status = 408;
            let mut r = error_response(&e, &request_id);
            // The rest of the body may still come: not on this connection.
            r.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            return r;
        }
    };
    // Header values as the text of their wire bytes (latin-1), the way the
    // signer saw them.
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.as_bytes().iter().map(|b| char::from(*b)).collect(),
            )
        })
        .collect();
    let sig_req = auth::sigv4::Request {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body: &bytes,
    };
    let caller = match auth::authenticate(&sig_req, &ctl.creds, &ctl.cfg.region, SystemTime::now())
    {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(code = e.code, "request refused: {}", e.message);
            return error_response(&e, &request_id);
        }
    };
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: serde_json::Value = if bytes.is_empty() {
        serde_json::json!({})
    } else {
        match dockhand_model::json::parse_strict(&String::from_utf8_lossy(&bytes)) {
            Ok(v) => v,
            Err(e) => {
                return error_response(
                    &ApiError::new("SerializationException", e.to_string()),
                    &request_id,
                )
            }
        }
    };
    let started = std::time::Instant::now();
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let result = api::dispatch(&ctl, &caller, &target, host, body).await;
    crate::metrics::api_call(&target, started.elapsed(), result.is_ok());
    match result {
        Ok(v) => json_response(200, &v, &request_id),
        Err(e) => {
            if e.status >= 500 {
                tracing::error!(target, code = e.code, "{}", e.message);
            } else {
                tracing::debug!(target, code = e.code, "{}", e.message);
            }
            error_response(&e, &request_id)
        }
    }
}

/// A connection to serve: plain TCP, or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Serves until `shutdown` is signaled; each connection finishes its
/// request first.
pub async fn serve(
    ctl: Arc<Control>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: drain::Watch,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let signaled = shutdown.clone().signaled();
    tokio::pin!(signaled);
    loop {
        let permit = tokio::select! {
            _ = &mut signaled => return,
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut signaled => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctl = Arc::clone(&ctl);
        let tls = tls.clone();
        let watch = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let io: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, cause = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let ctl = Arc::clone(&ctl);
                async move { Ok::<_, std::convert::Infallible>(handle(ctl, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .half_close(true)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let signaled = watch.signaled();
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, cause = %e, "connection ended with an error");
                    }
                }
                release = signaled => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    drop(release);
                }
            }
        });
    }
}
