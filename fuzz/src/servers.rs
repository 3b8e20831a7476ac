//! The server targets: raw bytes on loopback sockets to an in-process
//! proxy (in front of a real backend) and to the agent's local API.

use crate::{corpus, first_line, is_http_or_closed, mutate, runtime, Outcome, Rng, Shared};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Clients sending cases at once.
const CLIENTS: usize = 8;
/// A good request must be answered after this many cases per client.
const LIVENESS_EVERY: u64 = 200;

/// A backend answering `200 ok` to everything, echoing nothing.
async fn backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend");
    let addr = l.local_addr().expect("backend address");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Sends one case and reads the answer (until close, or a second).
async fn exchange(port: u16, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(bytes).await?;
    // Half-close: the server sees the end of the request stream.
    s.shutdown().await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await;
    Ok(out)
}

/// What the clients speak: how an answer is judged, and the good request
/// that must get 200 now and then.
#[derive(Clone, Copy)]
enum Proto {
    /// HTTP/1.x, with the good request.
    Http1(&'static [u8]),
    /// Prior-knowledge HTTP/2: a case that starts with the preface is
    /// HTTP/2, anything else HTTP/1.1 on the same listener.
    H2c,
}

impl Proto {
    /// Whether `answer` is 2xx (counted as accepted), or an error if it is
    /// neither an HTTP/1.x answer, nor HTTP/2 frames, nor a clean close.
    fn judge(self, answer: &[u8]) -> Result<bool, String> {
        if answer.starts_with(b"HTTP/1.1 2") || answer.starts_with(b"HTTP/1.0 2") {
            return Ok(true);
        }
        if is_http_or_closed(answer) {
            return Ok(false);
        }
        match self {
            // An HTTP/2 server's first frame is its SETTINGS.
            Proto::H2c if answer.len() >= 9 && answer[3] == 4 => Ok(h2_status_200(answer)),
            _ => Err(format!("not an HTTP answer: {:?}", first_line(answer))),
        }
    }

    /// Sends the good request and says whether it was answered 200, or
    /// what came instead.
    async fn good(self, port: u16) -> Result<(), String> {
        match self {
            Proto::Http1(good) => {
                let answer = exchange(port, good).await;
                match answer {
                    Ok(a) if a.starts_with(b"HTTP/1.1 200") => Ok(()),
                    Ok(a) => Err(first_line(&a)),
                    Err(e) => Err(e.to_string()),
                }
            }
            Proto::H2c => h2c_get(port).await,
        }
    }
}

/// Whether stream 1 got response headers with `:status 200` (HPACK's
/// static entry 8, which an encoder sends as the one byte 0x88), among the
/// whole frames of `bytes`.
fn h2_status_200(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let Some(payload) = bytes.get(9..9 + len) else {
            return false;
        };
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        if bytes[3] == 1 && stream == 1 && payload.first() == Some(&0x88) {
            return true;
        }
        bytes = &bytes[9 + len..];
    }
    false
}

/// Sends [`corpus::h2c_get`] without closing (an HTTP/2 server may drop
/// streams of a connection its client ended) and reads until stream 1's
/// headers come.
async fn h2c_get(port: u16) -> Result<(), String> {
    let run = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(&corpus::h2c_get())
            .await
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("closed after {} bytes without a 200", got.len()));
            }
            got.extend_from_slice(&buf[..n]);
            if h2_status_200(&got) {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap_or_else(|_| Err("no 200 within 2 s".into()))
}

/// Runs clients against `port` until `time` is over: each case must get
/// an HTTP answer (HTTP/2 frames for `Proto::H2c`) or a clean close; now
/// and then a good request must get 200.
async fn drive(
    port: u16,
    seeds: Vec<Vec<u8>>,
    proto: Proto,
    time: Duration,
    seed: u64,
    out: Shared,
) {
    let start = Instant::now();
    let seeds = Arc::new(seeds);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let seeds = Arc::clone(&seeds);
        let out = Arc::clone(&out);
        clients.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed.wrapping_add(c as u64 * 7919));
            let mut n = 0u64;
            while start.elapsed() < time {
                let a = &seeds[rng.below(seeds.len())];
                let b = &seeds[rng.below(seeds.len())];
                let input = mutate(&mut rng, a, b);
                let answer = exchange(port, &input).await;
                n += 1;
                {
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    o.cases += 1;
                    match answer.map(|a| proto.judge(&a)) {
                        Ok(Ok(true)) => o.accepted += 1,
                        Ok(Ok(false)) => {}
                        Ok(Err(why)) => o.fail(why),
                        // Reset by the server: a clean refusal too.
                        Err(_) => {}
                    }
                }
                if n.is_multiple_of(LIVENESS_EVERY) {
                    if let Err(got) = proto.good(port).await {
                        out.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .fail(format!("a good request was not answered 200: {got:?}"));
                    }
                }
            }
        }));
    }
    for c in clients {
        let _ = c.await;
    }
}

const GOOD_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// The proxy's request path.
pub fn proxy(time: Duration, seed: u64) -> Outcome {
    proxy_with(Proto::Http1(GOOD_GET), time, seed)
}

/// The proxy's request path for prior-knowledge HTTP/2 clients (h2c on),
/// HTTP/1.1 cases mixed in.
pub fn proxy_h2c(time: Duration, seed: u64) -> Outcome {
    proxy_with(Proto::H2c, time, seed)
}

fn proxy_with(proto: Proto, time: Duration, seed: u64) -> Outcome {
    let out: Shared = Arc::new(Mutex::new(Outcome {
        target: match proto {
            Proto::Http1(_) => "proxy",
            Proto::H2c => "proxy-h2c",
        },
        ..Outcome::default()
    }));
    let rt = runtime();
    rt.block_on(async {
        let backend = backend().await;
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let proxy = dockhand_proxy::Proxy::new(
            dockhand_proxy::Settings {
                max_header_bytes: 8192,
                idle_timeout: Duration::from_secs(2),
                h2c: matches!(proto, Proto::H2c),
                ..dockhand_proxy::Settings::default()
            },
            tx,
        );
        proxy.set_routes("fuzz", vec![dockhand_proxy::RouteSpec::default()]);
        proxy.add_backend("fuzz", 0, "task", backend, true);
        // An adopted backend needs one passing check.
        for _ in 0..100 {
            if proxy.task_health("task") == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = l.local_addr().expect("proxy address").port();
        let (signal, watch) = drain::channel();
        let p = proxy.clone();
        let server = tokio::spawn(async move { p.serve(vec![l], Vec::new(), watch).await });
        let seeds = match proto {
            Proto::Http1(_) => corpus::http_requests(),
            Proto::H2c => corpus::h2c_requests(),
        };
        drive(port, seeds, proto, time, seed, Arc::clone(&out)).await;
        if proxy.task_health("task") != Some(true) {
            out.lock()
                .unwrap_or_else(|p| p.into_inner())
                .fail("the backend was taken out of rotation by client input".into());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), signal.drain()).await;
        server.abort();
    });
    let o = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
    o
}

/// The agent's local API.
pub fn api(time: Duration, seed: u64) -> Outcome {
    let out: Shared = Arc::new(Mutex::new(Outcome {
        target: "api",
        ..Outcome::default()
    }));
    let rt = runtime();
    rt.block_on(async {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let proxy = dockhand_proxy::Proxy::new(dockhand_proxy::Settings::default(), tx);
        let state = dockhand_agent::api::ApiState {
            status: Arc::new(RwLock::new(dockhand_agent::status::Snapshot::default())),
            proxy,
            changes: Arc::new(dockhand_agent::changes::Changes::default()),
            // Managed mode's metadata, so the fuzzed API serves it too.
            control: Some(Arc::default()),
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API");
        let port = l.local_addr().expect("API address").port();
        let (signal, watch) = drain::channel();
        let server = tokio::spawn(dockhand_agent::api::serve(l, state, watch));
        drive(
            port,
            corpus::api_requests(),
            Proto::Http1(b"GET /v1/metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            time,
            seed,
            Arc::clone(&out),
        )
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), signal.drain()).await;
        server.abort();
    });
    let o = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
    o
}
