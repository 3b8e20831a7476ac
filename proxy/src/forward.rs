//! Forwarding one request: route, pick a backend, rewrite headers, send,
//! retry when that is safe, and stream the answer back.
//!
//! Retries (at most three attempts, each on another backend when there is
//! one): a request is tried again when it cannot have reached a backend (the
//! connection failed, or hyper hands the unsent request back from a pooled
//! connection the backend had just closed), or when it is idempotent and has
//! no body, so sending it twice is harmless (a task killed mid-request).
//! Nothing else is retried.

use crate::backend::{Backend, InFlight};
use crate::health::describe_io;
use crate::route::Route;
use crate::{Inner, ProxyBody};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use hyper::{Request, Response, StatusCode, Uri, Version};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    /// The listener's address (its port is what the client reached).
    pub local: SocketAddr,
    /// It came through a TLS listener.
    pub tls: bool,
}

/// What a forwarded request turned into, for the metrics and access log.
#[derive(Default)]
pub(crate) struct Seen {
    pub route: Option<Arc<Route>>,
    pub backend: Option<Arc<Backend>>,
}

/// A permanent redirect to the same URL over HTTPS (`host` without port).
pub(crate) fn https_location(host: &str, https_port: u16, target: &str) -> String {
    if https_port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{https_port}{target}")
    }
}

pub(crate) fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether the request asks to switch protocols (WebSocket and the like).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those named in `Connection`.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the keys, comparing standard
    // names by value, instead of a hashed lookup per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let upgrade = headers.get(UPGRADE).cloned();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(UPGRADE);
    if keep_upgrade {
        if let Some(u) = upgrade {
            headers.insert(UPGRADE, u);
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    use hyper::header::{PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING};
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == TE
        || name == TRAILER
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Sets the `X-Forwarded-*` headers. `For` is appended to what the client
/// sent; the others describe this hop and replace any sent.
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    host: Option<&HeaderValue>,
) {
    let ip = client.peer.ip().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if client.tls { "https" } else { "http" }),
    );
    // Replaced, or removed when there is no host to name: a client's own
    // would otherwise reach the task as this proxy's word.
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&client.local.port().to_string()) {
        headers.insert(X_FORWARDED_PORT, v);
    }
}

/// The host a request is for, lower case, without the port.
fn request_host(req: &Request<ClientBody>) -> std::borrow::Cow<'_, str> {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    crate::h1::host_key(raw)
}

fn idempotent(m: &hyper::Method) -> bool {
    use hyper::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A client's request body: from hyper's HTTP/1.1 server, or from an
/// HTTP/2 stream (http2).
pub(crate) enum ClientBody {
    H1(Incoming),
    H2(crate::http2::RequestBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = crate::BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        match self.get_mut() {
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(crate::BoxError::from),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

/// A response body that keeps its request counted as in flight until done.
struct Tracked {
    inner: Incoming,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = crate::BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(crate::BoxError::from)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The size of a request's head as the client sent it: request line and
/// header lines with their CRLFs. hyper's buffer limit is not exact (it
/// lets through up to about twice `max_header_bytes`), so the limit is
/// checked here, on what was parsed.
fn head_bytes(req: &Request<ClientBody>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len());
    // "METHOD target HTTP/1.1\r\n"
    let line = req.method().as_str().len() + 1 + target + 11;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + 2 + v.len() + 2)
        .sum();
    line + headers + 2
}

/// Forwards one client request. Never fails: every problem is an answer.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    client: ClientInfo,
    mut req: Request<ClientBody>,
    seen: &mut Seen,
) -> Response<ProxyBody> {
    if req.method() == hyper::Method::CONNECT {
        // A reverse proxy does not open tunnels to its tasks.
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "dockhand: CONNECT is not supported\n".into(),
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"),
        );
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let limit = inner.settings.max_header_bytes;
    if head_bytes(&req) > limit {
        let mut r = text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("dockhand: request line and headers exceed {limit} bytes\n"),
        );
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without a Host, or with more
    // than one, is refused (routing reads the first, the task might read
    // the second).
    let hosts = req.headers().get_all(HOST).iter().count();
    let valid = req
        .headers()
        .get(HOST)
        .is_none_or(|h| crate::h1::valid_host(h.as_bytes()));
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) || !valid {
        let mut r = text(
            StatusCode::BAD_REQUEST,
            "dockhand: a request needs exactly one Host header (HTTP/1.1), naming a host and at most a port\n".into(),
        );
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    if req.uri().path() == inner.settings.health_path {
        return if inner.draining.load(std::sync::atomic::Ordering::Acquire) {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        } else {
            text(StatusCode::OK, "ok\n".into())
        };
    }
    let (route, algorithm, h2) = {
        let host = request_host(&req);
        let path = req.uri().path();
        let table = inner.table();
        match table.find(&host, path) {
            Some(m) if m.redirect_https && !client.tls => {
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let location = https_location(&host, inner.settings.https_port, target);
                let mut r = text(StatusCode::PERMANENT_REDIRECT, String::new());
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(hyper::header::LOCATION, v);
                }
                seen.route = Some(Arc::clone(m.route));
                return r;
            }
            Some(m) => (Arc::clone(m.route), m.algorithm, m.backend_h2),
            None => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("dockhand: no route for host {host:?} and path {path:?}\n"),
                )
            }
        }
    };

    route
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    seen.route = Some(Arc::clone(&route));
    let upgrade = is_upgrade(req.headers());
    let h2_client = req.version() == Version::HTTP_2;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let original_host = req.headers().get(HOST).cloned();
    let (mut parts, body) = req.into_parts();
    // Without a Host header (HTTP/1.0), an absolute URI's authority names it.
    let host_value = original_host.clone().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // `TE: trailers` says the client takes trailers (gRPC needs it said);
    // the one TE value a proxy may pass on.
    let trailers = parts
        .headers
        .get_all(hyper::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if trailers {
        parts
            .headers
            .insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
    set_forwarded(&mut parts.headers, &client, host_value.as_ref());
    parts.version = Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        // Absolute form from a client: backends get origin form.
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    }
    if !parts.headers.contains_key(HOST) {
        if let Some(h) = host_value {
            parts.headers.insert(HOST, h);
        }
    }
    if h2_client && !h2 && !trailers && body.is_end_stream() {
        // The common HTTP/2 stream: on a raw task connection (raw.rs).
        let mut backend = None;
        let r = crate::raw::Raw {
            route: &route,
            algorithm,
            request: crate::raw::request_bytes(&parts),
            idempotent: idempotent(&parts.method),
            head: parts.method == hyper::Method::HEAD,
        };
        let resp = crate::raw::forward(&inner, r, &mut backend).await;
        seen.backend = backend;
        return resp;
    }
    // Boxed: hyper's client futures are large, and every request's future
    // would carry their size (copied as it is created) if they were inline.
    let to_task = ToTask {
        route,
        algorithm,
        h2,
        client_upgrade,
    };
    Box::pin(send_to_task(to_task, &inner, parts, body, seen)).await
}

/// A request on its way to a task through hyper's client: what [`handle`]
/// found out about it.
struct ToTask {
    route: Arc<Route>,
    algorithm: crate::route::Algorithm,
    /// The route's tasks speak HTTP/2.
    h2: bool,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Sends the request (its head already rewritten for the task), trying
/// again where that is safe, and returns the task's answer or the
/// proxy's own.
async fn send_to_task(
    t: ToTask,
    inner: &Inner,
    mut parts: hyper::http::request::Parts,
    body: ClientBody,
    seen: &mut Seen,
) -> Response<ProxyBody> {
    let ToTask {
        route,
        algorithm,
        h2,
        client_upgrade,
    } = t;
    if h2 {
        // The route's tasks speak HTTP/2: every attempt goes in that shape.
        to_h2(&mut parts);
    }
    // An idempotent request without a body may be sent again if its backend
    // fails mid-way (a task killed under load); keep what rebuilding it takes.
    let replay = (body.is_end_stream() && idempotent(&parts.method)).then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.version,
            parts.headers.clone(),
        )
    });
    let mut request = Some(Request::from_parts(parts, body.boxed()));

    let settings = &inner.settings;
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut last_error = String::from("no attempt made");
    for _attempt in 0..3 {
        let Some(backend) = route.pick_attempt(algorithm, &tried) else {
            break;
        };
        // The request is here if no earlier attempt sent it, or rebuilt if
        // sending it again is safe.
        let Some(req_now) = request.take().or_else(|| {
            replay.as_ref().map(|(method, uri, version, headers)| {
                let mut r = Request::new(
                    Full::new(Bytes::new())
                        .map_err(|never| match never {})
                        .boxed(),
                );
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri.clone();
                *r.version_mut() = *version;
                *r.headers_mut() = headers.clone();
                r
            })
        }) else {
            break;
        };
        let in_flight = backend.begin_request();
        let checkout = if h2 {
            backend
                .checkout_h2(settings.connect_timeout)
                .await
                .map(Sender::H2)
        } else {
            backend
                .checkout(settings.connect_timeout)
                .await
                .map(Sender::H1)
        };
        let mut sender = match checkout {
            Ok(s) => s,
            Err(e) => {
                // Nothing was sent: the request is intact for another try.
                let why = describe_io(&e);
                inner.eject(&route, &backend, &why);
                last_error = format!("connect to {}: {why}", backend.addr);
                request = Some(req_now);
                tried.push(backend);
                continue;
            }
        };
        let sent = tokio::time::timeout(settings.response_timeout, async {
            match &mut sender {
                Sender::H1(s) => s.try_send_request(req_now).await,
                Sender::H2(s) => s.try_send_request(req_now).await,
            }
        })
        .await;
        let response = match sent {
            Err(_) => {
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "dockhand: {} did not answer within {}s\n",
                        route.service,
                        settings.response_timeout.as_secs()
                    ),
                )
            }
            Ok(Ok(r)) => r,
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let err = e.into_error();
                if client_body_failed(&err) {
                    // The client's body was malformed or cut off: the
                    // client's fault, not the task's. Not retried, not held
                    // against the task.
                    let mut r = text(
                        StatusCode::BAD_REQUEST,
                        "dockhand: the request body is malformed or was cut off\n".into(),
                    );
                    r.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                    return r;
                }
                last_error = format!("{}: {err}", backend.addr);
                if err.is_closed() || err.is_incomplete_message() {
                    lock_eject_if_refused(inner, &route, &backend, &err);
                }
                if let Some(r) = unsent {
                    request = Some(r);
                    tried.push(backend);
                    continue;
                }
                tried.push(backend);
                if replay.is_some() {
                    continue; // idempotent and bodyless: safe to send again
                }
                // It may have reached the backend: not retried.
                break;
            }
        };
        seen.backend = Some(Arc::clone(&backend));
        return finish(&backend, sender, response, in_flight, client_upgrade);
    }
    if tried.is_empty() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "dockhand: no healthy backend for service {}\n",
                route.service
            ),
        );
    }
    text(
        StatusCode::BAD_GATEWAY,
        format!(
            "dockhand: backend of service {} failed: {last_error}\n",
            route.service
        ),
    )
}

/// Whether sending failed because the client's own body stream failed (a
/// malformed chunk, a connection cut mid-body), rather than the task:
/// hyper reports a failing request body as a user error whose source is
/// the body's own error, and the body is the client's: an `Incoming`,
/// whose errors are hyper errors, or an HTTP/2 stream's, whose errors are
/// [`crate::http2::BodyError`]. (A replayed request has an empty body that
/// cannot fail.)
fn client_body_failed(err: &hyper::Error) -> bool {
    use std::error::Error as _;
    err.is_user()
        && err.source().is_some_and(|s| {
            s.downcast_ref::<hyper::Error>().is_some()
                || s.downcast_ref::<crate::http2::BodyError>().is_some()
        })
}

fn lock_eject_if_refused(
    inner: &Inner,
    route: &Arc<Route>,
    backend: &Arc<Backend>,
    err: &hyper::Error,
) {
    use std::error::Error as _;
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>());
    if let Some(io) = io {
        if matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
        ) {
            inner.eject(route, backend, &describe_io(io));
        }
    }
}

/// A connection to a task: an HTTP/1.1 one of the pool, or the task's
/// shared HTTP/2 one.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ProxyBody>),
    H2(hyper::client::conn::http2::SendRequest<ProxyBody>),
}

/// A request as HTTP/2 sends it: the host moves into the URI
/// (`:authority`), the version says HTTP/2.
fn to_h2(parts: &mut hyper::http::request::Parts) {
    let host = parts
        .headers
        .remove(HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| "localhost".into());
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = format!("http://{host}{pq}").parse::<Uri>() {
        parts.uri = uri;
    }
    parts.version = Version::HTTP_2;
}

fn finish(
    backend: &Arc<Backend>,
    sender: Sender,
    mut response: Response<Incoming>,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_upgrade {
            let backend_side = hyper::upgrade::on(&mut response);
            let (guard, mut close) = backend.begin_upgraded();
            tokio::spawn(async move {
                let (Ok(client_io), Ok(backend_io)) = tokio::join!(client_side, backend_side)
                else {
                    return;
                };
                let mut client_io = hyper_util::rt::TokioIo::new(client_io);
                let mut backend_io = hyper_util::rt::TokioIo::new(backend_io);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client_io, &mut backend_io) => {}
                    _ = async { let _ = close.wait_for(|c| *c).await; } => {}
                }
                drop(guard);
            });
        }
        strip_hop_by_hop(response.headers_mut(), true);
        drop(in_flight);
        return response.map(|b| b.map_err(crate::BoxError::from).boxed());
    }
    if let Sender::H1(sender) = sender {
        backend.checkin(sender);
    }
    // The body is framed by its coding, which goes with the hop: a length
    // sent beside it would frame the client's copy wrongly (RFC 9112 §6.3).
    if response
        .headers()
        .contains_key(hyper::header::TRANSFER_ENCODING)
    {
        response.headers_mut().remove(hyper::header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(response.headers_mut(), false);
    response.map(|inner| {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-keep"]);
    }

    #[test]
    fn upgrade_headers_survive_only_for_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        let mut kept = h.clone();
        strip_hop_by_hop(&mut kept, true);
        assert_eq!(kept.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(kept.get(CONNECTION).unwrap(), "upgrade");
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarded_headers_append_for_and_describe_this_hop() {
        let client = ClientInfo {
            peer: "10.1.2.3:5555".parse().unwrap(),
            local: "0.0.0.0:8080".parse().unwrap(),
            tls: false,
        };
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            &client,
            Some(&HeaderValue::from_static("example.com:8080")),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com:8080");
        assert_eq!(h["x-forwarded-port"], "8080");
    }
}
