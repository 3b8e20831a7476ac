//! The agent under hostile load: descriptors, idle connections, one greedy
//! client. Each test runs a real agent against a real Docker engine.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{routed_service, wait_for, Agent};

const T: Duration = Duration::from_secs(30);

/// A GET from client address `from` (any 127.0.0.0/8 address is loopback).
fn get_from(from: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(format!("{from}:0").parse().expect("address"))?;
        let mut s = tokio::time::timeout(
            Duration::from_secs(5),
            sock.connect(format!("127.0.0.1:{port}").parse().expect("address")),
        )
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .map_err(|_| std::io::Error::other("read timed out"))??;
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })
}

/// Up to `n` idle connections, until the server stops taking them (its
/// kernel backlog full: a connect hangs, and is given up after a moment).
fn idle_connections(port: u16, n: usize) -> Vec<TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut out = Vec::new();
    let mut failed_in_a_row = 0;
    while out.len() < n && failed_in_a_row < 3 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => {
                failed_in_a_row = 0;
                out.push(s);
            }
            Err(_) => failed_in_a_row += 1,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_cannot_exhaust_the_agent_or_starve_health_checks() {
    let mut agent = Agent::new("fds", &["DOCKHAND_PROXY_MAX_CONNECTIONS_PER_CLIENT=200"]);
    // The open-files limit of a default systemd service: the agent must
    // keep its proxy below it with a reserve.
    agent.start_with_open_files(1024);
    agent.write_service(routed_service("fds", 1, &[], 1));
    wait_for(T, "a healthy task", || async {
        agent.service("fds").filter(|s| s["HealthyCount"] == 1)
    })
    .await;
    assert!(
        agent
            .log()
            .contains("DOCKHAND_PROXY_MAX_CONNECTIONS lowered to fit the open-files limit"),
        "{}",
        agent.log()
    );

    // 1,100 idle connections to the proxy and 1,100 to the local API, from
    // one client.
    let proxy_port = agent.proxy;
    let api_port = agent.api;
    let held = tokio::task::spawn_blocking(move || {
        let mut all = idle_connections(proxy_port, 1100);
        all.extend(idle_connections(api_port, 1100));
        all
    })
    .await
    .expect("open connections");
    // The proxy takes (and closes most of) all 1,100; the API takes its 64
    // and the kernel queues the rest in its backlog.
    assert!(held.len() >= 1100 + 64, "opened {}", held.len());

    // Another client is served at once; the task stays healthy.
    let started = Instant::now();
    let (code, body) = tokio::task::spawn_blocking(move || get_from("127.0.0.2", proxy_port, "/"))
        .await
        .expect("join")
        .expect("a second client is served");
    assert_eq!((code, body.as_str()), (200, "Hello world!\n"));
    assert!(started.elapsed() < Duration::from_secs(3));

    // Checks keep passing for a few intervals (1 s each).
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The local API answers once idle clients time out (10 s header timeout).
    let svc = wait_for(T, "the local API", || async { agent.service("fds") }).await;
    assert_eq!(svc["HealthyCount"], 1, "{svc}");
    let log = agent.log();
    assert!(!log.contains("Too many open files"), "EMFILE seen");
    assert!(
        !log.contains("backend unhealthy"),
        "a healthy task was marked unhealthy"
    );
    let mut metrics = String::new();
    TcpStream::connect(("127.0.0.1", api_port))
        .and_then(|mut s| {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            s.read_to_string(&mut metrics)
        })
        .expect("metrics");
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dockhand_proxy_connections_rejected_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(rejected >= 800, "rejected {rejected}");
    drop(held);
}
