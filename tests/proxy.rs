//! The in-process proxy through real containers: health-gated routing,
//! draining, zero-downtime rollouts, and correct HTTP/1.1 proxying.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{certs, docker, http_get, raw, routed_service, wait_for, Agent, Load};

const T: Duration = Duration::from_secs(40);

async fn healthy_count(agent: &Agent, name: &str, n: u64) -> serde_json::Value {
    wait_for(T, &format!("{name}: {n} healthy"), || async {
        agent
            .service(name)
            .filter(|s| s["HealthyCount"].as_u64() == Some(n))
    })
    .await
}

/// The container ids answering `GET /env/HOSTNAME` through the proxy.
fn answering_hosts(port: u16, requests: usize) -> BTreeSet<String> {
    (0..requests)
        .filter_map(|_| match http_get(port, "/env/HOSTNAME") {
            Ok((200, b)) => Some(b.trim().to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_healthy_backends_get_traffic_and_a_failing_one_leaves_and_returns() {
    let d = docker().await;
    let mut agent = Agent::new("health", &[]);
    agent.start();
    agent.write_service(routed_service("web", 2, &[], 5));
    healthy_count(&agent, "web", 2).await;
    let running = agent.running(&d).await;
    let short = |id: &str| id[..12].to_string();
    let all: BTreeSet<String> = running.iter().map(|c| short(&c.id)).collect();
    assert_eq!(answering_hosts(agent.proxy, 20), all, "both tasks serve");

    // One task starts failing its check: out after 2 failures.
    let sick = &running[0];
    let (code, _) = support::raw_post(sick.ports[0], "/admin/unhealthy");
    assert_eq!(code, 200);
    let s = healthy_count(&agent, "web", 1).await;
    let events = s["Events"].to_string();
    assert!(
        events.contains("unhealthy") && events.contains("/health returned 500"),
        "{events}"
    );
    let expect: BTreeSet<String> = [short(&running[1].id)].into();
    assert_eq!(
        answering_hosts(agent.proxy, 20),
        expect,
        "only the healthy task serves"
    );

    // It recovers: back after 2 passes.
    support::raw_post(sick.ports[0], "/admin/healthy");
    healthy_count(&agent, "web", 2).await;
    assert_eq!(answering_hosts(agent.proxy, 20), all);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_never_passes_gets_no_traffic_and_routes_answer_404_and_503() {
    let d = docker().await;
    let mut agent = Agent::new("noroute", &[]);
    agent.start();
    let mut svc = routed_service("sick", 1, &[("UNHEALTHY", "1")], 1);
    svc["loadBalancers"][0]["hosts"] = serde_json::json!(["sick.example"]);
    agent.write_service(svc);
    wait_for(T, "the container running", || async {
        (agent.running(&d).await.len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = raw(
        agent.proxy,
        b"GET / HTTP/1.1\r\nHost: sick.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("no healthy backend for service sick"), "{r}");
    let r = raw(
        agent.proxy,
        b"GET /x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(r.contains("no route for host \"other.example\""), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_of_4_tasks_under_load_fails_no_request() {
    let d = docker().await;
    let mut agent = Agent::new("rollout", &[]);
    agent.start();
    agent.write_service(routed_service("hello", 4, &[("PROVIDER", "world")], 5));
    healthy_count(&agent, "hello", 4).await;
    let old: BTreeSet<String> = agent.running(&d).await.into_iter().map(|c| c.id).collect();

    let load = Load::start(agent.proxy, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let changed = Instant::now();
    agent.write_service(routed_service("hello", 4, &[("PROVIDER", "ECS")], 5));
    wait_for(T, "4 new tasks and no old container left", || async {
        let all = agent.containers(&d).await;
        let done = all.len() == 4 && all.iter().all(|c| c.running && !old.contains(&c.id));
        done.then_some(())
    })
    .await;
    let took = changed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop();
    eprintln!(
        "figure: rollout of 4 tasks under load: {} ms, {} ok, {} non-200, {} errors, bodies {:?}",
        took.as_millis(),
        stats.ok,
        stats.non_200,
        stats.errors,
        stats.bodies
    );
    assert_eq!(
        (stats.non_200, stats.errors),
        (0, 0),
        "failures: {:?}",
        stats.failures
    );
    assert!(stats.ok > 100, "the load ran: {stats:?}");
    assert!(stats.bodies.contains_key("Hello world!") && stats.bodies.contains_key("Hello ECS!"));
    assert!(
        stats.last.iter().all(|b| b == "Hello ECS!"),
        "ends on the new revision: {:?}",
        stats.last
    );
    let (_, metrics) = http_get(agent.api, "/metrics").unwrap();
    let routed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dockhand_proxy_requests_total{service=\"hello\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        routed >= stats.ok,
        "proxied requests counted: {routed} < {}",
        stats.ok
    );
    // One gauge per proxy thread, and what they add up to.
    let per_thread: Vec<u64> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("dockhand_proxy_thread_connections{thread=\""))
        .filter_map(|l| l.split_once("} ")?.1.parse().ok())
        .collect();
    let open: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dockhand_proxy_connections "))
        .and_then(|v| v.parse().ok())
        .expect("open connections in /metrics");
    assert!(!per_thread.is_empty(), "{metrics}");
    assert_eq!(per_thread.iter().sum::<u64>(), open, "{metrics}");
    assert!(metrics.contains("\ndockhand_proxy_connections_moved_total "));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revision_that_crashes_is_rolled_back_while_the_old_one_serves() {
    let d = docker().await;
    let mut agent = Agent::new("breaker", &[]);
    agent.start();
    agent.write_service(routed_service("stable", 2, &[], 5));
    healthy_count(&agent, "stable", 2).await;
    let old: BTreeSet<String> = agent.running(&d).await.into_iter().map(|c| c.id).collect();

    let load = Load::start(agent.proxy, 4);
    agent.write_service(routed_service("stable", 2, &[("EXIT_AFTER_MS", "200")], 5));
    let s = wait_for(T, "the rollout marked FAILED", || async {
        agent
            .service("stable")
            .filter(|s| s["RolloutState"] == "FAILED")
    })
    .await;
    let reason = s["RolloutStateReason"].as_str().unwrap_or("").to_string();
    assert!(
        reason.starts_with("deployment of revision 2 failed: 3 task(s) failed")
            && reason.contains("exited with code 1")
            && reason.ends_with("rolled back to revision 1"),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = load.stop();
    assert_eq!(
        (stats.non_200, stats.errors),
        (0, 0),
        "failures: {:?}",
        stats.failures
    );
    assert_eq!(
        stats.bodies.keys().collect::<Vec<_>>(),
        vec!["Hello world!"]
    );
    let now: BTreeSet<String> = agent.running(&d).await.into_iter().map(|c| c.id).collect();
    assert_eq!(now, old, "the old tasks kept running, untouched");
    assert_eq!(agent.service("stable").unwrap()["Revision"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revision_that_never_passes_its_checks_is_rolled_back() {
    let mut agent = Agent::new("breaker-hc", &[]);
    agent.start();
    agent.write_service(routed_service("checked", 1, &[], 5));
    healthy_count(&agent, "checked", 1).await;
    let load = Load::start(agent.proxy, 2);
    agent.write_service(routed_service("checked", 1, &[("UNHEALTHY", "1")], 5));
    let s = wait_for(
        Duration::from_secs(60),
        "the rollout marked FAILED",
        || async {
            agent
                .service("checked")
                .filter(|s| s["RolloutState"] == "FAILED")
        },
    )
    .await;
    let stats = load.stop();
    let reason = s["RolloutStateReason"].to_string();
    assert!(
        reason.contains("never passed its health checks")
            && reason.contains("/health returned 500"),
        "{reason}"
    );
    assert_eq!(
        (stats.non_200, stats.errors),
        (0, 0),
        "failures: {:?}",
        stats.failures
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_request_in_flight_completes_before_its_task_is_stopped() {
    let d = docker().await;
    let mut agent = Agent::new("drain", &[]);
    agent.start();
    agent.write_service(routed_service("slow", 1, &[], 10));
    healthy_count(&agent, "slow", 1).await;
    let port = agent.proxy;
    let slow = std::thread::spawn(move || {
        let r = http_get(port, "/slow?ms=3000");
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.write_service(routed_service("slow", 0, &[], 10));
    let (answer, _) = slow.join().unwrap();
    wait_for(T, "the container removed", || async {
        agent.containers(&d).await.is_empty().then_some(())
    })
    .await;
    // Had SIGTERM come first, the app would have exited mid-request.
    let (code, body) = answer.expect("the slow request is answered");
    assert_eq!((code, body.as_str()), (200, "slept 3000 ms\n"));
    // The drain waited for it: about 2.7 s, well under the 10 s delay.
    let log = agent.log();
    let waited: u64 = log
        .lines()
        .filter(|l| l.contains("drained"))
        .find_map(|l| {
            l.split("waited_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no drain in the log: {log}"));
    assert!((2000..9000).contains(&waited), "drain waited {waited} ms");
    // New requests got no backend once the drain began.
    let (code, _) = http_get(agent.proxy, "/").unwrap();
    assert!(code == 503 || code == 404, "{code}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_semantics_through_the_proxy() {
    let mut agent = Agent::new("http", &["DOCKHAND_PROXY_MAX_HEADER_BYTES=4096"]);
    agent.start();
    agent.write_service(routed_service("echo", 1, &[], 1));
    healthy_count(&agent, "echo", 1).await;
    let p = agent.proxy;
    let t = Duration::from_secs(5);

    // Host preserved, X-Forwarded-* set, hop-by-hop and Connection-named
    // headers removed.
    let r = raw(
        p,
        b"GET /headers HTTP/1.1\r\nHost: app.example:8080\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 192.0.2.7\r\nX-Keep: yes\r\n\r\n",
        t,
    )
    .unwrap();
    let lower = r.to_ascii_lowercase();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(lower.contains("\nhost: app.example:8080\n"), "{r}");
    assert!(
        lower.contains("x-forwarded-for: 192.0.2.7, 127.0.0.1"),
        "{r}"
    );
    assert!(lower.contains("x-forwarded-proto: http"), "{r}");
    assert!(lower.contains("x-forwarded-host: app.example:8080"), "{r}");
    assert!(lower.contains(&format!("x-forwarded-port: {p}")), "{r}");
    assert!(lower.contains("x-keep: yes"), "{r}");
    assert!(
        !lower.contains("x-secret") && !lower.contains("keep-alive:"),
        "{r}"
    );

    // HTTP/1.0 client.
    let r = raw(p, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", t).unwrap();
    assert!(
        r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
        "{r}"
    );
    assert!(r.ends_with("Hello world!\n"), "{r}");

    // Client keep-alive: two requests on one connection.
    let r = raw(
        p,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap();
    assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");

    // Chunked upload, streamed, with Expect: 100-continue.
    let mut req = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n".to_vec();
    let chunk = vec![b'a'; 65536];
    for _ in 0..64 {
        req.extend_from_slice(b"10000\r\n");
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw(p, &req, t).unwrap();
    assert!(
        r.contains("HTTP/1.1 200") && r.ends_with("\r\n4194304\n"),
        "{}",
        &r[..r.len().min(300)]
    );

    // Upgrade (WebSocket-style): 101, then bytes both ways.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", p)).unwrap();
        s.set_read_timeout(Some(t)).unwrap();
        s.write_all(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"ping through the proxy").unwrap();
        let mut got = Vec::new();
        while got.len() < 22 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "echo closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got, b"ping through the proxy");
    }

    // Malformed and oversized requests get 400 / 431; the proxy lives on.
    let r = raw(p, b"GARBAGE\r\n\r\n", t).unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8192)
    );
    let r = raw(p, big.as_bytes(), t).unwrap();
    assert!(
        r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"),
        "{r}"
    );
    assert_eq!(
        http_get(p, "/").unwrap(),
        (200, "Hello world!\n".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restart_under_socket_activation_fails_no_request() {
    let d = docker().await;
    let mut agent = Agent::new("activation", &["DOCKHAND_PROXY_SHUTDOWN_GRACE=10s"]);
    agent.start_socket_activated(2);
    // systemd-socket-activate starts the program on the first connection.
    let port = agent.proxy;
    let first = std::thread::spawn(move || {
        // Retry until systemd-socket-activate has bound the socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match http_get(port, "/") {
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => return other,
            }
        }
    });
    agent.write_service(routed_service("kept", 2, &[], 5));
    let (code, _) = first
        .join()
        .unwrap()
        .expect("the first connection is served");
    assert!(code == 404 || code == 503 || code == 200, "{code}");
    healthy_count(&agent, "kept", 2).await;
    let before: BTreeSet<String> = agent.running(&d).await.into_iter().map(|c| c.id).collect();
    let first_pid = agent.activated_agent_pid().expect("agent pid");
    // Let the tasks run past their health-check deadline (5 s here), so the
    // new agent must not mistake adopted tasks for ones that never passed.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let load = Load::start(agent.proxy, 4);
    let slow = std::thread::spawn(move || http_get(port, "/slow?ms=2000"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &first_pid.to_string()])
        .status();
    // The second agent takes over the same socket.
    let second_pid = wait_for(T, "the second agent", || async {
        agent.activated_agent_pid().filter(|p| *p != first_pid)
    })
    .await;
    let handover = sent.elapsed();
    wait_for(T, "the second agent serving its API", || async {
        agent.service("kept").filter(|s| s["HealthyCount"] == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stop();
    let (code, body) = slow
        .join()
        .unwrap()
        .expect("the in-flight slow request is answered");
    eprintln!(
        "figure: agent restart under load: handover {} ms, {} ok, {} non-200, {} errors",
        handover.as_millis(),
        stats.ok,
        stats.non_200,
        stats.errors
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "slept 2000 ms\n"),
        "in-flight request finished"
    );
    assert_eq!(
        (stats.non_200, stats.errors),
        (0, 0),
        "failures: {:?}",
        stats.failures
    );
    assert!(stats.ok > 50, "{stats:?}");
    let after: BTreeSet<String> = agent.running(&d).await.into_iter().map(|c| c.id).collect();
    assert_eq!(before, after, "no task restarted");
    assert_ne!(first_pid, second_pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_upload_streams_through_without_growing_memory() {
    use std::io::{Read, Write};
    let mut agent = Agent::new("upload", &[]);
    agent.start();
    agent.write_service(routed_service("sink", 1, &[], 1));
    healthy_count(&agent, "sink", 1).await;
    let before = support::rss_kib(agent.pid());

    const SIZE: u64 = 1 << 30; // 1 GiB
    let port = agent.proxy;
    let pid = agent.pid();
    let upload = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(s, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut peak = 0;
        for i in 0..(SIZE >> 20) {
            s.write_all(&chunk).unwrap();
            if i % 64 == 0 {
                peak = peak.max(support::rss_kib(pid));
            }
        }
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        (answer, peak)
    });
    let started = Instant::now();
    let (answer, peak) = upload.join().unwrap();
    let took = started.elapsed();
    eprintln!(
        "figure: 1 GiB upload through the proxy in {} ms; agent RSS {before} KiB before, {peak} KiB peak",
        took.as_millis()
    );
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with(&format!("\r\n{SIZE}\n")),
        "{answer}"
    );
    assert!(
        peak < before + 32 * 1024,
        "memory grew from {before} to {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_backends_get_504_and_round_robin_alternates() {
    let mut agent = Agent::new("timeouts", &["DOCKHAND_PROXY_RESPONSE_TIMEOUT=1s"]);
    agent.start();
    let mut svc = routed_service("rr", 2, &[], 1);
    svc["loadBalancers"][0]["loadBalancingAlgorithm"] = serde_json::json!("round_robin");
    agent.write_service(svc);
    healthy_count(&agent, "rr", 2).await;

    let (code, body) = http_get(agent.proxy, "/slow?ms=3000").unwrap();
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("did not answer within 1s"), "{body}");

    let mut seen: std::collections::BTreeMap<String, u32> = Default::default();
    for _ in 0..20 {
        let (code, host) = http_get(agent.proxy, "/env/HOSTNAME").unwrap();
        assert_eq!(code, 200);
        *seen.entry(host).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.values().all(|n| *n >= 8),
        "round robin spreads evenly: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_killed_under_load_fails_no_request() {
    let d = docker().await;
    let mut agent = Agent::new("killload", &[]);
    agent.start();
    agent.write_service(routed_service("tough", 2, &[], 5));
    healthy_count(&agent, "tough", 2).await;
    let victim = agent.running(&d).await.remove(0);
    let load = Load::start(agent.proxy, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = std::process::Command::new("docker")
        .args(["kill", &victim.id])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // The replacement joins after passing its checks.
    healthy_count(&agent, "tough", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop();
    eprintln!(
        "figure: a task killed under load: {} ok, {} non-200, {} errors",
        stats.ok, stats.non_200, stats.errors
    );
    assert_eq!(
        (stats.non_200, stats.errors),
        (0, 0),
        "failures: {:?}",
        stats.failures
    );
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// `curl ARGS`: (exit success, `%{http_code} %{http_version}`, body).
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", ""));
    (out.status.success(), tail.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_terminates_tls_speaks_h2_redirects_logs_and_reloads_on_sighup() {
    let tls_port = support::free_port();
    let scratch = std::env::temp_dir().join(format!("dockhand-it-tls-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let first = certs::issue(&scratch, "first", &["localhost", "shop.test"]);
    let (cert, key, ca) = (path(&first.cert), path(&first.key), path(&first.ca));
    let log = scratch.join("access.log");
    let mut agent = Agent::new(
        "tls",
        &[
            &format!("DOCKHAND_PROXY_TLS_LISTEN=127.0.0.1:{tls_port}"),
            &format!("DOCKHAND_PROXY_TLS_CERT={cert}"),
            &format!("DOCKHAND_PROXY_TLS_KEY={key}"),
            &format!("DOCKHAND_PROXY_ACCESS_LOG={}", log.display()),
        ],
    );
    agent.start();
    let mut svc = routed_service("web", 1, &[], 1);
    svc["loadBalancers"][0]["hosts"] = serde_json::json!(["shop.test"]);
    svc["loadBalancers"][0]["tls"] = serde_json::json!({"redirectHttp": true});
    agent.write_service(svc);
    healthy_count(&agent, "web", 1).await;

    let on_tls = format!("shop.test:{tls_port}:127.0.0.1");
    let on_plain = format!("shop.test:{}:127.0.0.1", agent.proxy);
    let url = format!("https://shop.test:{tls_port}/");
    let (ok, tail, body) = curl(&["--cacert", &ca, "--resolve", &on_tls, "--http1.1", &url]);
    assert!(
        ok && tail == "200 1.1" && body.starts_with("Hello"),
        "{tail} {body}\n{}",
        agent.log()
    );
    let (ok, tail, _) = curl(&["--cacert", &ca, "--resolve", &on_tls, "--http2", &url]);
    assert!(ok && tail == "200 2", "{tail}");
    let (ok, tail, _) = curl(&[
        "--resolve",
        &on_plain,
        &format!("http://shop.test:{}/x", agent.proxy),
    ]);
    assert!(ok && tail == "308 1.1", "plain HTTP is redirected: {tail}");

    // SIGHUP: a new certificate in the same files is served at once. It
    // is from another CA: only the new one passes the check below.
    let second = certs::issue(&scratch, "second", &["shop.test"]);
    let new_ca = path(&second.ca);
    std::fs::rename(&second.key, &key).unwrap();
    std::fs::rename(&second.cert, &cert).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status();
    wait_for(
        Duration::from_secs(10),
        "the new certificate after SIGHUP",
        || async {
            let (ok, tail, _) = curl(&["--cacert", &new_ca, "--resolve", &on_tls, &url]);
            (ok && tail == "200 2").then_some(())
        },
    )
    .await;

    // One JSON line per request, and per-route counts on /metrics.
    let lines: Vec<serde_json::Value> =
        wait_for(Duration::from_secs(5), "access log lines", || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            (lines.len() >= 4).then_some(lines)
        })
        .await;
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["service"], "web");
    assert_eq!(lines[0]["tls"], true);
    assert_eq!(lines[2]["status"], 308);
    let (_, metrics) = http_get(agent.api, "/metrics").unwrap();
    assert!(
        metrics.contains(
            "dockhand_proxy_route_requests_total{service=\"web\",route=\"0\",code=\"2xx\"} "
        ) && metrics.contains(
            "dockhand_proxy_route_requests_total{service=\"web\",route=\"0\",code=\"3xx\"} 1"
        ),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_named_tls_is_a_tls_listener() {
    let tls_port = support::free_port();
    let scratch = std::env::temp_dir().join(format!("dockhand-it-tlsfd-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let issued = certs::issue(&scratch, "cert", &["localhost"]);
    let (cert, key, ca) = (path(&issued.cert), path(&issued.key), path(&issued.ca));
    let mut agent = Agent::new(
        "tlsfd",
        &[
            &format!("DOCKHAND_PROXY_TLS_CERT={cert}"),
            &format!("DOCKHAND_PROXY_TLS_KEY={key}"),
        ],
    );
    agent.start_socket_activated_tls(tls_port);
    // systemd-socket-activate starts the program on the first connection.
    let port = agent.proxy;
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    agent.write_service(routed_service("web", 1, &[], 1));
    healthy_count(&agent, "web", 1).await;
    let (ok, tail, body) = curl(&["--cacert", &ca, &format!("https://localhost:{tls_port}/")]);
    assert!(
        ok && tail == "200 2" && body.starts_with("Hello"),
        "{tail} {body}\n{}",
        agent.log()
    );
    let (ok, tail, _) = curl(&[&format!("http://127.0.0.1:{}/", agent.proxy)]);
    assert!(
        ok && tail == "200 1.1",
        "the other socket stays plain: {tail}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
