//! Managed agents end to end, on one machine with several hosts: a real
//! `dockhand control`, real `dockhand agent` processes in managed mode
//! (each its own data directory, instance id and proxy port, one shared
//! Docker engine), the real AWS CLI as the operator, and HAProxy in front
//! of the hosts' proxies as the article's ELB (checking `/`).

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::control::ControlProc;
use support::{http_get, Agent, Haproxy, Load};

const CLUSTER: &str = "my-ecs-cluster";
const FAST: &[&str] = &[
    "DOCKHAND_CONTROL_HEARTBEAT_TIMEOUT=5s",
    "DOCKHAND_CONTROL_INSTANCE_GRACE=10s",
    "DOCKHAND_CONTROL_POLL_WAIT=2s",
    "DOCKHAND_CONTROL_SCHEDULER_INTERVAL=200ms",
];

/// The environment of host `n`: a managed agent of `ctl`'s cluster with
/// instance id `i-0…0{n}`.
fn host_env(ctl: &ControlProc, n: usize, secret: Option<&str>) -> Vec<(String, String)> {
    let secret = secret.map_or_else(|| ctl.instance.secret.clone(), str::to_string);
    vec![
        ("ECS_CLUSTER".into(), CLUSTER.into()),
        ("ECS_BACKEND_HOST".into(), ctl.url()),
        ("AWS_ACCESS_KEY_ID".into(), ctl.instance.id.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), secret),
        ("DOCKHAND_INSTANCE_ID".into(), format!("i-{n:017}")),
        ("DOCKHAND_DRAIN_TIMEOUT".into(), "60s".into()),
    ]
}

fn start_host(a: &mut Agent, env: &[(String, String)]) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    a.start_with_env(&env);
}

/// Host `n`, started.
fn host(ctl: &ControlProc, test: &str, n: usize, secret: Option<&str>) -> Agent {
    let mut a = Agent::new(test, &[]);
    start_host(&mut a, &host_env(ctl, n, secret));
    a
}

/// The hello-world task definition: the test webapp (the article's
/// training/webapp), its route checked every second on `/health`, the test
/// label on its container for cleanup.
fn container_definitions(test_id: &str, env: &[(&str, &str)], memory: u32) -> String {
    let environment: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    json!([{
        "name": "hello-world-container",
        "image": support::image(),
        "memory": memory,
        "essential": true,
        "stopTimeout": 2,
        "portMappings": [{"containerPort": 5000, "hostPort": 0, "protocol": "tcp"}],
        "environment": environment,
        "dockerLabels": {
            "dockhand-test": test_id,
            "dockhand.lb.health-check.path": "/health",
            "dockhand.lb.health-check.interval-seconds": "1",
            "dockhand.lb.health-check.timeout-seconds": "1",
            "dockhand.lb.health-check.healthy-threshold": "2",
            "dockhand.lb.health-check.unhealthy-threshold": "2",
            "dockhand.lb.deregistration-delay-seconds": "2",
        },
    }])
    .to_string()
}

fn register(
    ctl: &ControlProc,
    family: &str,
    test_id: &str,
    env: &[(&str, &str)],
    memory: u32,
) -> String {
    ctl.register(family, &container_definitions(test_id, env, memory))
}

fn service(ctl: &ControlProc, name: &str) -> Value {
    ctl.service(CLUSTER, name)
}

async fn wait_service(
    ctl: &ControlProc,
    name: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    ctl.wait_service(CLUSTER, name, Duration::from_secs(secs), what, f)
        .await
}

/// Prints a figure line for the note, and fails on any failed request.
fn no_failures(what: &str, stats: &support::LoadStats) {
    eprintln!(
        "FIGURE {what}: requests ok {} failed {}",
        stats.ok,
        stats.non_200 + stats.errors
    );
    assert_eq!(
        (stats.non_200, stats.errors),
        (0, 0),
        "{what}: {:?}",
        stats.failures
    );
}

/// The one deployment COMPLETED, running `n` tasks of `td`.
fn settled(s: &Value, td: &str, n: u64) -> bool {
    let d = &s["deployments"];
    d.as_array().is_some_and(|a| a.len() == 1)
        && d[0]["taskDefinition"] == td
        && d[0]["rolloutState"] == "COMPLETED"
        && d[0]["runningCount"] == n
}

/// Docker ids of the task containers an agent runs (its local API).
fn docker_ids(a: &Agent) -> BTreeSet<String> {
    a.api_get("/v1/tasks")
        .and_then(|t| t["Tasks"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|t| t["DesiredStatus"] == "RUNNING")
        .flat_map(|t| t["Containers"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["DockerId"].as_str().map(str::to_string))
        .collect()
}

fn running_tasks(a: &Agent, family: &str) -> usize {
    a.api_get("/v1/tasks")
        .and_then(|t| t["Tasks"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|t| {
            t["DesiredStatus"] == "RUNNING"
                && t["KnownStatus"] == "RUNNING"
                && t["Family"] == family
        })
        .count()
}

fn body_at(port: u16) -> String {
    http_get(port, "/")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default()
}

async fn until(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_article_on_three_hosts_behind_an_elb() {
    let mut ctl = ControlProc::start("cluster", CLUSTER, FAST);
    ctl.aws(&["create-cluster", "--cluster-name", CLUSTER]);
    let mut hosts: Vec<Agent> = (1..=3).map(|n| host(&ctl, "cluster", n, None)).collect();
    let test_id = hosts[0].id.clone();
    until(20, "three connected instances", || {
        let v = ctl.aws(&[
            "list-container-instances",
            "--cluster",
            CLUSTER,
            "--filter",
            "agentConnected == true",
        ]);
        v["containerInstanceArns"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
    })
    .await;
    let elb = Haproxy::start(&hosts.iter().map(|h| h.proxy).collect::<Vec<_>>(), "/");

    // The article: a task definition and a service of 4 tasks behind the ELB.
    let rev1 = register(&ctl, "hello-world-task", &test_id, &[], 32);
    ctl.aws(&[
        "create-service",
        "--cluster",
        CLUSTER,
        "--service-name",
        "hello-world-service",
        "--task-definition",
        "hello-world-task",
        "--desired-count",
        "4",
        "--load-balancers",
        "loadBalancerName=hello-world-elb,containerName=hello-world-container,containerPort=5000",
    ]);
    let s = wait_service(
        &ctl,
        "hello-world-service",
        60,
        "4 tasks and a steady state",
        |s| {
            settled(s, &rev1, 4)
                && s["events"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|e| e["message"].as_str().unwrap_or("").contains("steady state"))
                })
        },
    )
    .await;
    assert_eq!(s["runningCount"], 4);
    let spread: Vec<usize> = hosts
        .iter()
        .map(|h| running_tasks(h, "hello-world-task"))
        .collect();
    assert_eq!(spread.iter().sum::<usize>(), 4);
    assert!(
        spread.iter().all(|n| *n >= 1),
        "spread over the three hosts: {spread:?}"
    );
    for h in &hosts {
        until(10, "each host's proxy to serve", || {
            body_at(h.proxy) == "Hello world!"
        })
        .await;
    }
    until(10, "the ELB to serve", || {
        body_at(elb.port) == "Hello world!"
    })
    .await;

    // Revision 2 (PROVIDER=ECS) under load through the ELB.
    let load = Load::start(elb.port, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rev2 = register(
        &ctl,
        "hello-world-task",
        &test_id,
        &[("PROVIDER", "ECS")],
        32,
    );
    let started = Instant::now();
    ctl.aws(&[
        "update-service",
        "--cluster",
        CLUSTER,
        "--service",
        "hello-world-service",
        "--task-definition",
        "hello-world-task:2",
    ]);
    wait_service(
        &ctl,
        "hello-world-service",
        90,
        "revision 2 everywhere",
        |s| settled(s, &rev2, 4),
    )
    .await;
    let rollout = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stop();
    eprintln!("FIGURE rollout: update-service to every task on revision 2 in {rollout:?}; requests ok {} failed {}", stats.ok, stats.non_200 + stats.errors);
    assert_eq!(
        (stats.non_200, stats.errors),
        (0, 0),
        "failures during the rollout: {:?}",
        stats.failures
    );
    assert!(
        stats.last.iter().all(|b| b == "Hello ECS!"),
        "{:?}",
        stats.last
    );
    assert!(stats.bodies.contains_key("Hello world!") && stats.bodies.contains_key("Hello ECS!"));

    // Control endpoint down, an agent killed: its tasks keep running and
    // serving; restarted, the agent adopts them; then the control endpoint
    // comes back: nothing restarted, nothing duplicated.
    let before: BTreeSet<String> = hosts.iter().flat_map(docker_ids).collect();
    assert_eq!(before.len(), 4);
    ctl.kill9();
    hosts[0].signal_and_wait("KILL");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let load = Load::start(elb.port, 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    start_host(&mut hosts[0], &host_env(&ctl, 1, None));
    until(20, "the restarted agent to serve its adopted tasks", || {
        body_at(hosts[0].proxy) == "Hello ECS!"
    })
    .await;
    let status = hosts[0].cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(text.contains("NOT CONNECTED"), "{text}");
    ctl.spawn();
    until(20, "the agents to reconnect", || {
        hosts.iter().all(|h| {
            h.api_get("/v1/metadata")
                .is_some_and(|m| m["ControlEndpoint"]["Connected"] == true)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = load.stop();
    let after: BTreeSet<String> = hosts.iter().flat_map(docker_ids).collect();
    assert_eq!(after, before, "no task restarted or duplicated");
    assert_eq!(service(&ctl, "hello-world-service")["runningCount"], 4);
    no_failures("static stability", &stats);

    // A host dies for good (agent and containers): after the grace its
    // tasks run on the others.
    let dead_ids = docker_ids(&hosts[2]);
    let dead_tasks = running_tasks(&hosts[2], "hello-world-task");
    hosts[2].signal_and_wait("KILL");
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f"])
        .args(&dead_ids)
        .output();
    let died = Instant::now();
    let load = Load::start(elb.port, 2);
    until(60, "the dead host's tasks running on the others", || {
        running_tasks(&hosts[0], "hello-world-task") + running_tasks(&hosts[1], "hello-world-task")
            == 4
    })
    .await;
    let replaced = died.elapsed();
    let stats = load.stop();
    eprintln!(
        "FIGURE host death: {dead_tasks} task(s) running elsewhere {replaced:?} after (grace 10s); requests ok {} failed {}",
        stats.ok,
        stats.non_200 + stats.errors
    );
    // The grace runs from the host's last poll, up to one poll wait (2 s)
    // before it died.
    assert!(
        replaced >= Duration::from_secs(8),
        "replaced before the grace: {replaced:?}"
    );
    assert_eq!(
        (stats.non_200, stats.errors),
        (0, 0),
        "{:?}",
        stats.failures
    );

    // DRAINING a host under load: its tasks move, no request fails.
    let load = Load::start(elb.port, 4);
    let arn = hosts[1].api_get("/v1/metadata").unwrap()["ContainerInstanceArn"]
        .as_str()
        .unwrap()
        .to_string();
    ctl.aws(&[
        "update-container-instances-state",
        "--cluster",
        CLUSTER,
        "--container-instances",
        &arn,
        "--status",
        "DRAINING",
    ]);
    until(60, "the drained host to be empty", || {
        running_tasks(&hosts[1], "hello-world-task") == 0
            && running_tasks(&hosts[0], "hello-world-task") == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stop();
    no_failures("draining", &stats);
    ctl.aws(&[
        "update-container-instances-state",
        "--cluster",
        CLUSTER,
        "--container-instances",
        &arn,
        "--status",
        "ACTIVE",
    ]);

    // A DAEMON service follows a fourth host that joins, and leaves with it
    // (SIGTERM: it asks for DRAINING, answers /dockhand/health with 503
    // until its tasks are gone, then exits).
    register(&ctl, "node-exporter", &test_id, &[], 16);
    ctl.aws(&[
        "create-service",
        "--cluster",
        CLUSTER,
        "--service-name",
        "node-exporter",
        "--task-definition",
        "node-exporter",
        "--scheduling-strategy",
        "DAEMON",
    ]);
    until(30, "a daemon task on each live host", || {
        running_tasks(&hosts[0], "node-exporter") == 1
            && running_tasks(&hosts[1], "node-exporter") == 1
    })
    .await;
    let fourth = host(&ctl, "cluster", 4, None);
    until(30, "a daemon task on the fourth host", || {
        running_tasks(&fourth, "node-exporter") == 1
    })
    .await;
    assert_eq!(service(&ctl, "node-exporter")["desiredCount"], 3);
    let mut fourth = fourth;
    let pid = fourth.pid();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    until(
        10,
        "the leaving host to answer its health check with 503",
        || http_get(fourth.proxy, "/dockhand/health").is_ok_and(|(code, _)| code == 503),
    )
    .await;
    let (took, status) = fourth.signal_and_wait("TERM");
    assert!(
        status.success(),
        "the agent exits 0 after draining: {status:?}\n{}",
        fourth.log()
    );
    let log = fourth.log();
    assert!(log.contains("drained: no task left here"), "{log}");
    // The load balancer's check failed before the host's first task stopped.
    let flipped = log.find("host draining: its health check answers 503");
    let first_stop = log.find("stopping task");
    assert!(
        flipped.is_some() && first_stop.is_some() && flipped < first_stop,
        "503 from the host health check must come before any task stops:\n{log}"
    );
    eprintln!("FIGURE leaving host: drained and exited {took:?} after the second SIGTERM");
    wait_service(
        &ctl,
        "node-exporter",
        30,
        "the daemon to follow the host out",
        |s| s["desiredCount"] == 2 && s["runningCount"] == 2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_wrong_key_says_so_and_keeps_trying() {
    let ctl = ControlProc::start("wrongkey", CLUSTER, FAST);
    ctl.aws(&["create-cluster", "--cluster-name", CLUSTER]);
    let a = host(&ctl, "wrongkey", 1, Some("not-the-secret"));
    until(20, "the refusal in the log", || {
        a.log().contains("InvalidSignatureException")
    })
    .await;
    assert!(
        a.log()
            .contains("the control endpoint refused this host's key"),
        "{}",
        a.log()
    );
    let out = a.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("NOT CONNECTED") && text.contains("InvalidSignatureException"),
        "{text}"
    );
    // Still running, retrying with backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        a.api_get("/v1/metadata").is_some(),
        "the agent keeps running"
    );
    let v = ctl.aws(&["list-container-instances", "--cluster", CLUSTER]);
    assert_eq!(v["containerInstanceArns"], json!([]));
}

/// A managed host running 10 tasks of a service behind its proxy: every
/// task serves, and the agent's memory is printed for the note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_tasks_on_one_managed_host() {
    let ctl = ControlProc::start("cluster-ten", CLUSTER, FAST);
    ctl.aws(&["create-cluster", "--cluster-name", CLUSTER]);
    let h = host(&ctl, "cluster-ten", 1, None);
    until(20, "the instance to connect", || {
        let v = ctl.aws(&["list-container-instances", "--cluster", CLUSTER]);
        v["containerInstanceArns"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    })
    .await;
    let rss_idle = support::rss_kib(h.pid());
    let rev = register(&ctl, "ten-tasks", &h.id, &[], 16);
    ctl.aws(&[
        "create-service",
        "--cluster",
        CLUSTER,
        "--service-name",
        "ten",
        "--task-definition",
        "ten-tasks",
        "--desired-count",
        "10",
        "--load-balancers",
        "loadBalancerName=ten-elb,containerName=hello-world-container,containerPort=5000",
    ]);
    wait_service(&ctl, "ten", 120, "10 tasks running", |s| {
        settled(s, &rev, 10)
    })
    .await;
    assert_eq!(running_tasks(&h, "ten-tasks"), 10);
    // Each of the 10 answers through the proxy (round robin over the healthy).
    until(30, "the proxy to serve", || {
        body_at(h.proxy) == "Hello world!"
    })
    .await;
    let hosts: BTreeSet<String> = (0..60)
        .filter_map(|_| {
            http_get(h.proxy, "/env/HOSTNAME")
                .ok()
                .map(|(_, b)| b.trim().to_string())
        })
        .collect();
    assert_eq!(hosts.len(), 10, "answers came from {hosts:?}");
    let rss = support::rss_kib(h.pid());
    eprintln!("FIGURE managed agent RSS: {rss_idle} KiB with no task, {rss} KiB with 10 tasks");
    assert!(rss > 0);
}
