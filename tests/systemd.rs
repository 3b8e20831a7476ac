//! The agent as a systemd `Type=notify` service: READY only once it can
//! serve, a STATUS line, the watchdog kept alive from the main loop, and
//! STOPPING on SIGTERM. A test socket stands in for systemd's.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use support::Agent;

/// Reads notify messages for `dur`.
fn collect(sock: &UnixDatagram, dur: Duration) -> Vec<String> {
    let deadline = Instant::now() + dur;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            out.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_ready_status_watchdog_and_stopping() {
    let mut agent = Agent::new("notify", &[]);
    let path = agent.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind a notify socket");
    // WatchdogSec=1s: the agent must kick it every half second.
    agent.start_with_env(&[
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
    ]);
    let msgs = collect(&sock, Duration::from_secs(4));
    assert!(msgs.iter().any(|m| m == "READY=1"), "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("STATUS=") && m.contains("service(s)")),
        "{msgs:?}"
    );
    let kicks = msgs.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(kicks >= 4, "watchdog kicked {kicks} times in 4 s: {msgs:?}");

    let (_, status) = agent.signal_and_wait("TERM");
    assert!(status.success());
    let msgs = collect(&sock, Duration::from_millis(300));
    assert!(msgs.iter().any(|m| m == "STOPPING=1"), "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_ready_while_docker_does_not_answer() {
    let mut agent = Agent::new(
        "notify-nodocker",
        &["DOCKER_HOST=unix:///nonexistent/docker.sock"],
    );
    let path = agent.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind a notify socket");
    agent.start_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let msgs = collect(&sock, Duration::from_secs(3));
    assert!(!msgs.iter().any(|m| m == "READY=1"), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m == "STATUS=waiting for Docker"),
        "{msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let mut agent = Agent::new("jsonlog", &["DOCKHAND_LOG_FORMAT=json"]);
    agent.start();
    agent.write_service(support::webapp_service("logged", 1, &[]));
    support::wait_for(Duration::from_secs(30), "the task started", || async {
        agent.service("logged").filter(|s| s["RunningCount"] == 1)
    })
    .await;
    let log = agent.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"starting task")
                && l.contains("\"service\":\"logged\"")),
        "{log}"
    );
}
