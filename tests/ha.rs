//! The control endpoint on PostgreSQL with several replicas: Debian's
//! PostgreSQL (a private server per test: its own data directory and
//! port), three `dockhand control` processes on one database, simulated
//! agents spread over them (and one real agent), the AWS CLI as the
//! operator.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::control::ControlProc;
use support::postgres::Postgres;
use support::sim::{self, SimAgent, SimSpec};
use support::Agent;

const CLUSTER: &str = "my-ecs-cluster";

fn config(db: &str) -> Vec<String> {
    [
        "DOCKHAND_CONTROL_HEARTBEAT_TIMEOUT=5s",
        "DOCKHAND_CONTROL_INSTANCE_GRACE=30s",
        "DOCKHAND_CONTROL_POLL_WAIT=2s",
        "DOCKHAND_CONTROL_SCHEDULER_INTERVAL=200ms",
    ]
    .iter()
    .map(|l| l.to_string())
    .chain(std::iter::once(format!("DOCKHAND_CONTROL_DATABASE={db}")))
    .collect()
}

/// Three replicas on database `name` of `pg`.
fn replicas(pg: &Postgres, name: &str) -> Vec<ControlProc> {
    let lines = config(&pg.database(name));
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let first = ControlProc::start(name, CLUSTER, &lines);
    let second = first.replica(&format!("{name}2"));
    let third = first.replica(&format!("{name}3"));
    vec![first, second, third]
}

/// Waits until exactly one replica schedules; returns which.
async fn one_leader(r: &[ControlProc], secs: u64) -> usize {
    let started = Instant::now();
    loop {
        let leaders: Vec<usize> = (0..r.len()).filter(|&i| r[i].is_leader()).collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "no single leader after {secs}s: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A simulated host connected to replica `home` first, the others after.
async fn sim_host(r: &[ControlProc], home: usize, id: &str) -> SimAgent {
    let mut ep = r[home].endpoint(&r[home].instance);
    ep.others = (0..r.len())
        .filter(|&i| i != home)
        .map(|i| r[i].endpoint(&r[i].instance).addr)
        .collect();
    let mut spec = SimSpec::new(CLUSTER, id);
    spec.wait_seconds = 2;
    SimAgent::start(&ep, spec)
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn container_definitions(image: &str, test_id: &str, env: &[(&str, &str)]) -> String {
    let environment: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    json!([{
        "name": "web", "image": image, "memory": 32, "essential": true, "stopTimeout": 2,
        "portMappings": [{"containerPort": 5000, "hostPort": 0}],
        "environment": environment,
        "dockerLabels": {"dockhand-test": test_id},
    }])
    .to_string()
}

fn settled(s: &Value, td: &str, n: u64) -> bool {
    let d = &s["deployments"];
    d.as_array().is_some_and(|a| a.len() == 1)
        && d[0]["taskDefinition"] == td
        && d[0]["rolloutState"] == "COMPLETED"
        && d[0]["runningCount"] == n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_serve_one_cluster_and_changes_reach_every_agent() {
    let pg = Postgres::start();
    let r = replicas(&pg, "walk");
    one_leader(&r, 15).await;
    // The operator talks to replica 1; agents to replicas 2 and 3.
    r[0].aws(&["create-cluster", "--cluster-name", CLUSTER]);
    let mut sims = Vec::new();
    for i in 0..6 {
        sims.push(sim_host(&r, 1 + i % 2, &format!("i-{i:017}")).await);
    }
    // And one real agent, on replica 3 first, replica 2 after.
    let mut real = Agent::new("ha-walk", &[]);
    let hosts = format!("{},{}", r[2].url(), r[1].url());
    real.start_with_env(&[
        ("ECS_CLUSTER", CLUSTER),
        ("ECS_BACKEND_HOST", &hosts),
        ("AWS_ACCESS_KEY_ID", &r[0].instance.id.clone()),
        ("AWS_SECRET_ACCESS_KEY", &r[0].instance.secret.clone()),
        ("DOCKHAND_INSTANCE_ID", "i-0000000000000real"),
    ]);
    let image = support::image();
    let rev1 = r[0].register(
        "hello-world-task",
        &container_definitions(&image, &real.id, &[]),
    );
    r[0].aws(&[
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
        "loadBalancerName=elb,containerName=web,containerPort=5000",
    ]);
    r[0].wait_service(
        CLUSTER,
        "hello-world-service",
        Duration::from_secs(60),
        "4 running",
        |s| settled(s, &rev1, 4),
    )
    .await;
    let rev2 = r[0].register(
        "hello-world-task",
        &container_definitions(&image, &real.id, &[("PROVIDER", "ECS")]),
    );
    r[0].aws(&[
        "update-service",
        "--cluster",
        CLUSTER,
        "--service",
        "hello-world-service",
        "--task-definition",
        &rev2,
    ]);
    r[0].wait_service(
        CLUSTER,
        "hello-world-service",
        Duration::from_secs(60),
        "revision 2",
        |s| settled(s, &rev2, 4),
    )
    .await;
    // Every replica answers the same.
    for c in &r {
        assert!(settled(
            &c.service(CLUSTER, "hello-world-service"),
            &rev2,
            4
        ));
    }

    // A change through replica 1 reaches an agent connected to replica 2
    // within a second.
    let (holder, task) = sims
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            let st = a.state.lock().unwrap();
            st.tasks.keys().next().map(|t| (i, t.clone()))
        })
        .expect("a simulated host with a task");
    r[0].aws(&["stop-task", "--cluster", CLUSTER, "--task", &task]);
    let asked = Instant::now();
    sim::until(
        Duration::from_secs(5),
        "the stop to reach the agent",
        || !sims[holder].state.lock().unwrap().tasks.contains_key(&task),
    )
    .await;
    let reached = asked.elapsed();
    eprintln!(
        "FIGURE a StopTask through replica 1 reached an agent of replica {} in {reached:?}",
        2 + holder % 2
    );
    assert!(reached < Duration::from_secs(1), "{reached:?}");

    // A DAEMON service reaches the real agent too.
    r[0].register(
        "node-exporter",
        &container_definitions(&image, &real.id, &[]),
    );
    r[0].aws(&[
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
    let s = r[0]
        .wait_service(
            CLUSTER,
            "node-exporter",
            Duration::from_secs(60),
            "7 daemon tasks",
            |s| s["runningCount"] == 7,
        )
        .await;
    assert_eq!(s["desiredCount"], 7);
    let tasks = real.api_get("/v1/tasks").unwrap();
    assert!(
        tasks["Tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Family"] == "node-exporter" && t["KnownStatus"] == "RUNNING"),
        "{tasks}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scheduling_replica_dies_mid_deployment_and_another_finishes_it() {
    let pg = Postgres::start();
    let mut r = replicas(&pg, "failover");
    let leader = one_leader(&r, 15).await;
    let other = (leader + 1) % 3;
    r[other].aws(&["create-cluster", "--cluster-name", CLUSTER]);
    let mut sims = Vec::new();
    for i in 0..20 {
        sims.push(sim_host(&r, i % 3, &format!("i-{i:017}")).await);
    }
    let rev1 = r[other].register("web", &container_definitions("webapp", "none", &[]));
    r[other].aws(&[
        "create-service",
        "--cluster",
        CLUSTER,
        "--service-name",
        "web",
        "--task-definition",
        "web",
        "--desired-count",
        "100",
    ]);
    r[other]
        .wait_service(
            CLUSTER,
            "web",
            Duration::from_secs(60),
            "100 running",
            |s| settled(s, &rev1, 100),
        )
        .await;
    // A deployment with room for 10 extra tasks at a time: many steps.
    let rev2 = r[other].register(
        "web",
        &container_definitions("webapp", "none", &[("REVISION", "2")]),
    );
    r[other].aws(&[
        "update-service",
        "--cluster",
        CLUSTER,
        "--service",
        "web",
        "--task-definition",
        &rev2,
        "--deployment-configuration",
        "maximumPercent=110,minimumHealthyPercent=100",
    ]);
    sim::until(Duration::from_secs(30), "the deployment under way", || {
        let n = sim::count(&sims, &rev2);
        (10..80).contains(&n)
    })
    .await;
    r[leader].kill9();
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let took = loop {
        if survivors.iter().any(|&i| r[i].is_leader()) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no replica took over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "FIGURE failover: a replica took the scheduler over {took:?} after kill -9 of the leader"
    );
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    let s = r[other]
        .wait_service(
            CLUSTER,
            "web",
            Duration::from_secs(120),
            "the deployment to complete",
            |s| settled(s, &rev2, 100),
        )
        .await;
    assert_eq!(s["desiredCount"], 100);
    // On the hosts: exactly 100 tasks, all revision 2, none twice.
    sim::until(
        Duration::from_secs(10),
        "100 tasks of revision 2 on the hosts",
        || sim::count(&sims, &rev2) == 100 && sim::count(&sims, &rev1) == 0,
    )
    .await;
    let arns = sim::task_arns(&sims);
    assert_eq!(arns.len(), 100, "no task duplicated across hosts");
    let listed = r[other].aws(&[
        "list-tasks",
        "--cluster",
        CLUSTER,
        "--service-name",
        "web",
        "--max-items",
        "1000",
    ]);
    assert_eq!(listed["taskArns"].as_array().map(Vec::len), Some(100));
    // The dead replica comes back as a follower.
    r[leader].spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    one_leader(&r, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_restarted_under_the_replicas() {
    let pg = Postgres::start();
    let r = replicas(&pg, "restart");
    one_leader(&r, 15).await;
    r[0].aws(&["create-cluster", "--cluster-name", CLUSTER]);
    let mut sims = Vec::new();
    for i in 0..3 {
        sims.push(sim_host(&r, i, &format!("i-{i:017}")).await);
    }
    let td = r[0].register("web", &container_definitions("webapp", "none", &[]));
    r[0].aws(&[
        "create-service",
        "--cluster",
        CLUSTER,
        "--service-name",
        "web",
        "--task-definition",
        "web",
        "--desired-count",
        "3",
    ]);
    r[0].wait_service(CLUSTER, "web", Duration::from_secs(30), "3 running", |s| {
        settled(s, &td, 3)
    })
    .await;
    let before = sim::task_arns(&sims);

    pg.stop();
    for c in &r {
        let e = c
            .aws_once(&["describe-clusters", "--clusters", CLUSTER])
            .unwrap_err();
        assert!(e.contains("ServerException"), "{e}");
    }
    // The hosts keep their tasks meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = sim::task_arns(&sims);
    assert_eq!(during, before);

    pg.resume();
    let back = Instant::now();
    loop {
        if r[1]
            .aws_once(&["describe-clusters", "--clusters", CLUSTER])
            .is_ok()
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the API did not come back"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    one_leader(&r, 15).await;
    r[2].aws(&[
        "update-service",
        "--cluster",
        CLUSTER,
        "--service",
        "web",
        "--desired-count",
        "6",
    ]);
    r[0].wait_service(
        CLUSTER,
        "web",
        Duration::from_secs(30),
        "6 running after the restart",
        |s| settled(s, &td, 6),
    )
    .await;
    sim::until(Duration::from_secs(10), "6 tasks on the hosts", || {
        sim::count(&sims, &td) == 6
    })
    .await;
    let after = sim::task_arns(&sims);
    assert!(before.is_subset(&after), "no task lost across the restart");
}
