//! The control endpoint's scale benchmark (run by `bench/control.sh`):
//! N simulated agents hold sessions and report; one service is scaled
//! from 0 to T tasks, then deployed anew; an operator calls the API
//! meanwhile. Prints one line per figure, `name value`, for the script's
//! table.
//!
//! Usage: control_bench ADDRS OPERATOR_ID OPERATOR_SECRET INSTANCE_ID INSTANCE_SECRET AGENTS TASKS
//!
//! ADDRS is one IP:PORT, or several (replicas), comma-separated: agent i
//! holds its session with replica i mod n (the others as fallbacks), the
//! operator calls the first.

#[path = "../tests/support/sim.rs"]
mod sim;

use serde_json::{json, Value};
use sim::{ecs, Conn, Endpoint, SimAgent, SimSpec};
use std::time::{Duration, Instant};

const CLUSTER: &str = "bench";

fn arg(n: usize) -> String {
    std::env::args().nth(n).unwrap_or_else(|| {
        eprintln!("usage: control_bench ADDRS OPERATOR_ID OPERATOR_SECRET INSTANCE_ID INSTANCE_SECRET AGENTS TASKS");
        std::process::exit(2)
    })
}

async fn op(conn: &mut Conn, name: &'static str, body: Value) -> Value {
    let t = Instant::now();
    match conn.call(&ecs(name), &body).await {
        Ok(v) => {
            sim::record(name, t);
            v
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

fn taskdef(env: &str) -> Value {
    json!({
        "family": "bench-web",
        "containerDefinitions": [{
            "name": "web", "image": "webapp", "memory": 32, "essential": true,
            "portMappings": [{"containerPort": 5000, "hostPort": 0}],
            "environment": [{"name": "REVISION", "value": env}]
        }]
    })
}

/// Waits until the service's PRIMARY deployment runs `n` tasks and is
/// COMPLETED; returns the seconds taken.
async fn wait_steady(conn: &mut Conn, n: i64, td: &str, since: Instant) -> f64 {
    loop {
        let v = op(
            conn,
            "DescribeServices",
            json!({"cluster": CLUSTER, "services": ["web"]}),
        )
        .await;
        let s = &v["services"][0];
        let d = &s["deployments"];
        let done = d.as_array().is_some_and(|a| a.len() == 1)
            && d[0]["taskDefinition"]
                .as_str()
                .is_some_and(|t| t.ends_with(td))
            && d[0]["runningCount"] == n
            && d[0]["rolloutState"] == "COMPLETED";
        if done {
            return since.elapsed().as_secs_f64();
        }
        assert!(
            since.elapsed() < Duration::from_secs(1200),
            "not steady after 20 minutes: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i]) / 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let addrs: Vec<std::net::SocketAddr> = arg(1)
        .split(',')
        .map(|a| a.parse().expect("ADDRS are IP:PORT"))
        .collect();
    let operator = Endpoint {
        addr: addrs[0],
        others: addrs[1..].to_vec(),
        key: arg(2),
        secret: arg(3),
        region: "us-east-1".into(),
    };
    let instance = Endpoint {
        key: arg(4),
        secret: arg(5),
        ..operator.clone()
    };
    let agents: usize = arg(6).parse().expect("AGENTS");
    let tasks: i64 = arg(7).parse().expect("TASKS");

    let mut conn = Conn::new(&operator);
    op(&mut conn, "CreateCluster", json!({"clusterName": CLUSTER})).await;
    let td1 = op(&mut conn, "RegisterTaskDefinition", taskdef("1")).await["taskDefinition"]
        ["taskDefinitionArn"]
        .as_str()
        .unwrap()
        .to_string();

    let t = Instant::now();
    let mut sims = Vec::with_capacity(agents);
    let mut joining = tokio::task::JoinSet::new();
    for i in 0..agents {
        // Agent i's home replica first, the others after.
        let mut ep = instance.clone();
        let n = addrs.len();
        ep.addr = addrs[i % n];
        ep.others = (1..n).map(|k| addrs[(i + k) % n]).collect();
        joining.spawn(async move {
            let mut spec = SimSpec::new(CLUSTER, &format!("i-{i:017}"));
            spec.memory = 2048;
            spec.attributes = vec![(
                "ecs.availability-zone".into(),
                format!("us-east-1{}", ["a", "b", "c"][i % 3]),
            )];
            SimAgent::start(&ep, spec).await
        });
        if joining.len() >= 50 {
            sims.push(
                joining
                    .join_next()
                    .await
                    .unwrap()
                    .unwrap()
                    .expect("register"),
            );
        }
    }
    while let Some(r) = joining.join_next().await {
        sims.push(r.unwrap().expect("register"));
    }
    println!("agents_registered {}", sims.len());
    println!("register_all_s {:.2}", t.elapsed().as_secs_f64());

    op(
        &mut conn,
        "CreateService",
        json!({"cluster": CLUSTER, "serviceName": "web", "taskDefinition": td1, "desiredCount": 0,
               "loadBalancers": [{"containerName": "web", "containerPort": 5000}]}),
    )
    .await;
    // The operator's background load: reads while the cluster works.
    let reader = {
        let ep = operator.clone();
        tokio::spawn(async move {
            let mut c = Conn::new(&ep);
            loop {
                op(&mut c, "DescribeClusters", json!({"clusters": [CLUSTER]})).await;
                op(
                    &mut c,
                    "ListContainerInstances",
                    json!({"cluster": CLUSTER, "maxResults": 100}),
                )
                .await;
                op(
                    &mut c,
                    "ListTasks",
                    json!({"cluster": CLUSTER, "serviceName": "web", "maxResults": 100}),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Only the calls made under load count.
    sim::LATENCIES.lock().unwrap().clear();

    let t = Instant::now();
    op(
        &mut conn,
        "UpdateService",
        json!({"cluster": CLUSTER, "service": "web", "desiredCount": tasks}),
    )
    .await;
    let scale_s = wait_steady(&mut conn, tasks, ":1", t).await;
    let on_hosts: usize = sims.iter().map(SimAgent::task_count).sum();
    println!("scale_up_s {scale_s:.2}");
    println!("scale_up_tasks_per_s {:.0}", tasks as f64 / scale_s);
    println!("tasks_on_hosts_after_scale {on_hosts}");

    let td2 = op(&mut conn, "RegisterTaskDefinition", taskdef("2")).await["taskDefinition"]
        ["taskDefinitionArn"]
        .as_str()
        .unwrap()
        .to_string();
    let t = Instant::now();
    op(
        &mut conn,
        "UpdateService",
        json!({"cluster": CLUSTER, "service": "web", "taskDefinition": td2}),
    )
    .await;
    let deploy_s = wait_steady(&mut conn, tasks, ":2", t).await;
    let on_hosts: usize = sims.iter().map(SimAgent::task_count).sum();
    println!("deploy_s {deploy_s:.2}");
    println!("deploy_tasks_per_s {:.0}", tasks as f64 / deploy_s);
    println!("tasks_on_hosts_after_deploy {on_hosts}");
    reader.abort();

    let lat = std::mem::take(&mut *sim::LATENCIES.lock().unwrap());
    let mut kinds: Vec<&str> = lat.iter().map(|(k, _)| *k).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut all: Vec<u32> = lat.iter().map(|(_, us)| *us).collect();
    println!("api_calls {}", all.len());
    println!("api_p50_ms {:.2}", percentile(&mut all, 0.50));
    println!("api_p99_ms {:.2}", percentile(&mut all, 0.99));
    for k in kinds {
        let mut v: Vec<u32> = lat
            .iter()
            .filter(|(x, _)| *x == k)
            .map(|(_, us)| *us)
            .collect();
        println!("p50_ms.{k} {:.2}", percentile(&mut v, 0.50));
        println!("p99_ms.{k} {:.2}", percentile(&mut v, 0.99));
        println!("calls.{k} {}", v.len());
    }
    drop(sims);
}
