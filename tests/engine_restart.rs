//! The agent survives the Docker engine restarting under it: it reconnects
//! (the event stream re-opens with backoff) and replaces the tasks whose
//! containers died with the engine.
//!
//! This test runs its own dockerd (its own data-root, exec-root, socket and
//! bridge interface) so restarting it disturbs no other test. Not
//! `--bridge=none`: a dockerd started that way deletes the host's docker0,
//! breaking the engine the other tests use.

mod support;

use bollard::query_parameters::ListContainersOptionsBuilder;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{http_get, image, wait_for, Agent};

struct Engine {
    dir: PathBuf,
    bridge: String,
    child: Option<Child>,
}

impl Engine {
    fn socket(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .args([
                "--host",
                &self.socket(),
                "--bridge",
                &self.bridge,
                "--iptables=false",
                "--ip-masq=false",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "private dockerd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers(&self) -> bool {
        Command::new("docker")
            .args(["-H", &self.socket(), "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn stop(&mut self) {
        self.signal("TERM");
    }

    /// Sends `signal` to dockerd and waits for it to exit.
    fn signal(&mut self, signal: &str) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        // Unmount what the engine left under its roots, then remove them.
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            let mut under: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(self.dir.to_str().unwrap_or("/nonexistent")))
                .collect();
            under.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in under {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// A private engine with its own bridge, holding the test image.
fn private_engine(tag: &str) -> Engine {
    let dir = PathBuf::from(format!("/tmp/dh-engine-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A bridge of its own, which the private engine configures.
    let bridge = format!("dh{tag}{}", std::process::id() % 100_000);
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ip link add {bridge} type bridge && ip link set {bridge} up"
        ))
        .status()
        .is_ok_and(|s| s.success());
    assert!(made, "create bridge {bridge} (iproute2, root)");
    let mut engine = Engine {
        dir,
        bridge,
        child: None,
    };
    engine.start();
    // Copy the test image into the private engine.
    let load = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker save {} | docker -H {} load",
            image(),
            engine.socket()
        ))
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    engine
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_recovers_when_the_docker_engine_restarts() {
    let mut engine = private_engine("r");
    let docker = bollard::Docker::connect_with_host(&engine.socket())
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let running = |docker: bollard::Docker| async move {
        let filters: HashMap<&str, Vec<String>> =
            HashMap::from([("label", vec!["dockhand.service=survivor".to_string()])]);
        docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.id)
            .collect::<Vec<_>>()
    };

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut agent = Agent::new("engine", &[&format!("DOCKER_HOST={}", engine.socket())]);
    agent.start();
    agent.write_service(json!({
        "serviceName": "survivor", "desiredCount": 1,
        "taskDefinition": {"family": "survivor", "networkMode": "host", "containerDefinitions": [{
            "name": "web", "image": image(), "memory": 32, "stopTimeout": 2,
            "portMappings": [{"containerPort": port}],
            "environment": [{"name": "PORT", "value": port.to_string()}]}]}
    }));
    let before = wait_for(Duration::from_secs(30), "the task answering", || async {
        let ids = running(docker.clone()).await;
        (ids.len() == 1 && matches!(http_get(port, "/"), Ok((200, _)))).then_some(ids)
    })
    .await;

    // The engine goes away (its containers stop with it) and comes back.
    engine.stop();
    assert!(
        http_get(port, "/").is_err(),
        "the task died with the engine"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.start();
    let restarted = Instant::now();
    let after = wait_for(
        Duration::from_secs(60),
        "a replacement task answering",
        || async {
            let ids = running(docker.clone()).await;
            (ids.len() == 1 && ids != before && matches!(http_get(port, "/"), Ok((200, _))))
                .then_some(ids)
        },
    )
    .await;
    eprintln!(
        "figure: engine back -> replacement task answering: {} ms",
        restarted.elapsed().as_millis()
    );
    assert_ne!(after, before);
    wait_for(
        Duration::from_secs(10),
        "the agent counting it running",
        || async { agent.service("survivor").filter(|s| s["RunningCount"] == 1) },
    )
    .await;
    let log = agent.log();
    assert!(
        log.contains("Docker event stream") || log.contains("cannot observe containers"),
        "{log}"
    );
    // The agent process itself never exited.
    assert!(agent.api_get("/v1/metadata").is_some());
    // Its containers are the engine's to remove along with the data root.
    let _ = Command::new("docker")
        .args(["-H", &engine.socket(), "rm", "-f"])
        .args(&after)
        .stdout(Stdio::null())
        .status();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_converges_when_the_engine_is_killed_in_its_middle() {
    let mut engine = private_engine("k");
    let docker = bollard::Docker::connect_with_host(&engine.socket())
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let list = |docker: bollard::Docker| async move {
        let filters: HashMap<&str, Vec<String>> =
            HashMap::from([("label", vec!["dockhand.service=roll".to_string()])]);
        docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap_or_default()
    };
    let mut agent = Agent::new(
        "engine-kill",
        &[&format!("DOCKER_HOST={}", engine.socket())],
    );
    agent.start();
    agent.write_service(support::routed_service("roll", 3, &[("V", "1")], 1));
    wait_for(Duration::from_secs(60), "3 healthy", || async {
        agent.service("roll").filter(|s| s["HealthyCount"] == 3)
    })
    .await;
    // A rollout begins; the engine is killed in its middle and comes back.
    agent.write_service(support::routed_service("roll", 3, &[("V", "2")], 1));
    wait_for(Duration::from_secs(30), "the rollout under way", || async {
        agent
            .service("roll")
            .filter(|s| s["Deployments"].as_array().is_some_and(|d| d.len() > 1))
    })
    .await;
    engine.signal("KILL");
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.start();
    let done = wait_for(
        Duration::from_secs(120),
        "3 healthy tasks of revision 2",
        || async {
            let s = agent.service("roll")?;
            let cs = list(docker.clone()).await;
            let running: Vec<_> = cs
                .iter()
                .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
                .collect();
            let ok = s["HealthyCount"] == 3
                && running.len() == 3
                && running.iter().all(|c| {
                    c.labels.as_ref().and_then(|l| l.get("dockhand.revision"))
                        == Some(&"2".to_string())
                });
            ok.then_some(cs)
        },
    )
    .await;
    // No duplicate task, nothing left half-created.
    let tasks: std::collections::BTreeSet<String> = done
        .iter()
        .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
        .filter_map(|c| c.labels.as_ref()?.get("dockhand.task").cloned())
        .collect();
    assert_eq!(tasks.len(), 3);
    assert!(
        done.iter()
            .all(|c| c.state != Some(bollard::models::ContainerSummaryStateEnum::CREATED)),
        "no container left created and never started"
    );
    let ids: Vec<String> = done.iter().filter_map(|c| c.id.clone()).collect();
    let _ = Command::new("docker")
        .args(["-H", &engine.socket(), "rm", "-f"])
        .args(&ids)
        .stdout(Stdio::null())
        .status();
}
