//! Raw-socket HTTP conformance of the proxy: request smuggling shapes,
//! header limits and chunked edge cases, sent byte for byte to a real
//! proxy in front of a recording backend. For each: the client's answer,
//! what the backend saw (never a second, smuggled request), and that the
//! proxy and its backend are fine afterwards.

use bytes::Bytes;
use dockhand_proxy::{HealthCheck, Proxy, RouteSpec, Settings};
use http_body_util::{BodyExt, Full};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the backend received: method, target, body length.
type Seen = Arc<Mutex<Vec<(String, String, usize)>>>;

/// A backend answering `200 ok` to everything, recording each request.
async fn backend() -> (SocketAddr, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let method = req.method().to_string();
                            let target = req.uri().to_string();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
                            if target != "/health" {
                                log.lock().unwrap().push((
                                    method,
                                    target,
                                    body.unwrap_or(usize::MAX),
                                ));
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

const MAX_HEADER_BYTES: usize = 4096;

/// A proxy routing everything to one healthy backend.
async fn proxy() -> (u16, Proxy, Seen) {
    let (backend, seen) = backend().await;
    let settings = Settings {
        max_header_bytes: MAX_HEADER_BYTES,
        max_headers: 20,
        ..Settings::default()
    };
    let (port, proxy) = serve_proxy(settings, backend, Duration::from_millis(200)).await;
    (port, proxy, seen)
}

/// A proxy with `settings`, its one route to `backend` checked every
/// `interval` and healthy, listening on a free port.
async fn serve_proxy(settings: Settings, backend: SocketAddr, interval: Duration) -> (u16, Proxy) {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = Proxy::new(settings, tx);
    proxy.set_routes(
        "svc",
        vec![RouteSpec {
            check: HealthCheck {
                path: "/health".into(),
                interval,
                healthy_threshold: 1,
                ..HealthCheck::default()
            },
            ..RouteSpec::default()
        }],
    );
    proxy.add_backend("svc", 0, "task-1", backend, false);
    wait_healthy(&proxy).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (signal, watch) = drain::channel();
    let p = proxy.clone();
    tokio::spawn(async move {
        let _keep = signal;
        p.serve(vec![l], Vec::new(), watch).await
    });
    (port, proxy)
}

/// Waits (up to 5 s) until task-1 is healthy.
async fn wait_healthy(proxy: &Proxy) {
    for _ in 0..250 {
        if proxy.task_health("task-1") == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.task_health("task-1"), Some(true));
}

/// A proxy with `settings` and one route to `backend` (an adopted task:
/// healthy after one check), serving on a free port; the signal shuts it
/// down, and the task is its `serve`.
async fn adopted_proxy(
    settings: Settings,
    backend: SocketAddr,
) -> (
    u16,
    Proxy,
    drain::Signal,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = Proxy::new(settings, tx);
    proxy.set_routes("svc", vec![RouteSpec::default()]);
    proxy.add_backend("svc", 0, "task-1", backend, true);
    wait_healthy(&proxy).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (signal, watch) = drain::channel();
    let p = proxy.clone();
    let serving = tokio::spawn(async move { p.serve(vec![l], Vec::new(), watch).await });
    (port, proxy, signal, serving)
}

/// Sends `bytes` on a new connection and reads until the peer closes (or
/// 2 s pass); returns what came back.
async fn send(port: u16, bytes: Vec<u8>) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(&bytes);
        // Half-close, as HTTP/1.0 tools do: the request is complete.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap()
}

/// Sends a GET for `target` on a kept connection to a proxy in front of
/// `backend()`, and reads its answer: a 200 whose body is "ok".
fn get_kept(s: &mut TcpStream, target: &str) {
    write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{target}: {e} after {:?}", String::from_utf8_lossy(&got)));
        let so_far = String::from_utf8_lossy(&got);
        assert!(n > 0, "{target}: closed after {so_far:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer:?}");
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Every case: (name, raw request, acceptable statuses, requests the
/// backend may see).
fn cases() -> Vec<(&'static str, Vec<u8>, Vec<u16>, usize)> {
    let big = |n: usize| {
        // A request whose head is exactly `n` bytes.
        let base = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n".len();
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(n - base)
        )
        .into_bytes()
    };
    let many = {
        let mut r = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..30 {
            r.push_str(&format!("X-H{i}: 1\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    vec![
        ("plain", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), vec![200], 1),
        ("keep-alive, half-closed by the client", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), vec![200], 1),
        (
            "CL and TE together (TE wins, no smuggling)",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            vec![200, 400],
            1,
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc".to_vec(),
            vec![400],
            0,
        ),
        (
            "TE not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            vec![400, 501],
            0,
        ),
        (
            "TE obfuscated (xchunked)",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            vec![400, 501],
            0,
        ),
        (
            "chunk size not hex",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
            vec![400],
            1,
        ),
        (
            "chunk size overflowing 64 bits",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n0\r\n\r\n".to_vec(),
            vec![400],
            1,
        ),
        (
            "chunk data longer than its size",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n".to_vec(),
            vec![400],
            1,
        ),
        (
            "Content-Length not a number",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\na".to_vec(),
            vec![400],
            0,
        ),
        (
            "negative Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            vec![400],
            0,
        ),
        (
            "HTTP/1.1 without Host, with its own X-Forwarded-Host",
            b"GET / HTTP/1.1\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n".to_vec(),
            vec![400],
            0,
        ),
        (
            "a Host with user info, routed on one host and naming another",
            b"GET / HTTP/1.1\r\nHost: x:1@evil.example\r\nConnection: close\r\n\r\n".to_vec(),
            vec![400],
            0,
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_vec(),
            vec![400],
            0,
        ),
        ("header without a colon", b"GET / HTTP/1.1\r\nHost: x\r\nBroken\r\n\r\n".to_vec(), vec![400], 0),
        ("space before the colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(), vec![400], 0),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec(),
            vec![400],
            0,
        ),
        ("NUL in a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(), vec![400], 0),
        ("CR alone in a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".to_vec(), vec![400], 0),
        ("unknown HTTP version", b"GET / HTTP/3.7\r\nHost: x\r\n\r\n".to_vec(), vec![400, 505], 0),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), vec![0, 400], 0),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), vec![405], 0),
        ("head at the limit", big(MAX_HEADER_BYTES), vec![200], 1),
        ("head one byte over the limit", big(MAX_HEADER_BYTES + 1), vec![431], 0),
        ("head twice the limit", big(2 * MAX_HEADER_BYTES), vec![431], 0),
        ("more headers than allowed", many, vec![431], 0),
        (
            "pipelined requests with bodies keep their framing",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            vec![200],
            2,
        ),
        (
            "absolute-form target",
            b"GET http://x/abs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            vec![200],
            1,
        ),
        (
            "body cut off by the client",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
            vec![0, 400],
            1,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clean_answers_and_nothing_is_smuggled() {
    let (port, proxy, seen) = proxy().await;
    let mut failures = Vec::new();
    for (name, bytes, ok, max_seen) in cases() {
        seen.lock().unwrap().clear();
        let answer = send(port, bytes).await;
        // Let the backend finish recording what reached it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = status(&answer);
        let backend_saw = seen.lock().unwrap().clone();
        if !ok.contains(&got) {
            failures.push(format!(
                "{name}: status {got}, expected {ok:?}: {:?}",
                answer.lines().next()
            ));
        }
        if backend_saw.len() > max_seen
            || backend_saw.iter().any(|(_, t, _)| t.contains("smuggled"))
        {
            failures.push(format!("{name}: backend saw {backend_saw:?}"));
        }
        // The task is never blamed for the client's request.
        if proxy.task_health("task-1") != Some(true) {
            failures.push(format!("{name}: the task was taken out of rotation"));
            break;
        }
        // And the proxy still serves.
        let after = send(
            port,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await;
        if status(&after) != 200 {
            failures.push(format!(
                "{name}: the next request got {:?}",
                after.lines().next()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_a_byte_at_a_time_has_the_idle_timeout_in_all() {
    let (backend, seen) = backend().await;
    let settings = Settings {
        idle_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let (port, _proxy) = serve_proxy(settings, backend, Duration::from_millis(200)).await;
    let cut_after = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let started = std::time::Instant::now();
        // Each byte well within the idle timeout of the one before.
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if s.write_all(&[*b]).is_err() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (!String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200")).then(|| started.elapsed())
    })
    .await
    .unwrap();
    let cut_after = cut_after.expect("the whole head was sent over 11 s and answered");
    assert!(
        cut_after < Duration::from_secs(4),
        "cut after {cut_after:?}"
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the task");
}

/// Reads into `buf` until it holds a whole request head; the head's end
/// (`None`: the connection ended first).
async fn next_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A task whose answers to anything but `/health` stop after 3 bytes of a
/// 10-byte body, and never end (`cut`: the task closes the connection
/// there).
async fn stalling_backend(cut: bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(end) = next_head(&mut s, &mut buf).await {
                    let health = buf.starts_with(b"GET /health ");
                    buf.drain(..end);
                    if health {
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                        .await;
                    // And nothing more, until the proxy gives up.
                    if !cut {
                        let _ = s.read(&mut [0u8; 1]).await;
                    }
                    return;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_stalls_mid_body_is_given_up_after_the_response_timeout() {
    let backend = stalling_backend(false).await;
    let settings = Settings {
        response_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let (port, _proxy) = serve_proxy(settings, backend, Duration::from_millis(200)).await;
    let (answer, took) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (
            String::from_utf8_lossy(&out).into_owned(),
            started.elapsed(),
        )
    })
    .await
    .unwrap();
    assert!(answer.ends_with("\r\n\r\nabc"), "{answer}");
    assert!(
        took < Duration::from_secs(5),
        "the client's connection was held {took:?}"
    );
}

/// A prior-knowledge HTTP/2 client of the proxy at `port`.
async fn h2c<B>(port: u16) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_answer_that_stalls_mid_body_is_reset_after_the_response_timeout() {
    let backend = stalling_backend(false).await;
    let settings = Settings {
        h2c: true,
        response_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let (port, _proxy) = serve_proxy(settings, backend, Duration::from_millis(200)).await;
    let mut send = h2c::<Full<Bytes>>(port).await;
    let req = hyper::Request::builder()
        .uri(format!("http://127.0.0.1:{port}/big"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = std::time::Instant::now();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), r.into_body().collect()).await;
    let took = started.elapsed();
    assert!(
        matches!(body, Ok(Err(_))),
        "the stream ends in an error, not a short body or a wait: {body:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the stream was held {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_task_cuts_short_do_not_count_as_the_h2_clients_resets() {
    let backend = stalling_backend(true).await;
    let settings = Settings {
        h2c: true,
        ..Settings::default()
    };
    let (port, _proxy) = serve_proxy(settings, backend, Duration::from_millis(200)).await;
    let send = h2c::<Full<Bytes>>(port).await;
    // More broken answers in a second than the rapid-reset cap (200): each
    // stream is reset by the proxy (INTERNAL_ERROR), none by the client.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let mut send = send.clone();
        calls.spawn(async move {
            let req = hyper::Request::builder()
                .uri(format!("http://127.0.0.1:{port}/big"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            match send.send_request(req).await {
                Ok(r) => r.into_body().collect().await.is_err(),
                Err(_) => false,
            }
        });
    }
    let mut reset = 0;
    while let Some(r) = calls.join_next().await {
        reset += usize::from(r.unwrap());
    }
    assert_eq!(reset, 300, "every stream answered, then reset mid-body");
    // The connection still serves: the task's health path answers whole.
    let req = hyper::Request::builder()
        .uri(format!("http://127.0.0.1:{port}/health"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send
        .clone()
        .send_request(req)
        .await
        .expect("the connection is still open");
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "ok");
}

/// A task answering every request with a chunked body that also carries
/// a wrong `Content-Length`, on kept-alive connections.
async fn length_and_chunked_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // A request: its head, and an empty chunked body if any.
                while let Some(end) = next_head(&mut s, &mut buf).await {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let mut used = end;
                    if head.contains("transfer-encoding: chunked") {
                        while !buf[used..].starts_with(b"0\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        used += 5;
                    }
                    buf.drain(..used);
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_length_and_chunked_is_passed_on_chunked_without_the_length() {
    let backend = length_and_chunked_backend().await;
    let (port, _proxy) =
        serve_proxy(Settings::default(), backend, Duration::from_millis(200)).await;
    // The fast path (a GET), then hyper's (a chunked upload).
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    ] {
        let answer = send(port, request.to_vec()).await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert_eq!(status(&answer), 200, "{answer}");
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "the length went on beside the coding: {head}"
        );
        assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n", "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_400_not_the_tasks_502() {
    let (port, proxy, _seen) = proxy().await;
    let answer = send(
        port,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nnot-a-size\r\n".to_vec(),
    )
    .await;
    assert_eq!(status(&answer), 400, "{answer}");
    assert!(answer.contains("malformed"), "{answer}");
    assert_eq!(proxy.task_health("task-1"), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_connection() {
    let (backend, _seen) = backend().await;
    let settings = Settings {
        max_connections_per_client: 5,
        ..Settings::default()
    };
    let (port, proxy, signal, _serving) = adopted_proxy(settings, backend).await;

    // Ten idle connections from 127.0.0.1: five are kept, five closed.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut closed = 0;
    for s in &idle {
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(100), s.peek(&mut buf)).await;
        match r {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, 5);
    assert_eq!(proxy.rejected_connections(), 5);
    assert_eq!(proxy.open_connections(), 5);

    // Another client address is served meanwhile.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = sock
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The held connections free their places when they go.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(proxy.open_connections(), 0);
    drop(signal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_health_check_answers_503_while_the_host_drains() {
    let (port, proxy, seen) = proxy().await;
    let get =
        b"GET /dockhand/health HTTP/1.1\r\nHost: any.example\r\nConnection: close\r\n\r\n".to_vec();
    let answer = send(port, get.clone()).await;
    assert_eq!(status(&answer), 200, "{answer}");
    proxy.set_draining(true);
    let answer = send(port, get.clone()).await;
    assert_eq!(status(&answer), 503, "{answer}");
    assert!(answer.ends_with("draining\n"), "{answer}");
    proxy.set_draining(false);
    assert_eq!(status(&send(port, get).await), 200);
    // Answered by the proxy itself: no task saw it.
    assert_eq!(seen.lock().unwrap().len(), 0);
}

/// A backend written byte by byte, for the framings a hyper backend would
/// never send: chunked with a trailer, a body ended by close, 103 before
/// the answer, 204. It closes a keep-alive connection idle for `idle`, as
/// tasks with short keep-alive timeouts do. Counts requests by method.
async fn raw_backend(idle: Duration) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tokio::time::timeout(idle, s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return, // idle too long, or closed
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < end + length {
                        let mut chunk = [0u8; 4096];
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    buf.drain(..end + length);
                    let mut words = head.split_whitespace();
                    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    if target == "/health" {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                        continue;
                    }
                    log.lock().unwrap().push(format!("{method} {target}"));
                    let answer: &[u8] = match target {
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n",
                        "/close" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
                        "/nocontent" => b"HTTP/1.1 204 No Content\r\n\r\n",
                        "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    let answer = if method == "HEAD" {
                        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"[..]
                    } else {
                        answer
                    };
                    if s.write_all(answer).await.is_err() || target == "/close" {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn proxy_to(backend: SocketAddr) -> u16 {
    serve_proxy(Settings::default(), backend, Duration::from_secs(5))
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_passes_through_as_sent() {
    let (backend, _) = raw_backend(Duration::from_secs(5)).await;
    let port = proxy_to(backend).await;
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
    };

    let a = send(port, get("/chunked")).await;
    assert_eq!(status(&a), 200, "{a}");
    assert!(a.contains("Transfer-Encoding: chunked\r\n"), "{a}");
    assert!(
        a.ends_with("5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"),
        "{a}"
    );

    let a = send(port, get("/close")).await;
    assert_eq!(status(&a), 200, "{a}");
    assert!(
        a.contains("Connection: close\r\n") && a.ends_with("\r\n\r\nuntil close"),
        "{a}"
    );

    let a = send(port, get("/nocontent")).await;
    assert_eq!(status(&a), 204, "{a}");

    let a = send(port, get("/early")).await;
    assert_eq!(status(&a), 200, "{a}");
    assert!(a.ends_with("final"), "{a}");

    let a = send(
        port,
        b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(status(&a), 200, "{a}");
    assert!(
        a.contains("Content-Length: 2\r\n") && a.ends_with("\r\n\r\n"),
        "{a}"
    );

    // Pipelined on one connection: each answer keeps its framing.
    let a = send(
        port,
        b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\nGET /nocontent HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    let statuses: Vec<&str> = a.matches("HTTP/1.1 ").map(|_| "").collect();
    assert_eq!(statuses.len(), 3, "{a}");
    assert!(
        a.contains("HTTP/1.1 204") && a.ends_with("\r\n\r\nok"),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_task_closed_fail_no_request_and_repeat_none() {
    // The task closes connections idle for 50 ms; requests come every
    // 150 ms, so every pooled connection is stale when it is next used.
    let (backend, seen) = raw_backend(Duration::from_millis(50)).await;
    let port = proxy_to(backend).await;
    let mut failures = Vec::new();
    for i in 0..20 {
        let req = if i % 2 == 0 {
            format!("GET /get{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        } else {
            format!("POST /post{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        };
        let a = send(port, req.into_bytes()).await;
        if status(&a) != 200 {
            failures.push(format!("request {i}: {:?}", a.lines().next()));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(failures.is_empty(), "{failures:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        20,
        "each request reached the task once: {seen:?}"
    );
}

/// An HTTP/2 (h2c) client of a proxy in front of `backend`.
async fn h2c_to(
    backend: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let settings = Settings {
        h2c: true,
        ..Settings::default()
    };
    let port = serve_proxy(settings, backend, Duration::from_secs(5))
        .await
        .0;
    h2c(port).await
}

/// An HTTP/2 request's status, headers and body.
async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    method: &str,
    path: &str,
) -> (u16, hyper::HeaderMap, Bytes) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://x{path}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    let (parts, body) = r.into_parts();
    (
        parts.status.as_u16(),
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_reaches_http2_clients_as_data() {
    let (backend, seen) = raw_backend(Duration::from_secs(5)).await;
    let mut h2 = h2c_to(backend).await;
    // Chunked framing becomes DATA frames (and its hop headers go).
    let (code, headers, body) = h2_get(&mut h2, "GET", "/chunked").await;
    assert_eq!((code, &body[..]), (200, &b"hello world"[..]));
    assert!(headers.get("transfer-encoding").is_none() && headers.get("trailer").is_none());
    let (code, _, body) = h2_get(&mut h2, "GET", "/close").await;
    assert_eq!((code, &body[..]), (200, &b"until close"[..]));
    let (code, _, body) = h2_get(&mut h2, "GET", "/nocontent").await;
    assert_eq!((code, body.len()), (204, 0));
    let (code, _, body) = h2_get(&mut h2, "GET", "/early").await;
    assert_eq!((code, &body[..]), (200, &b"final"[..]));
    let (code, headers, body) = h2_get(&mut h2, "HEAD", "/").await;
    assert_eq!(
        (code, &headers["content-length"], body.len()),
        (200, &"2".parse::<hyper::header::HeaderValue>().unwrap(), 0)
    );
    let (code, _, body) = h2_get(&mut h2, "GET", "/").await;
    assert_eq!((code, &body[..]), (200, &b"ok"[..]));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "GET /chunked",
            "GET /close",
            "GET /nocontent",
            "GET /early",
            "HEAD /",
            "GET /"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_on_stale_pooled_connections_fail_none() {
    // As for HTTP/1.1 clients: every pooled connection is stale when used.
    let (backend, seen) = raw_backend(Duration::from_millis(50)).await;
    let mut h2 = h2c_to(backend).await;
    for i in 0..10 {
        let (code, _, body) = h2_get(&mut h2, "GET", &format!("/get{i}")).await;
        assert_eq!((code, &body[..]), (200, &b"ok"[..]), "request {i}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(seen.lock().unwrap().len(), 10, "each sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_threads_share_the_listener_and_end_after_their_connections() {
    let (backend, seen) = backend().await;
    let settings = Settings {
        threads: 3,
        ..Settings::default()
    };
    let (port, _proxy, signal, serving) = adopted_proxy(settings, backend).await;

    // 40 clients connect at once (whichever thread accepts, some are
    // handed over) and send 5 requests each on their connection.
    let clients: Vec<_> = (0..40)
        .map(|i| {
            tokio::task::spawn_blocking(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                for j in 0..5 {
                    get_kept(&mut s, &format!("/c{i}/r{j}"));
                }
                s
            })
        })
        .collect();
    let mut open = Vec::new();
    for c in clients {
        open.push(c.await.unwrap());
    }
    let forwarded = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, target, _)| target.starts_with("/c"))
        .count();
    assert_eq!(forwarded, 200, "health checks aside");

    // Shutdown: idle keep-alive connections are closed, the threads end
    // with them, serve returns and the listener is gone.
    tokio::time::timeout(Duration::from_secs(10), signal.drain())
        .await
        .expect("every connection ended");
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    for mut s in open {
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "closed by the proxy");
    }
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed"
    );
}

/// A backend counting the connections that carried a request other than
/// its health check: `/big` is 64 KiB sent in two parts 200 ms apart,
/// `/big-chunked` 48 KiB in chunks of 1 KiB with the same pause after the
/// first, anything else `200 ok`.
async fn counting_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let used = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&used);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = tokio::io::BufReader::new(r);
                let mut counted = false;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    loop {
                        let mut header = String::new();
                        if r.read_line(&mut header).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                    }
                    if target != "/health" && !counted {
                        counted = true;
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    let sent = if target == "/big" {
                        let body = vec![b'x'; 64 * 1024];
                        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n";
                        let first = w.write_all(head).await.is_ok()
                            && w.write_all(&body[..1024]).await.is_ok();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        first && w.write_all(&body[1024..]).await.is_ok()
                    } else if target == "/big-chunked" {
                        // 48 chunks of 1 KiB, the first before the pause.
                        let chunk = [b"400\r\n".as_slice(), &[b'x'; 1024], b"\r\n"].concat();
                        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                        let first =
                            w.write_all(head).await.is_ok() && w.write_all(&chunk).await.is_ok();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let mut rest = chunk.repeat(47);
                        rest.extend_from_slice(b"0\r\n\r\n");
                        first && w.write_all(&rest).await.is_ok()
                    } else {
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        w.write_all(ok).await.is_ok()
                    };
                    if !sent {
                        return;
                    }
                }
            });
        }
    });
    (addr, used)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_connection_outlives_a_client_that_left_mid_answer() {
    leaves_mid_answer("/big").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_connection_outlives_a_client_that_left_mid_chunked_answer() {
    leaves_mid_answer("/big-chunked").await;
}

/// A client reads the start of the answer at `target` and leaves; the
/// next request must reuse the task connection.
async fn leaves_mid_answer(target: &'static str) {
    let (backend, used) = counting_backend().await;
    let port = proxy_to(backend).await;
    tokio::task::spawn_blocking(move || {
        // A client that reads the start of a large answer and leaves.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut start = [0u8; 16];
        s.read_exact(&mut start).unwrap();
        assert!(start.starts_with(b"HTTP/1.1 200"));
        drop(s);
        // The rest comes 200 ms later, to nobody: read and dropped.
        std::thread::sleep(Duration::from_millis(600));
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        get_kept(&mut s, "/after");
    })
    .await
    .unwrap();
    assert_eq!(
        used.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second request reused the first one's task connection"
    );
}
