//! The control endpoint end to end: a real `dockhand control` process, the
//! real AWS CLI as the operator, and simulated agents (the real protocol
//! over HTTP, no Docker) as the article's five EC2 instances.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::control::ControlProc;
use support::postgres::Postgres;
use support::sim::{self, SimAgent, SimSpec};

const CLUSTER: &str = "my-ecs-cluster";

/// Short timers so that a silent instance is given up in seconds.
const FAST: &[&str] = &[
    "DOCKHAND_CONTROL_HEARTBEAT_TIMEOUT=5s",
    "DOCKHAND_CONTROL_INSTANCE_GRACE=8s",
    "DOCKHAND_CONTROL_POLL_WAIT=2s",
    "DOCKHAND_CONTROL_SCHEDULER_INTERVAL=200ms",
];

fn container_definitions(image: &str, memory: u32, env: &[(&str, &str)]) -> String {
    let environment: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    json!([{
        "name": "hello-world-container",
        "image": image,
        "memory": memory,
        "essential": true,
        "portMappings": [{"containerPort": 5000, "hostPort": 0, "protocol": "tcp"}],
        "environment": environment,
    }])
    .to_string()
}

fn register_taskdef(
    c: &ControlProc,
    family: &str,
    image: &str,
    memory: u32,
    env: &[(&str, &str)],
) -> String {
    c.register(family, &container_definitions(image, memory, env))
}

fn describe_service(c: &ControlProc, name: &str) -> Value {
    c.service(CLUSTER, name)
}

/// Calls `check` on the service every 300 ms until it returns true.
async fn wait_service(
    c: &ControlProc,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    c.wait_service(CLUSTER, name, timeout, what, check).await
}

fn events(s: &Value) -> Vec<String> {
    s["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Tasks running on the simulated hosts, by task definition.
fn running(agents: &[SimAgent]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in agents {
        for (td, n) in a.running() {
            *m.entry(td).or_default() += n;
        }
    }
    m
}

async fn join(c: &ControlProc, id: &str) -> SimAgent {
    let mut spec = SimSpec::new(CLUSTER, id);
    spec.wait_seconds = 2;
    SimAgent::start(&c.endpoint(&c.instance), spec)
        .await
        .unwrap_or_else(|e| panic!("{id} cannot register: {e}\n{}", c.log()))
}

/// The config lines that put a control endpoint on `pg` (database
/// `name`), or on its SQLite file.
fn database(pg: Option<&Postgres>, name: &str, mut lines: Vec<String>) -> Vec<String> {
    if let Some(pg) = pg {
        lines.push(format!("DOCKHAND_CONTROL_DATABASE={}", pg.database(name)));
    }
    lines
}

fn lines(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_article_walkthrough_through_the_aws_cli_on_sqlite() {
    walkthrough(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_article_walkthrough_through_the_aws_cli_on_postgresql() {
    let pg = Postgres::start();
    walkthrough(Some(&pg)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_authentication_failure_gets_ecs_error_and_changes_nothing_on_sqlite() {
    authentication_failures(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_authentication_failure_gets_ecs_error_and_changes_nothing_on_postgresql() {
    let pg = Postgres::start();
    authentication_failures(Some(&pg)).await;
}

/// `dockhand control migrate` on database `url`: (success, stderr).
fn migrate(dir: &std::path::Path, url: &str) -> (bool, String) {
    let config = dir.join("migrate.conf");
    std::fs::write(
        &config,
        format!(
            "DOCKHAND_CONTROL_DATADIR={}\nDOCKHAND_CONTROL_DATABASE={url}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let out = support::dockhand()
        .args(["control", "--config"])
        .arg(&config)
        .arg("migrate")
        .output()
        .expect("run dockhand control migrate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The control endpoint reaches PostgreSQL over TLS with the server's
/// certificate checked (`sslmode=verify-full`, the CA in `sslrootcert`), on
/// a server that takes no plain TCP connection; checked against another CA,
/// or without TLS, it refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_reaches_postgresql_over_tls_with_its_certificate_checked() {
    let dir = std::env::temp_dir().join(format!(
        "dockhand-pgtls-{}-{}",
        std::process::id(),
        support::free_port()
    ));
    let server = support::certs::issue(&dir, "pg", &["127.0.0.1"]);
    let other = support::certs::issue(&dir, "other", &["127.0.0.1"]);
    let pg = Postgres::start_tls(&server.cert, &server.key);
    let base = pg.database("tls");
    let url = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        server.ca.display()
    );
    let c = ControlProc::start(
        "pgtls",
        CLUSTER,
        &[&format!("DOCKHAND_CONTROL_DATABASE={url}")],
    );
    let v = c.aws(&["create-cluster", "--cluster-name", CLUSTER]);
    assert_eq!(v["cluster"]["status"], "ACTIVE");
    let v = c.aws(&["describe-clusters", "--clusters", CLUSTER]);
    assert_eq!(v["clusters"][0]["clusterName"], CLUSTER, "{v}");
    // The control's connections, as the server sees them: all encrypted.
    let seen = pg.query(
        "postgres",
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'tls'",
    );
    let (tls, plain) = seen.split_once('|').expect("two columns");
    assert!(
        tls.parse::<u32>().unwrap() >= 1,
        "connections over TLS: {seen}"
    );
    assert_eq!(plain, "0", "plain connections: {seen}");
    drop(c);

    let (ok, err) = migrate(
        &dir,
        &format!(
            "{base}?sslmode=verify-full&sslrootcert={}",
            other.ca.display()
        ),
    );
    assert!(!ok, "a certificate from another CA was taken");
    let place = format!("cannot connect to PostgreSQL at 127.0.0.1:{}/tls", pg.port);
    assert!(err.contains(&place), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    let (ok, err) = migrate(&dir, &format!("{base}?sslmode=disable"));
    assert!(!ok, "a plain connection was taken");
    assert!(
        err.contains(&place) && err.contains("no encryption"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn walkthrough(pg: Option<&Postgres>) {
    let config = database(
        pg,
        "walkthrough",
        FAST.iter().map(|l| l.to_string()).collect(),
    );
    let mut c = ControlProc::start("walkthrough", CLUSTER, &lines(&config));

    // The article: a cluster, a task definition, five instances.
    let v = c.aws(&["create-cluster", "--cluster-name", CLUSTER]);
    assert_eq!(v["cluster"]["status"], "ACTIVE");
    let rev1 = register_taskdef(&c, "hello-world-task", "training/webapp:latest", 128, &[]);
    assert!(
        rev1.ends_with(":task-definition/hello-world-task:1"),
        "{rev1}"
    );
    let mut agents = Vec::new();
    for i in 0..5 {
        agents.push(join(&c, &format!("i-0000000000000000{i}")).await);
    }
    let v = c.aws(&["list-container-instances", "--cluster", CLUSTER]);
    assert_eq!(v["containerInstanceArns"].as_array().unwrap().len(), 5);
    let arns: Vec<String> = agents.iter().map(SimAgent::arn).collect();
    let mut args = vec![
        "describe-container-instances",
        "--cluster",
        CLUSTER,
        "--container-instances",
    ];
    args.extend(arns.iter().map(String::as_str));
    let v = c.aws(&args);
    for ci in v["containerInstances"].as_array().unwrap() {
        assert_eq!(ci["agentConnected"], true, "{ci}");
        assert_eq!(ci["status"], "ACTIVE");
    }

    // A service of 4 tasks behind a load balancer.
    let v = c.aws(&[
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
        "--deployment-configuration",
        "maximumPercent=200,minimumHealthyPercent=100,deploymentCircuitBreaker={enable=true,rollback=true}",
    ]);
    assert_eq!(v["service"]["desiredCount"], 4);
    let s = wait_service(
        &c,
        "hello-world-service",
        Duration::from_secs(30),
        "4 running and a steady state",
        |s| {
            s["runningCount"] == 4
                && events(s)
                    .iter()
                    .any(|e| e.contains("has reached a steady state"))
        },
    )
    .await;
    assert_eq!(s["deployments"].as_array().unwrap().len(), 1);
    assert_eq!(s["deployments"][0]["rolloutState"], "COMPLETED");
    assert_eq!(sim::count(&agents, &rev1), 4);
    let spread: Vec<usize> = agents.iter().map(SimAgent::task_count).collect();
    assert_eq!(
        spread.iter().filter(|n| **n == 1).count(),
        4,
        "one task per instance: {spread:?}"
    );

    // kill -9 of the control endpoint loses nothing and restarts nothing,
    // even when it stays down longer than the instances' grace (8 s): its
    // own outage is not held against the hosts.
    let before = sim::task_arns(&agents);
    c.kill9();
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = describe_service(&c, "hello-world-service");
    assert_eq!(
        (s["runningCount"].clone(), s["status"].clone()),
        (json!(4), json!("ACTIVE"))
    );
    assert_eq!(
        sim::task_arns(&agents),
        before,
        "no task restarted or added across the restart"
    );

    // Revision 2 (PROVIDER=ECS) rolls out within min/max percent.
    let rev2 = register_taskdef(
        &c,
        "hello-world-task",
        "training/webapp:latest",
        128,
        &[("PROVIDER", "ECS")],
    );
    c.aws(&[
        "update-service",
        "--cluster",
        CLUSTER,
        "--service",
        "hello-world-service",
        "--task-definition",
        "hello-world-task:2",
    ]);
    let started = Instant::now();
    let (mut low, mut high) = (usize::MAX, 0);
    while sim::count(&agents, &rev2) < 4 || sim::count(&agents, &rev1) > 0 {
        let total: usize = running(&agents).values().sum();
        low = low.min(total);
        high = high.max(total);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rollout stuck: {:?}\n{}",
            running(&agents),
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        low >= 4 && high <= 8,
        "tasks on the hosts during the rollout: {low}..{high} (min 100%, max 200% of 4)"
    );
    let s = wait_service(
        &c,
        "hello-world-service",
        Duration::from_secs(20),
        "revision 2 completed",
        |s| {
            s["deployments"].as_array().is_some_and(|d| d.len() == 1)
                && s["deployments"][0]["rolloutState"] == "COMPLETED"
        },
    )
    .await;
    assert_eq!(s["taskDefinition"], json!(rev2));

    // A broken revision trips the circuit breaker and rolls back to 2.
    let rev3 = register_taskdef(&c, "hello-world-task", "crash-webapp:latest", 128, &[]);
    c.aws(&[
        "update-service",
        "--cluster",
        CLUSTER,
        "--service",
        "hello-world-service",
        "--task-definition",
        &rev3,
    ]);
    let s = wait_service(
        &c,
        "hello-world-service",
        Duration::from_secs(30),
        "the breaker to roll back",
        |s| {
            s["taskDefinition"] == json!(rev2.clone())
                && events(s)
                    .iter()
                    .any(|e| e.contains("deployment failed: tasks failed to start"))
                && s["runningCount"] == 4
        },
    )
    .await;
    assert!(
        events(&s).iter().any(|e| e.contains("rolling back")),
        "{:?}",
        events(&s)
    );
    assert_eq!(
        sim::count(&agents, &rev2),
        4,
        "revision 2 kept serving: {:?}",
        running(&agents)
    );
    assert_eq!(sim::count(&agents, &rev3), 0);

    // DRAINING moves the tasks off an instance.
    let drained = agents.iter().position(|a| a.task_count() > 0).unwrap();
    let drained_arn = agents[drained].arn();
    let v = c.aws(&[
        "update-container-instances-state",
        "--cluster",
        CLUSTER,
        "--container-instances",
        &drained_arn,
        "--status",
        "DRAINING",
    ]);
    assert_eq!(v["containerInstances"][0]["status"], "DRAINING");
    sim::until(
        Duration::from_secs(20),
        "the draining instance to be empty",
        || agents[drained].task_count() == 0 && sim::count(&agents, &rev2) == 4,
    )
    .await;

    // A DAEMON service runs one task per ACTIVE instance, and follows a
    // sixth instance joining.
    let daemon_td = register_taskdef(&c, "node-exporter", "exporter:latest", 64, &[]);
    c.aws(&[
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
    sim::until(Duration::from_secs(20), "4 daemon tasks", || {
        sim::count(&agents, &daemon_td) == 4
    })
    .await;
    agents.push(join(&c, "i-00000000000000006").await);
    sim::until(
        Duration::from_secs(20),
        "a daemon task on the sixth instance",
        || sim::count(&agents, &daemon_td) == 5 && agents[5].running().get(&daemon_td) == Some(&1),
    )
    .await;
    assert_eq!(
        agents[drained].running().get(&daemon_td),
        None,
        "none on the draining instance"
    );

    // An instance that goes silent loses its tasks to the others after the
    // grace, not before.
    let lost = agents
        .iter()
        .position(|a| a.running().get(&rev2).is_some_and(|n| *n > 0))
        .unwrap();
    let lost_tasks = agents[lost].running().get(&rev2).copied().unwrap_or(0);
    let dead = agents.remove(lost);
    let died = Instant::now();
    drop(dead);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        sim::count(&agents, &rev2),
        4 - lost_tasks,
        "not replaced within the grace"
    );
    sim::until(
        Duration::from_secs(30),
        "the lost instance's tasks replaced",
        || sim::count(&agents, &rev2) == 4,
    )
    .await;
    // The grace (8 s) runs from the instance's last poll, at most one poll
    // wait (2 s) before it died.
    assert!(
        died.elapsed() >= Duration::from_secs(6),
        "replaced after {:?}, before the 8 s grace",
        died.elapsed()
    );

    // RunTask, ListTasks, StopTask, DescribeTasks.
    let v = c.aws(&[
        "run-task",
        "--cluster",
        CLUSTER,
        "--task-definition",
        "hello-world-task:2",
        "--count",
        "2",
        "--started-by",
        "ci-job",
    ]);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 2, "{v}");
    let v = c.aws(&["list-tasks", "--cluster", CLUSTER, "--started-by", "ci-job"]);
    let ci: Vec<String> = serde_json::from_value(v["taskArns"].clone()).unwrap();
    assert_eq!(ci.len(), 2);
    // A RunTask sent again with its client token (botocore's retry of an
    // answer it lost) gets the same task, not a second one; the token with
    // another request is refused.
    let once = [
        "run-task",
        "--cluster",
        CLUSTER,
        "--task-definition",
        "hello-world-task:2",
        "--started-by",
        "ci-once",
        "--client-token",
        "run-once-0001",
    ];
    let first = c.aws(&once);
    let again = c.aws(&once);
    assert_eq!(first["tasks"][0]["taskArn"], again["tasks"][0]["taskArn"]);
    let v = c.aws(&[
        "list-tasks",
        "--cluster",
        CLUSTER,
        "--started-by",
        "ci-once",
    ]);
    assert_eq!(v["taskArns"].as_array().unwrap().len(), 1, "{v}");
    let mut other = once.to_vec();
    other[6] = "ci-other";
    let e = c.aws_as(&c.operator.profile.clone(), &other).unwrap_err();
    assert!(
        e.contains("InvalidParameterException") && e.contains("clientToken"),
        "{e}"
    );
    c.aws(&[
        "stop-task",
        "--cluster",
        CLUSTER,
        "--task",
        first["tasks"][0]["taskArn"].as_str().unwrap(),
    ]);
    c.aws(&[
        "stop-task",
        "--cluster",
        CLUSTER,
        "--task",
        &ci[0],
        "--reason",
        "done",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c.aws(&["describe-tasks", "--cluster", CLUSTER, "--tasks", &ci[0]]);
        let t = &v["tasks"][0];
        if t["lastStatus"] == "STOPPED" {
            assert_eq!(t["stoppedReason"], "done");
            assert_eq!(t["stopCode"], "UserInitiated");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped task never reported STOPPED: {t}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let v = c.aws(&[
        "run-task",
        "--cluster",
        CLUSTER,
        "--task-definition",
        &register_taskdef(&c, "too-big", "webapp", 100_000, &[]),
    ]);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 0);
    assert_eq!(v["failures"][0]["reason"], "RESOURCE:MEMORY", "{v}");

    // Tags, and a field Dockhand does not support named in the error.
    let cluster_arn = c.aws(&["describe-clusters", "--clusters", CLUSTER])["clusters"][0]
        ["clusterArn"]
        .as_str()
        .unwrap()
        .to_string();
    c.aws(&[
        "tag-resource",
        "--resource-arn",
        &cluster_arn,
        "--tags",
        "key=team,value=web",
    ]);
    let v = c.aws(&["list-tags-for-resource", "--resource-arn", &cluster_arn]);
    assert_eq!(v["tags"], json!([{"key": "team", "value": "web"}]));
    let op = c.operator.profile.clone();
    let e = c
        .aws_as(
            &op,
            &[
                "create-service",
                "--cluster",
                CLUSTER,
                "--service-name",
                "vpc",
                "--task-definition",
                "hello-world-task",
                "--desired-count",
                "1",
                "--network-configuration",
                "awsvpcConfiguration={subnets=[subnet-1]}",
            ],
        )
        .unwrap_err();
    assert!(
        e.contains("InvalidParameterException")
            && e.contains("networkConfiguration is not supported"),
        "{e}"
    );
}

/// Signs `headers` and `body` with the operator's key, as of `ago` ago.
fn operator_signed(
    c: &ControlProc,
    headers: &mut Vec<(String, String)>,
    body: &[u8],
    ago: Duration,
) {
    dockhand_control::auth::sigv4::sign_headers(
        "POST",
        "/",
        "",
        headers,
        body,
        &c.operator.id,
        &c.operator.secret,
        "ecs",
        "us-east-1",
        std::time::SystemTime::now() - ago,
    );
}

/// `POST /` with `headers` and `body`, on a connection that closes after.
fn raw_post(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut req = String::from("POST / HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    raw
}

async fn authentication_failures(pg: Option<&Postgres>) {
    let config = database(pg, "auth", Vec::new());
    let c = ControlProc::start("auth", CLUSTER, &lines(&config));
    c.aws(&["create-cluster", "--cluster-name", CLUSTER]);
    let creds = c.dir.join("credentials");
    let mut text = std::fs::read_to_string(&creds).unwrap();
    // Profiles the control endpoint does not know, or knows with another
    // secret (the AWS CLI reads them; the control's file is the same file,
    // so they are written where only the CLI looks).
    let cli_creds = c.dir.join("cli-credentials");
    text.push_str("\n[stranger]\naws_access_key_id = AKIAUNKNOWNUNKNOWN00\naws_secret_access_key = nope\nrole = operator\n");
    text.push_str(&format!(
        "\n[forger]\naws_access_key_id = {}\naws_secret_access_key = not-the-secret\nrole = operator\n",
        c.operator.id
    ));
    std::fs::write(&cli_creds, text).unwrap();
    let aws_with = |profile: &str, args: &[&str]| -> String {
        let out = std::process::Command::new("aws")
            .arg("ecs")
            .args(args)
            .args(["--endpoint-url", &c.url()])
            .env("AWS_SHARED_CREDENTIALS_FILE", &cli_creds)
            .env("AWS_CONFIG_FILE", c.dir.join("absent"))
            .env("AWS_PROFILE", profile)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{profile} {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = aws_with("stranger", &["delete-cluster", "--cluster", CLUSTER]);
    assert!(e.contains("UnrecognizedClientException"), "{e}");
    let e = aws_with("forger", &["delete-cluster", "--cluster", CLUSTER]);
    assert!(e.contains("InvalidSignatureException"), "{e}");
    let inst = c.instance.profile.clone();
    let e = c
        .aws_as(&inst, &["delete-cluster", "--cluster", CLUSTER])
        .unwrap_err();
    assert!(
        e.contains("AccessDeniedException")
            && e.contains("not authorized to perform: ecs:DeleteCluster"),
        "{e}"
    );
    // An instance key of one cluster cannot join another.
    c.aws(&["create-cluster", "--cluster-name", "other"]);
    let mut other = SimSpec::new("other", "i-0ther");
    other.wait_seconds = 1;
    let e = SimAgent::start(&c.endpoint(&c.instance), other)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, "AccessDeniedException", "{e}");

    // Unsigned, and signed 20 minutes ago.
    let unsigned = support::raw(
        c.port,
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonEC2ContainerServiceV20141113.DeleteCluster\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 29\r\nConnection: close\r\n\r\n{\"cluster\": \"my-ecs-cluster\"}",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        unsigned.starts_with("HTTP/1.1 403")
            && unsigned.contains("MissingAuthenticationTokenException"),
        "{unsigned}"
    );
    let body = br#"{"cluster": "my-ecs-cluster"}"#;
    let mut headers = vec![
        ("Host".to_string(), format!("127.0.0.1:{}", c.port)),
        (
            "Content-Type".to_string(),
            "application/x-amz-json-1.1".to_string(),
        ),
        (
            "X-Amz-Target".to_string(),
            "AmazonEC2ContainerServiceV20141113.DeleteCluster".to_string(),
        ),
    ];
    operator_signed(&c, &mut headers, body, Duration::from_secs(20 * 60));
    let raw = raw_post(&headers, body);
    let expired = support::raw(c.port, &raw, Duration::from_secs(5)).unwrap();
    assert!(
        expired.contains("InvalidSignatureException") && expired.contains("expired"),
        "{expired}"
    );

    // A signature that does not cover X-Amz-Target: the same signed body
    // could be sent as another operation.
    let mut headers = vec![
        ("Host".to_string(), format!("127.0.0.1:{}", c.port)),
        (
            "Content-Type".to_string(),
            "application/x-amz-json-1.1".to_string(),
        ),
    ];
    operator_signed(&c, &mut headers, body, Duration::ZERO);
    headers.push((
        "X-Amz-Target".to_string(),
        "AmazonEC2ContainerServiceV20141113.DeleteCluster".to_string(),
    ));
    let raw = raw_post(&headers, body);
    let unsigned_target = support::raw(c.port, &raw, Duration::from_secs(5)).unwrap();
    assert!(
        unsigned_target.contains("IncompleteSignatureException")
            && unsigned_target.contains("x-amz-target"),
        "{unsigned_target}"
    );

    // An instance key drains its own host when it shuts down, but cannot
    // make a host ACTIVE again: all hosts of a cluster share the key, and
    // any of them could undo an operator's DRAINING.
    let host = SimAgent::start(
        &c.endpoint(&c.instance),
        SimSpec::new(CLUSTER, "i-0perat0rdrained"),
    )
    .await
    .unwrap();
    let host_arn = host.arn();
    let set_status = |status: &'static str| {
        [
            "update-container-instances-state",
            "--cluster",
            CLUSTER,
            "--container-instances",
            host_arn.as_str(),
            "--status",
            status,
        ]
    };
    let v = c.aws(&set_status("DRAINING"));
    assert_eq!(v["containerInstances"][0]["status"], "DRAINING");
    let e = c.aws_as(&inst, &set_status("ACTIVE")).unwrap_err();
    assert!(e.contains("AccessDeniedException"), "{e}");
    let v = c.aws(&[
        "describe-container-instances",
        "--cluster",
        CLUSTER,
        "--container-instances",
        &host.arn(),
    ]);
    assert_eq!(v["containerInstances"][0]["status"], "DRAINING");

    // A report sequence beyond what the endpoint stores is refused whole;
    // stored as the maximum, it made every later report a repeat.
    let mut conn = sim::Conn::new(&c.endpoint(&c.instance));
    let e = conn
        .call(
            dockhand_model::protocol::REPORT,
            &json!({"cluster": CLUSTER, "containerInstance": host.arn(), "changes": [
                {"sequence": u64::MAX, "task": "x", "status": "PENDING", "atMs": 0}]}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "InvalidParameterException", "{e}");
    assert!(e.message.contains("changes[0].sequence"), "{e}");

    // Nothing changed: both clusters are there, and ACTIVE.
    let v = c.aws(&["describe-clusters", "--clusters", CLUSTER, "other"]);
    let status: Vec<&str> = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, ["ACTIVE", "ACTIVE"]);
}
