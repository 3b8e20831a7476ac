//! The local API on `DOCKHAND_API_LISTEN` (loopback by default): read-only
//! JSON views of the supervisor's latest snapshot. Anything but GET or HEAD
//! is refused with 405; unknown paths get 404.

use crate::status::Snapshot;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;

/// Serves until `shutdown` resolves; in-flight requests are not waited for
/// (they are tiny reads of memory).
pub async fn serve(
    listener: TcpListener,
    status: Arc<RwLock<Snapshot>>,
    proxy: dockhand_proxy::Proxy,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cause = %e, "local API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let status = Arc::clone(&status);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let status = Arc::clone(&status);
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&req, &status, &proxy)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(cause = %e, "local API connection ended with an error");
            }
        });
    }
}

fn handle(
    req: &Request<Incoming>,
    status: &RwLock<Snapshot>,
    proxy: &dockhand_proxy::Proxy,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed here\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let snapshot = match status.read() {
        Ok(s) => s.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    if req.uri().path() == "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(
            &snapshot,
            |svc| proxy.requests(svc),
        ))));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    let body = match req.uri().path() {
        "/v1/metadata" => snapshot.metadata_json(),
        "/v1/tasks" => snapshot.tasks_json(),
        "/v1/services" => snapshot.services_json(),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "no such endpoint; try /v1/metadata, /v1/tasks, /v1/services, /metrics\n",
            )
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
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
