//! The proxy as a host's front door, through real clients: TLS with curl
//! and rustls, certificates picked by SNI and swapped under load, HTTP/2
//! over TLS (ALPN) and prior-knowledge h2c, 100 streams on one
//! connection, trailers, GOAWAY when the host drains or the connection
//! idles (a long answer counting as a stream until its end), HTTP-to-HTTPS
//! redirects, the host health path, the access log and route metrics,
//! and keep-alive connections (plain and TLS) moving between threads.
//! Certificates are made for each test with the `openssl` command.

use bytes::Bytes;
use dockhand_proxy::{AccessLog, CertFiles, Certs, HealthCheck, Proxy, RouteSpec, Settings};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// A scratch directory removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("dockhand-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The root crate's test certificates (tests/support/certs.rs).
#[path = "../../tests/support/certs.rs"]
mod certs;

/// A CA (`<name>-ca.pem`) and a P-256 leaf it signed for `names`
/// (`<name>.pem`, `<name>.key`).
fn make_cert(dir: &Path, name: &str, names: &[&str]) -> (PathBuf, CertFiles) {
    let issued = certs::issue(dir, name, names);
    (
        issued.ca,
        CertFiles {
            cert: issued.cert,
            key: issued.key,
        },
    )
}

/// What the backend saw: the `X-Forwarded-Proto` of each request.
type Protos = Arc<Mutex<Vec<String>>>;

/// A backend: `/barrier` answers once `BARRIER` requests are in flight
/// together (or after 10 s with 504, when they never are); `/trailers`
/// answers a chunked body and gRPC-style trailers; `/slow` five lines
/// 250 ms apart; `/stall` after 30 s, never reading the request body;
/// `/count` the length of the request body; `/big?n=N` N
/// bytes; anything else `ok`.
async fn backend() -> (SocketAddr, Protos) {
    const BARRIER: usize = 100;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let protos: Protos = Arc::default();
    let seen = Arc::clone(&protos);
    let waiting = Arc::new(AtomicUsize::new(0));
    let all_in = Arc::new(Notify::new());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = Arc::clone(&seen);
            let waiting = Arc::clone(&waiting);
            let all_in = Arc::clone(&all_in);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        let waiting = Arc::clone(&waiting);
                        let all_in = Arc::clone(&all_in);
                        async move {
                            let path = req.uri().path().to_string();
                            if path != "/health" {
                                let proto = req
                                    .headers()
                                    .get("x-forwarded-proto")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                seen.lock().unwrap().push(proto);
                            }
                            let body: http_body_util::combinators::BoxBody<
                                Bytes,
                                std::convert::Infallible,
                            > = match path.as_str() {
                                "/barrier" => {
                                    let wait = all_in.notified();
                                    if waiting.fetch_add(1, Ordering::SeqCst) + 1 >= BARRIER {
                                        all_in.notify_waiters();
                                    } else if tokio::time::timeout(Duration::from_secs(10), wait)
                                        .await
                                        .is_err()
                                    {
                                        let mut r = hyper::Response::new(
                                            Full::new(Bytes::from_static(b"never all in\n"))
                                                .boxed(),
                                        );
                                        *r.status_mut() = hyper::StatusCode::GATEWAY_TIMEOUT;
                                        return Ok::<_, std::convert::Infallible>(r);
                                    }
                                    Full::new(Bytes::from_static(b"all in\n")).boxed()
                                }
                                "/trailers" => {
                                    let _ = req.into_body().collect().await;
                                    let mut t = hyper::HeaderMap::new();
                                    t.insert("grpc-status", "0".parse().unwrap());
                                    t.insert("grpc-message", "fine".parse().unwrap());
                                    let frames = vec![
                                        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))),
                                        Ok(Frame::trailers(t)),
                                    ];
                                    futures_stream(frames).boxed()
                                }
                                "/slow" => {
                                    // Five lines, 250 ms apart.
                                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                                    tokio::spawn(async move {
                                        for i in 0..5u8 {
                                            tokio::time::sleep(Duration::from_millis(250)).await;
                                            let line = Bytes::from(vec![b'0' + i, b'\n']);
                                            if tx.send(Frame::data(line)).await.is_err() {
                                                return;
                                            }
                                        }
                                    });
                                    channel_body(rx).boxed()
                                }
                                "/stall" => {
                                    // Never reads the request body.
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                    Full::new(Bytes::from_static(b"late\n")).boxed()
                                }
                                "/count" => {
                                    // The request body's length.
                                    let n = req
                                        .into_body()
                                        .collect()
                                        .await
                                        .map_or(0, |c| c.to_bytes().len());
                                    Full::new(Bytes::from(n.to_string())).boxed()
                                }
                                "/big" => {
                                    // `n` bytes, from the query.
                                    let n: usize = req
                                        .uri()
                                        .query()
                                        .and_then(|q| q.strip_prefix("n="))
                                        .and_then(|n| n.parse().ok())
                                        .unwrap_or(0);
                                    Full::new(Bytes::from(vec![b'x'; n])).boxed()
                                }
                                _ => Full::new(Bytes::from_static(b"ok\n")).boxed(),
                            };
                            let mut r = hyper::Response::new(body);
                            if path == "/trailers" {
                                // An HTTP/1.1 server declares the trailers it sends.
                                r.headers_mut().insert(
                                    "trailer",
                                    "grpc-status, grpc-message".parse().unwrap(),
                                );
                            }
                            Ok(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, protos)
}

/// A stream of the given frames (no futures crate needed).
fn futures_stream(
    frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>>,
) -> impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> {
    struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, std::convert::Infallible>>);
    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front())
        }
    }
    Frames(frames.into())
}

/// A body whose frames come from `rx`, as they are sent; it ends when the
/// sender is dropped.
fn channel_body(
    rx: tokio::sync::mpsc::Receiver<Frame<Bytes>>,
) -> impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> {
    struct Channel(tokio::sync::mpsc::Receiver<Frame<Bytes>>);
    impl hyper::body::Body for Channel {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|f| f.map(Ok))
        }
    }
    Channel(rx)
}

struct Front {
    proxy: Proxy,
    plain: u16,
    tls: u16,
    protos: Protos,
    _signal: drain::Signal,
}

/// A proxy with a plain and a TLS listener, `routes` all to one healthy
/// backend.
async fn front(settings: Settings, certs: Option<Arc<Certs>>, routes: Vec<RouteSpec>) -> Front {
    front_with(settings, certs, routes, backend().await).await
}

/// [`front`] to the given backend.
async fn front_with(
    mut settings: Settings,
    certs: Option<Arc<Certs>>,
    routes: Vec<RouteSpec>,
    (backend, protos): (SocketAddr, Protos),
) -> Front {
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (plain_port, tls_port) = (
        plain.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port(),
    );
    settings.https_port = tls_port;
    let with_tls = certs.is_some();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = Proxy::with_certs(settings, tx, certs);
    let routes: Vec<RouteSpec> = routes
        .into_iter()
        .map(|r| RouteSpec {
            check: HealthCheck {
                path: "/health".into(),
                interval: Duration::from_millis(200),
                healthy_threshold: 1,
                ..HealthCheck::default()
            },
            ..r
        })
        .collect();
    let n = routes.len();
    proxy.set_routes("svc", routes);
    for i in 0..n {
        proxy.add_backend("svc", i, "task-1", backend, false);
    }
    for _ in 0..100 {
        if proxy.task_health("task-1") == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.task_health("task-1"), Some(true));
    let (signal, watch) = drain::channel();
    let p = proxy.clone();
    // A TLS listener only with certificates.
    let tls = if with_tls { vec![tls] } else { Vec::new() };
    tokio::spawn(async move { p.serve(vec![plain], tls, watch).await });
    Front {
        proxy,
        plain: plain_port,
        tls: tls_port,
        protos,
        _signal: signal,
    }
}

/// curl's answer: (status, HTTP version, body).
async fn curl(args: Vec<String>) -> (String, String, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(&args)
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl {args:?}: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, version) = tail.split_once(' ').unwrap();
    (code.into(), version.into(), body.trim_end().into())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test]
async fn curl_gets_tls_and_h2_with_the_certificate_its_name_asks_for() {
    let dir = Dir::new("tls-curl");
    let (ca, default) = make_cert(&dir.0, "default", &["localhost", "127.0.0.1"]);
    let (shop_ca, shop) = make_cert(&dir.0, "shop", &["shop.test"]);
    let certs = Arc::new(Certs::new(Some(default)).unwrap());
    let f = front(
        Settings::default(),
        Some(certs),
        vec![
            RouteSpec {
                hosts: vec!["shop.test".into()],
                tls: Some(shop),
                ..RouteSpec::default()
            },
            RouteSpec::default(),
        ],
    )
    .await;
    let ca = ca.to_str().unwrap();
    let url = format!("https://localhost:{}/", f.tls);
    let (code, version, body) = curl(s(&["--cacert", ca, "--http1.1", &url])).await;
    assert_eq!(
        (code.as_str(), version.as_str(), body.as_str()),
        ("200", "1.1", "ok")
    );
    let (code, version, _) = curl(s(&["--cacert", ca, "--http2", &url])).await;
    assert_eq!((code.as_str(), version.as_str()), ("200", "2"));
    // The route's own certificate for its host name (SNI): only its CA
    // verifies it.
    let (code, _, _) = curl(s(&[
        "--cacert",
        shop_ca.to_str().unwrap(),
        "--resolve",
        &format!("shop.test:{}:127.0.0.1", f.tls),
        &format!("https://shop.test:{}/", f.tls),
    ]))
    .await;
    assert_eq!(code, "200");
    let wrong = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", ca, "--resolve"])
        .arg(format!("shop.test:{}:127.0.0.1", f.tls))
        .arg(format!("https://shop.test:{}/", f.tls))
        .output()
        .await
        .unwrap();
    assert!(
        !wrong.status.success(),
        "shop.test must not get the default certificate"
    );
    // Plain HTTP still works beside it; the task learns which it was.
    let (code, _, _) = curl(s(&[&format!("http://127.0.0.1:{}/", f.plain)])).await;
    assert_eq!(code, "200");
    let protos = f.protos.lock().unwrap().clone();
    assert_eq!(protos, ["https", "https", "https", "http"]);
    // TLS 1.1 is refused.
    let old = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca,
            "--tlsv1.1",
            "--tls-max",
            "1.1",
        ])
        .arg(&url)
        .output()
        .await
        .unwrap();
    assert!(!old.status.success());
}

/// A TLS client trusting `cas`, offering `alpn`.
fn connector(cas: &[&Path], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session would show the
    // certificate of the session it resumes.
    cfg.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(c: &tokio_rustls::TlsConnector, port: u16) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    c.connect(name, tcp).await
}

/// One HTTP/1.1 request on a new TLS connection; the certificate it got.
async fn one_request(c: &tokio_rustls::TlsConnector, port: u16) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(c, port).await.map_err(|e| e.to_string())?;
    let cert = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 200") || !text.ends_with("ok\n") {
        return Err(format!("answer {text:?}"));
    }
    Ok(cert)
}

fn der(files: &CertFiles) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(&files.cert)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_under_load_fails_no_request() {
    let dir = Dir::new("tls-swap");
    let (ca1, first) = make_cert(&dir.0, "first", &["localhost"]);
    let (ca2, second) = make_cert(&dir.0, "second", &["localhost"]);
    // The files the proxy reads; replaced by rename, as deploy tools do.
    let live = CertFiles {
        cert: dir.0.join("live.pem"),
        key: dir.0.join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let certs = Arc::new(Certs::new(Some(live.clone())).unwrap());
    let f = front(Settings::default(), Some(certs), vec![RouteSpec::default()]).await;
    let c = connector(&[&ca1, &ca2], &[b"http/1.1"]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (c, stop, port) = (c.clone(), Arc::clone(&stop), f.tls);
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut last) = (0, Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match one_request(&c, port).await {
                    Ok(cert) => {
                        ok += 1;
                        last = cert;
                    }
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed, last)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Both files replaced, key first (a moment with a mismatched pair must
    // keep the old certificate, not fail handshakes).
    let swap = |from: &Path, to: &Path| {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    };
    swap(&second.key, &live.key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    swap(&second.cert, &live.cert);
    // Picked up within the poll interval.
    let deadline = std::time::Instant::now() + dockhand_proxy::TLS_POLL + Duration::from_secs(3);
    let want = der(&second);
    loop {
        if one_request(&c, f.tls).await.unwrap() == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file keeps the last good certificate.
    std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    f.proxy.reload();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed, last) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert_eq!(last, want, "each client ends on the new certificate");
        total += ok;
    }
    assert!(total > 20, "only {total} requests made");
    assert_eq!(one_request(&c, f.tls).await.unwrap(), want);
}

/// An HTTP/2 client connection over `io`; the connection task's handle.
async fn h2_client<I>(
    io: I,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

/// A prior-knowledge HTTP/2 client on the plain listener at `port`; the
/// connection task's handle; the authority to ask for.
async fn h2c_client(
    port: u16,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
    String,
) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (send, conn) = h2_client(tcp).await;
    (send, conn, format!("127.0.0.1:{port}"))
}

/// A gRPC-style call: a POST with `te: trailers`; asserts 200 and returns
/// the whole answer (data and trailers).
async fn grpc_call(
    send: &hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
) -> http_body_util::Collected<Bytes> {
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{path}"))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap();
    let r = send.clone().send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap()
}

fn get(authority: &str, path: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::builder()
        .uri(format!("https://{authority}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_carries_100_concurrent_streams_on_one_connection_and_trailers() {
    let dir = Dir::new("tls-h2");
    let (ca, default) = make_cert(&dir.0, "default", &["localhost"]);
    let certs = Arc::new(Certs::new(Some(default)).unwrap());
    let f = front(Settings::default(), Some(certs), vec![RouteSpec::default()]).await;
    let tls = tls_connect(&connector(&[&ca], &[b"h2"]), f.tls)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, _conn) = h2_client(tls).await;
    let mut streams = Vec::new();
    for _ in 0..100 {
        let mut send = send.clone();
        streams.push(tokio::spawn(async move {
            let r = send
                .send_request(get("localhost", "/barrier"))
                .await
                .unwrap();
            let status = r.status();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for s in streams {
        let (status, body) = s.await.unwrap();
        // The backend answers only once all 100 are in flight at once.
        assert_eq!((status.as_u16(), &body[..]), (200, &b"all in\n"[..]));
    }
    assert_eq!(f.proxy.open_connections(), 1, "one client connection");

    // gRPC-style: a POST with `te: trailers`, trailers back after the data.
    let collected = grpc_call(&send, "/trailers").await;
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x05hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_serves_and_a_draining_host_sends_goaway_and_fails_its_health_check() {
    let settings = Settings {
        h2c: true,
        health_path: "/lb-check".into(),
        ..Settings::default()
    };
    let f = front(settings, None, vec![RouteSpec::default()]).await;
    let (send, conn, authority) = h2c_client(f.plain).await;
    let r = send
        .clone()
        .send_request(get(&authority, "/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), hyper::Version::HTTP_2);
    let r = send
        .clone()
        .send_request(get(&authority, "/lb-check"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The proxy's own answer says its date and length, as over HTTP/1.1.
    assert!(r.headers().contains_key("date"));
    assert_eq!(r.headers()["content-length"], "3");
    // The old default path is an ordinary request now, routed to the task.
    let (code, _, body) = curl(s(&[&format!(
        "http://127.0.0.1:{}/dockhand/health",
        f.plain
    )]))
    .await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "ok"));
    let (code, _, _) = curl(s(&[&format!("http://127.0.0.1:{}/lb-check", f.plain)])).await;
    assert_eq!(code, "200");

    f.proxy.set_draining(true);
    // GOAWAY: the client's connection ends without anyone closing it.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("GOAWAY after drain")
        .unwrap();
    let (code, _, body) = curl(s(&[&format!("http://127.0.0.1:{}/lb-check", f.plain)])).await;
    assert_eq!((code.as_str(), body.as_str()), ("503", "draining"));
    let (code, _, _) = curl(s(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{}/lb-check", f.plain),
    ]))
    .await;
    assert_eq!(code, "503");
}

/// The idle timeout of the h2c idle tests.
const IDLE: Duration = Duration::from_millis(500);

/// A proxy with prior-knowledge h2c and the idle timeout `idle`, and an h2c
/// client connected to it ([`h2c_client`]'s three values after the proxy).
async fn h2c_idling_after(
    idle: Duration,
) -> (
    Front,
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
    String,
) {
    let settings = Settings {
        h2c: true,
        idle_timeout: idle,
        ..Settings::default()
    };
    let f = front(settings, None, vec![RouteSpec::default()]).await;
    let (send, conn, authority) = h2c_client(f.plain).await;
    (f, send, conn, authority)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_whose_only_stream_was_reset_still_closes_when_idle() {
    let (_f, send, conn, authority) = h2c_idling_after(IDLE).await;
    // The task holds /barrier (it waits for 100 requests): the client gives
    // up on it, and resets the stream, while the proxy waits for the task.
    let waiting = tokio::spawn({
        let mut send = send.clone();
        async move { send.send_request(get(&authority, "/barrier")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting.abort();
    let reset = std::time::Instant::now();
    assert!(waiting.await.unwrap_err().is_cancelled());
    // Nothing is in flight any more: the idle connection gets GOAWAY and
    // ends, without the client closing it, an idle timeout after the reset
    // (not before: the timeout counts from the last stream's end).
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("GOAWAY once idle")
        .unwrap();
    let after = reset.elapsed();
    assert!(
        after >= Duration::from_millis(490),
        "GOAWAY {after:?} after the reset"
    );
}

/// An answer whose body takes longer than the idle timeout keeps its
/// stream counted: no GOAWAY while it is sent, and the idle timeout
/// counts from its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_answer_longer_than_the_idle_timeout_is_not_cut_and_idles_from_its_end() {
    let (_f, send, mut conn, authority) = h2c_idling_after(IDLE).await;
    let started = std::time::Instant::now();
    let r = send
        .clone()
        .send_request(get(&authority, "/slow"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"0\n1\n2\n3\n4\n");
    let ended = std::time::Instant::now();
    assert!(
        ended - started >= Duration::from_millis(1000),
        "the body took {:?}, less than twice the idle timeout",
        ended - started
    );
    // Had the stream stopped counting when its head was sent, GOAWAY would
    // have gone out mid-body, and the connection would close as soon as
    // the body ended. It stays open for the idle timeout.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        !conn.is_finished(),
        "the connection closed right after the body"
    );
    tokio::time::timeout(Duration::from_secs(5), &mut conn)
        .await
        .expect("GOAWAY once idle")
        .unwrap();
    assert!(ended.elapsed() >= Duration::from_millis(490));
}

#[tokio::test]
async fn https_routes_redirect_plain_http_and_requests_are_logged_and_counted() {
    let dir = Dir::new("tls-log");
    let (ca, default) = make_cert(&dir.0, "default", &["localhost", "shop.test"]);
    let log = dir.0.join("access.log");
    let settings = Settings {
        access_log: AccessLog::File(log.clone()),
        ..Settings::default()
    };
    let certs = Arc::new(Certs::new(Some(default)).unwrap());
    let f = front(
        settings,
        Some(certs),
        vec![
            RouteSpec {
                hosts: vec!["shop.test".into()],
                redirect_https: true,
                ..RouteSpec::default()
            },
            RouteSpec::default(),
        ],
    )
    .await;
    let resolve = format!("shop.test:{}:127.0.0.1", f.plain);
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "--resolve",
            &resolve,
        ])
        .arg(format!("http://shop.test:{}/cart?item=2", f.plain))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("308 https://shop.test:{}/cart?item=2", f.tls)
    );
    // Followed, it lands on the TLS listener and is served.
    let (code, _, body) = curl(s(&[
        "-L",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "--resolve",
        &format!("shop.test:{}:127.0.0.1", f.tls),
        &format!("http://shop.test:{}/cart", f.plain),
    ]))
    .await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "ok"));
    // Another host is not redirected; h2 requests are logged too.
    let (code, _, _) = curl(s(&[&format!("http://127.0.0.1:{}/plain", f.plain)])).await;
    assert_eq!(code, "200");
    let (code, _, _) = curl(s(&[
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        &format!("https://localhost:{}/two", f.tls),
    ]))
    .await;
    assert_eq!(code, "200");

    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect();
        // The log is written from its own thread: wait for every line.
        if lines.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let brief: Vec<(String, i64, String, bool, String)> = lines
        .iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap_or("").to_string(),
                v["status"].as_i64().unwrap_or(0),
                v["proto"].as_str().unwrap_or("").to_string(),
                v["tls"].as_bool().unwrap_or(false),
                v["task"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let want = |p: &str, st: i64, proto: &str, tls: bool, task: &str| {
        (p.to_string(), st, proto.to_string(), tls, task.to_string())
    };
    assert_eq!(
        brief,
        vec![
            want("/cart?item=2", 308, "HTTP/1.1", false, "-"),
            want("/cart", 308, "HTTP/1.1", false, "-"),
            want("/cart", 200, "HTTP/2", true, "task-1"),
            want("/plain", 200, "HTTP/1.1", false, "task-1"),
            want("/two", 200, "HTTP/2", true, "task-1"),
        ]
    );
    assert_eq!(lines[2]["service"], "svc");
    assert_eq!(lines[2]["route"], 0);
    assert_eq!(lines[2]["host"], format!("shop.test:{}", f.tls));
    assert_eq!(lines[2]["bytes"], 3);
    assert!(lines[2]["duration_ms"].as_f64().unwrap() >= 0.0);
    // Route metrics: the redirects counted as 3xx on the shop route.
    let m = f.proxy.route_metrics();
    let shop = m.iter().find(|r| r.index == 0).unwrap();
    let other = m.iter().find(|r| r.index == 1).unwrap();
    assert_eq!(shop.by_class, [0, 1, 2, 0, 0]);
    assert_eq!(other.by_class, [0, 2, 0, 0, 0]);
    assert_eq!(other.latency[dockhand_proxy::LATENCY_BUCKETS.len()], 2);
}

/// A task that speaks only HTTP/2 (prior knowledge), as gRPC servers do:
/// `/grpc` answers data then trailers, anything else its protocol.
async fn h2_backend() -> (SocketAddr, Protos) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body: http_body_util::combinators::BoxBody<
                            Bytes,
                            std::convert::Infallible,
                        > = if req.uri().path() == "/grpc" {
                            let _ = req.into_body().collect().await;
                            let mut t = hyper::HeaderMap::new();
                            t.insert("grpc-status", "0".parse().unwrap());
                            futures_stream(vec![
                                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02ok"))),
                                Ok(Frame::trailers(t)),
                            ])
                            .boxed()
                        } else {
                            Full::new(Bytes::from(format!("{:?}\n", req.version()))).boxed()
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    (addr, Arc::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_http2_tasks_carries_grpc_from_h2_and_http1_clients() {
    let dir = Dir::new("tls-h2-task");
    let (ca, default) = make_cert(&dir.0, "default", &["localhost"]);
    let certs = Arc::new(Certs::new(Some(default)).unwrap());
    // Healthy means the checks spoke HTTP/2 too: the task refuses HTTP/1.1.
    let f = front_with(
        Settings::default(),
        Some(certs),
        vec![RouteSpec {
            backend_h2: true,
            ..RouteSpec::default()
        }],
        h2_backend().await,
    )
    .await;
    let tls = tls_connect(&connector(&[&ca], &[b"h2"]), f.tls)
        .await
        .unwrap();
    let (send, _conn) = h2_client(tls).await;
    let got = grpc_call(&send, "/grpc").await;
    assert_eq!(got.trailers().expect("trailers")["grpc-status"], "0");
    assert_eq!(&got.to_bytes()[..], b"\0\0\0\0\x02ok");
    // Many streams at once share the task's one connection.
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut send = send.clone();
        streams.push(tokio::spawn(async move {
            let r = send.send_request(get("localhost", "/v")).await.unwrap();
            r.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    for s in streams {
        assert_eq!(&s.await.unwrap()[..], b"HTTP/2.0\n");
    }
    // An HTTP/1.1 client reaches the same task (over HTTP/2 behind).
    let (code, version, body) = curl(s(&[&format!("http://127.0.0.1:{}/v", f.plain)])).await;
    assert_eq!(
        (code.as_str(), version.as_str(), body.as_str()),
        ("200", "1.1", "HTTP/2.0")
    );
}

/// Polls the proxy's per-thread connection counts until `done` holds.
async fn counts_when(proxy: &Proxy, done: impl Fn(&[usize]) -> bool) -> Vec<usize> {
    for _ in 0..250 {
        let counts = proxy.thread_connections();
        if done(&counts) {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("counts stayed {:?}", proxy.thread_connections());
}

/// A client connection, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A GET on a kept connection, answered 200 "ok".
async fn get_kept(s: &mut dyn Io, target: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        let so_far = String::from_utf8_lossy(&got);
        assert!(n > 0, "{target}: closed after {so_far:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer:?}");
}

async fn plain(port: u16) -> Box<dyn Io> {
    Box::new(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap(),
    )
}

/// Makes a proxy's 2 threads uneven on purpose, and checks that its
/// keep-alive connections even them out. `connect(i)` opens 20 clients one
/// at a time, no request yet: the thread whose count rose is the one
/// serving it. The busier thread keeps all of its clients, the other one,
/// and each sends a request: after its answer, a client of the busier
/// thread moves while that thread has 2 more connections than the other.
/// Returns the clients in the order they sent it (the first `moved` moved),
/// with nothing sent since.
async fn even_out(
    proxy: &Proxy,
    connect: impl AsyncFn(usize) -> Box<dyn Io>,
) -> (Vec<Box<dyn Io>>, usize) {
    let mut on: [Vec<Box<dyn Io>>; 2] = Default::default();
    for i in 0..20usize {
        let before = proxy.thread_connections();
        let s = connect(i).await;
        let after = counts_when(proxy, |c| c.iter().sum::<usize>() == i + 1).await;
        let thread = (0..2).find(|&t| after[t] > before[t]).unwrap();
        on[thread].push(s);
    }
    let heavy = if on[0].len() >= on[1].len() { 0 } else { 1 };
    let light = 1 - heavy;
    let kept = on[heavy].len();
    on[light].truncate(1);
    counts_when(proxy, |c| c[light] == 1).await;
    let moved_before = proxy.connections_moved();
    let [a, b] = on;
    let mut clients: Vec<Box<dyn Io>> = if heavy == 0 {
        a.into_iter().chain(b).collect()
    } else {
        b.into_iter().chain(a).collect()
    };
    for (n, s) in clients.iter_mut().enumerate() {
        get_kept(s.as_mut(), &format!("/k{n}")).await;
    }
    let even = counts_when(proxy, |c| c[heavy].abs_diff(c[light]) <= 1).await;
    assert_eq!(even.iter().sum::<usize>(), kept + 1);
    let moved = proxy.connections_moved() - moved_before;
    assert_eq!(
        moved,
        (kept as u64 - 1) / 2,
        "{kept} against 1 became {even:?}"
    );
    (clients, moved as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_move_to_the_less_busy_thread_and_serve_on() {
    let dir = Dir::new("tls-move");
    let (ca, files) = make_cert(&dir.0, "move", &["localhost"]);
    let certs = Arc::new(Certs::new(Some(files)).unwrap());
    let settings = Settings {
        threads: 2,
        ..Settings::default()
    };
    let f = front(settings, Some(certs), vec![RouteSpec::default()]).await;
    let c = connector(&[&ca], &[b"http/1.1"]);
    // Plain and TLS in turn: a TLS connection moves with its session.
    let (mut clients, _) = even_out(&f.proxy, async |i| {
        if i % 2 == 0 {
            plain(f.plain).await
        } else {
            Box::new(tls_connect(&c, f.tls).await.unwrap()) as Box<dyn Io>
        }
    })
    .await;
    // The moved ones serve on.
    let even = f.proxy.thread_connections();
    for (n, s) in clients.iter_mut().enumerate() {
        get_kept(s.as_mut(), &format!("/again{n}")).await;
    }
    assert_eq!(
        f.proxy.thread_connections(),
        even,
        "no more moves once even"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_connection_is_not_taken_for_a_new_one_by_h2c() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let settings = Settings {
        threads: 2,
        h2c: true,
        ..Settings::default()
    };
    let f = front(settings, None, vec![RouteSpec::default()]).await;
    let (mut clients, moved) = even_out(&f.proxy, async |_| plain(f.plain).await).await;
    assert!(moved > 0);
    // Prior-knowledge HTTP/2 is for a connection's start: on a new one the
    // preface gets the server's SETTINGS frame; on one that served
    // HTTP/1.1 requests, moved or not, it is not HTTP/2.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let answer = async |s: &mut dyn Io| {
        s.write_all(PREFACE).await.unwrap();
        let mut got = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut got))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        got.truncate(n);
        got
    };
    let settings_frame = answer(plain(f.plain).await.as_mut()).await;
    assert_eq!(
        settings_frame.get(3),
        Some(&4),
        "a SETTINGS frame: {settings_frame:?}"
    );
    // The first moved; the last is the one the other thread kept.
    let last = clients.len() - 1;
    for i in [0, last] {
        let got = answer(clients[i].as_mut()).await;
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 "),
            "not HTTP/2: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

// The HTTP/2 layer's flow control, and what it does with broken clients.

/// A proxy with `settings` and prior-knowledge h2c on, and the authority
/// to ask it for.
async fn h2c_front(settings: Settings) -> (Front, String) {
    let settings = Settings {
        h2c: true,
        ..settings
    };
    let f = front(settings, None, vec![RouteSpec::default()]).await;
    let authority = format!("127.0.0.1:{}", f.plain);
    (f, authority)
}

/// Bodies larger than every window on the way, both ways at once on one
/// connection: uploads larger than the proxy's 1 MiB windows (which it
/// must give back as the task takes the body), downloads larger than the
/// client's windows (64 KiB per stream, 4 MiB for the connection; the
/// proxy must wait for both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_bodies_larger_than_every_window_pass_both_ways() {
    let (f, authority) = h2c_front(Settings::default()).await;
    // The client's windows: the stream's binding first, then the
    // connection's.
    for (stream, connection) in [(65_535, 4 << 20), (1 << 20, 65_535)] {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", f.plain))
            .await
            .unwrap();
        let (send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(stream)
                .initial_connection_window_size(connection)
                .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        transfers_larger_than_windows(&send, &authority).await;
    }
}

/// A task that stops reading an upload holds its stream's window, not the
/// connection's: another upload on the same connection still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_its_task_stops_reading_leaves_the_connection_to_the_others() {
    let (f, authority) = h2c_front(Settings::default()).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", f.plain))
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // More than the socket buffers between the proxy and the task take,
    // so the rest waits in the proxy until the stream's window is spent.
    let post = |path: &str, n: usize| {
        hyper::Request::builder()
            .method("POST")
            .uri(format!("http://{authority}{path}"))
            .body(Full::new(Bytes::from(vec![b'u'; n])))
            .unwrap()
    };
    let mut stalled = send.clone();
    let stall = post("/stall", 32 << 20);
    let _stalled = tokio::spawn(async move { stalled.send_request(stall).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut other = send.clone();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let r = other.send_request(post("/count", 512 << 10)).await.unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .expect("the second upload is not held by the first");
    assert_eq!(answer, (512 << 10).to_string());
}

/// Three 3 MiB uploads and three 3 MB downloads at once.
async fn transfers_larger_than_windows(
    send: &hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    authority: &str,
) {
    const UP: usize = 3 << 20;
    const DOWN: usize = 3_000_000;
    let mut calls = Vec::new();
    for i in 0..6 {
        let mut send = send.clone();
        let authority = authority.to_string();
        calls.push(tokio::spawn(async move {
            let req = if i % 2 == 0 {
                hyper::Request::builder()
                    .method("POST")
                    .uri(format!("http://{authority}/count"))
                    .body(Full::new(Bytes::from(vec![b'u'; UP])))
                    .unwrap()
            } else {
                get(&authority, &format!("/big?n={DOWN}"))
            };
            let r = send.send_request(req).await.unwrap();
            assert_eq!(r.status(), 200);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            if i % 2 == 0 {
                assert_eq!(body, UP.to_string(), "the task got the whole upload");
            } else {
                assert_eq!(body.len(), DOWN, "the whole download arrived");
            }
        }));
    }
    for c in calls {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("every transfer ends")
            .unwrap();
    }
}

/// A frame: type, flags, stream, payload.
type RawFrame = (u8, u8, u32, Vec<u8>);

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK literal field without indexing, with a new name (strings of
/// under 127 bytes, not Huffman coded).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

/// `GET /` for `authority`, from the static table and a literal.
fn get_block(authority: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84];
    b.extend(literal(":authority", authority));
    b
}

/// `GET path` for `authority`.
fn get_path_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    b.extend(literal(":path", path));
    b.extend(literal(":authority", authority));
    b
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// A prior-knowledge connection that has sent the preface and `first`.
async fn raw_h2c(port: u16, first: &[u8]) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(first);
    s.write_all(&out).await.unwrap();
    s
}

/// The next frame of the given type (others skipped); `None` once the
/// proxy has closed the connection.
async fn frame_of(s: &mut tokio::net::TcpStream, kind: u8) -> Option<RawFrame> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.ok()?;
            let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
            let mut payload = vec![0; len];
            s.read_exact(&mut payload).await.ok()?;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
            if head[3] == kind {
                return Some((head[3], head[4], stream, payload));
            }
        }
    })
    .await
    .expect("the proxy answers within 5 s")
}

/// The error code of a GOAWAY or RST_STREAM payload.
fn code(f: &RawFrame) -> u32 {
    let at = if f.0 == GOAWAY { 4 } else { 0 };
    u32::from_be_bytes(f.3[at..at + 4].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_h2_connections_get_goaway_with_the_rfc_code_and_are_closed() {
    let (f, _) = h2c_front(Settings::default()).await;
    let settings_frame = h2_frame(4, 0, 0, &[]);
    let mut cases: Vec<(&str, Vec<u8>, u32)> = vec![
        // A PING where SETTINGS must come first: PROTOCOL_ERROR.
        ("no SETTINGS first", h2_frame(6, 0, 0, &[0; 8]), 1),
        (
            // Index 70 of an empty dynamic table: COMPRESSION_ERROR.
            "an undecodable header block",
            [
                settings_frame.clone(),
                h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0xc6]),
            ]
            .concat(),
            9,
        ),
        (
            // One byte over the 16 KiB frame size: FRAME_SIZE_ERROR.
            "a frame too large",
            [settings_frame.clone(), h2_frame(0, 0, 1, &[0; 16_385])].concat(),
            6,
        ),
        (
            // A window over 2^31-1: FLOW_CONTROL_ERROR.
            "a window overflow",
            [
                settings_frame.clone(),
                h2_frame(8, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            ]
            .concat(),
            3,
        ),
        (
            // A stream id a client cannot open: PROTOCOL_ERROR.
            "an even stream",
            [
                settings_frame.clone(),
                h2_frame(HEADERS, END_HEADERS | END_STREAM, 2, &get_block("a")),
            ]
            .concat(),
            1,
        ),
    ];
    // Streams opened and reset at once, more than 200 in a second (the
    // "rapid reset" attack): ENHANCE_YOUR_CALM.
    let slow = get_path_block("a", "/slow");
    let mut rapid = settings_frame.clone();
    for id in (1..600).step_by(2) {
        rapid.extend(h2_frame(HEADERS, END_HEADERS | END_STREAM, id, &slow));
        rapid.extend(h2_frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    cases.push(("rapid resets", rapid, 11));
    // The same through resets the client makes the proxy send (a
    // WINDOW_UPDATE of 0 on each open stream; "MadeYouReset").
    let mut made = settings_frame.clone();
    for id in (1..600).step_by(2) {
        made.extend(h2_frame(HEADERS, END_HEADERS | END_STREAM, id, &slow));
        made.extend(h2_frame(8, 0, id, &0u32.to_be_bytes()));
    }
    cases.push(("resets made by the proxy", made, 11));
    for (what, frames, want) in cases {
        let mut c = raw_h2c(f.plain, &frames).await;
        let goaway = frame_of(&mut c, GOAWAY)
            .await
            .unwrap_or_else(|| panic!("{what}: no GOAWAY"));
        assert_eq!(code(&goaway), want, "{what}");
        assert!(frame_of(&mut c, GOAWAY).await.is_none(), "{what}: closed");
    }
    // Not the preface at all: closed.
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", f.plain))
        .await
        .unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        .await
        .unwrap();
    assert!(frame_of(&mut c, HEADERS).await.is_none());
    // And the proxy serves on.
    let (code, _, body) = curl(s(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{}/", f.plain),
    ]))
    .await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_of_padding_gets_its_stream_window_back() {
    let (f, authority) = h2c_front(Settings::default()).await;
    let mut post = vec![0x83, 0x86];
    // A task that never reads the body (nor answers, for 30 s).
    post.extend(literal(":path", "/stall"));
    post.extend(literal(":authority", &authority));
    let mut frames = h2_frame(4, 0, 0, &[]);
    frames.extend(h2_frame(HEADERS, END_HEADERS, 1, &post));
    // 2,100 DATA frames of 255 bytes of padding and no data: 537,600 bytes
    // of the stream's 1 MiB window, which no reader ever takes.
    let mut padded = vec![255u8];
    padded.extend([0u8; 255]);
    for _ in 0..2_100 {
        frames.extend(h2_frame(0, 0x8, 1, &padded));
    }
    let mut c = raw_h2c(f.plain, &frames).await;
    loop {
        let update = frame_of(&mut c, 8)
            .await
            .expect("the connection stays open");
        if update.2 == 1 {
            let n = u32::from_be_bytes(update.3[..4].try_into().unwrap());
            assert!(n >= 512 * 1024, "{n}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_h2_request_resets_its_stream_and_the_connection_serves_on() {
    let settings = Settings {
        h2_max_streams: 2,
        ..Settings::default()
    };
    let (f, authority) = h2c_front(settings).await;
    let mut c = raw_h2c(f.plain, &h2_frame(4, 0, 0, &[])).await;
    // An uppercase header name.
    let mut upper = get_block(&authority);
    upper.extend(literal("X-Upper", "1"));
    c.write_all(&h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &upper))
        .await
        .unwrap();
    // A body shorter than its content-length.
    let mut post = vec![0x83, 0x86, 0x84];
    post.extend(literal(":authority", &authority));
    post.extend(literal("content-length", "5"));
    let short = [
        h2_frame(HEADERS, END_HEADERS, 3, &post),
        h2_frame(0, END_STREAM, 3, b"abc"),
    ];
    c.write_all(&short.concat()).await.unwrap();
    // No :path.
    let mut nopath = vec![0x82, 0x86];
    nopath.extend(literal(":authority", &authority));
    c.write_all(&h2_frame(HEADERS, END_HEADERS | END_STREAM, 5, &nopath))
        .await
        .unwrap();
    // Trailers ending a body shorter than its content-length.
    let mut post7 = vec![0x83, 0x86];
    post7.extend(literal(":path", "/count"));
    post7.extend(literal(":authority", &authority));
    post7.extend(literal("content-length", "5"));
    let trailed = [
        h2_frame(HEADERS, END_HEADERS, 7, &post7),
        h2_frame(0, 0, 7, b"abc"),
        h2_frame(HEADERS, END_HEADERS | END_STREAM, 7, &literal("x-t", "1")),
    ];
    c.write_all(&trailed.concat()).await.unwrap();
    for id in [1, 3, 5, 7] {
        let rst = frame_of(&mut c, RST_STREAM).await.expect("RST_STREAM");
        assert_eq!((rst.2, code(&rst)), (id, 1), "stream {id}: PROTOCOL_ERROR");
    }
    // Two streams held by the task (the limit), a third refused.
    let barrier = get_path_block(&authority, "/barrier");
    for id in [9, 11, 13] {
        c.write_all(&h2_frame(HEADERS, END_HEADERS | END_STREAM, id, &barrier))
            .await
            .unwrap();
    }
    let rst = frame_of(&mut c, RST_STREAM).await.expect("RST_STREAM");
    assert_eq!((rst.2, code(&rst)), (13, 7), "REFUSED_STREAM");
    // The client gives up one held stream: the next request is served.
    c.write_all(&h2_frame(RST_STREAM, 0, 9, &8u32.to_be_bytes()))
        .await
        .unwrap();
    c.write_all(&h2_frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        15,
        &get_block(&authority),
    ))
    .await
    .unwrap();
    let answer = frame_of(&mut c, HEADERS).await.expect("an answer");
    assert_eq!((answer.2, answer.3[0]), (15, 0x88), "stream 15: 200");
}

/// A connection the proxy closes while its last answer is still on the
/// way to a slow client, which goes on sending WINDOW_UPDATE as it reads:
/// the proxy reads them until the client closes, since closing with
/// unread bytes would reset the connection and drop the answer's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_h2_connection_closes_without_cutting_its_last_answer() {
    const SIZE: usize = 3_000_000;
    let (f, authority) = h2c_front(Settings::default()).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A client that reads a little at a time.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = socket
        .connect(([127, 0, 0, 1], f.plain).into())
        .await
        .unwrap();
    let block = get_path_block(&authority, &format!("/big?n={SIZE}"));
    let first = [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        h2_frame(4, 0, 0, &[]),
        h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &block),
    ]
    .concat();
    c.write_all(&first).await.unwrap();
    let mut data = 0;
    let mut ended = false;
    let mut drained = false;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = match c.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut taken = 0;
            while buf.len() >= 9 {
                let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == 0 {
                    data += len;
                    ended |= buf[4] & END_STREAM != 0;
                    taken += len;
                }
                buf.drain(..9 + len);
            }
            if data > 0 && !drained {
                // The answer has started: the host starts draining.
                f.proxy.set_draining(true);
                drained = true;
            }
            if taken > 0 {
                // As a client does: the windows back, as it reads.
                let inc = (taken as u32).to_be_bytes();
                let updates = [h2_frame(8, 0, 0, &inc), h2_frame(8, 0, 1, &inc)].concat();
                c.write_all(&updates).await?;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the connection ends");
    assert!(
        r.is_ok() && ended && data == SIZE,
        "the whole answer, then the end: {r:?}, {data} bytes, END_STREAM {ended}"
    );
}

/// A graceful GOAWAY comes in two (RFC 9113 §6.8): the first still takes
/// every stream and goes with a PING; a stream the client opens before it
/// answers that PING (it may have crossed the GOAWAY on the way) is
/// served; the second GOAWAY, once the PING is answered, names it as the
/// last, and the connection ends when it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_h2_connection_serves_streams_that_crossed_its_goaway() {
    let (f, authority) = h2c_front(Settings::default()).await;
    let first = [
        h2_frame(4, 0, 0, &[]),
        h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &get_block(&authority)),
    ]
    .concat();
    let mut c = raw_h2c(f.plain, &first).await;
    let answer = frame_of(&mut c, HEADERS).await.expect("an answer");
    assert_eq!((answer.2, answer.3[0]), (1, 0x88));

    f.proxy.set_draining(true);
    let goaway = frame_of(&mut c, GOAWAY).await.expect("the first GOAWAY");
    let last = u32::from_be_bytes(goaway.3[..4].try_into().unwrap());
    assert_eq!(
        (last, code(&goaway)),
        (0x7fff_ffff, 0),
        "every stream, NO_ERROR"
    );
    let ping = frame_of(&mut c, 6).await.expect("a PING with it");
    assert_eq!(ping.1 & 1, 0, "not an ACK");
    // A request that crossed the GOAWAY: served.
    c.write_all(&h2_frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &get_block(&authority),
    ))
    .await
    .unwrap();
    let answer = frame_of(&mut c, HEADERS).await.expect("stream 3 answered");
    assert_eq!((answer.2, answer.3[0]), (3, 0x88));
    // The PING answered: the last GOAWAY names stream 3.
    c.write_all(&h2_frame(6, 1, 0, &ping.3)).await.unwrap();
    let goaway = frame_of(&mut c, GOAWAY).await.expect("the last GOAWAY");
    let last = u32::from_be_bytes(goaway.3[..4].try_into().unwrap());
    assert_eq!((last, code(&goaway)), (3, 0));
    // Nothing open: the connection ends.
    assert!(frame_of(&mut c, GOAWAY).await.is_none());
}

/// A client that announces a window of 0 and never opens it: the stream
/// waiting for it is reset (CANCEL) after the idle timeout, freeing the
/// task's connection; one that stops reading altogether has its
/// connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_clients_that_stop_taking_answers_are_cut_after_the_idle_timeout() {
    let settings = Settings {
        idle_timeout: Duration::from_millis(300),
        ..Settings::default()
    };
    let (f, authority) = h2c_front(settings).await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0.
    let zero = h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]);
    let big = get_path_block(&authority, "/big?n=100000");
    let first = [zero, h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &big)].concat();
    let mut c = raw_h2c(f.plain, &first).await;
    let answer = frame_of(&mut c, HEADERS).await.expect("the answer's head");
    assert_eq!((answer.2, answer.3[0]), (1, 0x88));
    let asked = std::time::Instant::now();
    let rst = frame_of(&mut c, RST_STREAM).await.expect("RST_STREAM");
    assert_eq!((rst.2, code(&rst)), (1, 8), "CANCEL");
    assert!(asked.elapsed() >= Duration::from_millis(250));

    // 64 MB asked for, with every window open, and nothing read.
    let open = [
        h2_frame(4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]),
        h2_frame(8, 0, 0, &0x7fff_0000u32.to_be_bytes()),
    ]
    .concat();
    let huge = get_path_block(&authority, "/big?n=64000000");
    let first = [open, h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &huge)].concat();
    let mut c = raw_h2c(f.plain, &first).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What the kernel buffered arrives, then the end: far from 64 MB.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let read_all = async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the proxy closed the connection");
    assert!(got < 32_000_000, "{got} bytes: the proxy kept sending");
}

/// SETTINGS_HEADER_TABLE_SIZE from the client is acknowledged in the next
/// header block (RFC 7541 §4.2), which nghttp2 requires; and a request
/// whose headers are over the limit gets 431 even when it has a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_table_size_changes_are_said_and_oversized_requests_with_bodies_get_431() {
    let settings = Settings {
        max_header_bytes: 1024,
        ..Settings::default()
    };
    let (f, authority) = h2c_front(settings).await;
    let first = [
        h2_frame(4, 0, 0, &[0, 1, 0, 0, 0, 0]),
        h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &get_block(&authority)),
    ]
    .concat();
    let mut c = raw_h2c(f.plain, &first).await;
    let answer = frame_of(&mut c, HEADERS).await.expect("an answer");
    assert_eq!(&answer.3[..2], &[0x20, 0x88], "size update to 0, then 200");
    let answer = {
        let mut post = vec![0x83, 0x86, 0x84];
        post.extend(literal(":authority", &authority));
        for i in 0..15 {
            post.extend(literal(&format!("x-pad-{i:02}"), &"p".repeat(100)));
        }
        let frames = [
            h2_frame(HEADERS, END_HEADERS, 3, &post),
            h2_frame(0, END_STREAM, 3, b"abc"),
        ];
        c.write_all(&frames.concat()).await.unwrap();
        frame_of(&mut c, HEADERS).await.expect("an answer")
    };
    // `:status` 431, a literal: name index 8, three digits.
    assert_eq!((answer.2, &answer.3[..5]), (3, &b"\x08\x03431"[..]));
}
