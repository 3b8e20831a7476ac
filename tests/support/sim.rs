//! A simulated managed agent: it speaks the real protocol to a real
//! `dockhand control` over HTTP (SigV4-signed with an instance key), and
//! runs no containers. The control endpoint's tests and its benchmark use
//! it; the real agent is `dockhand agent` with `ECS_BACKEND_HOST`.
//!
//! What a task does is read from its image name: `crash` in it, the task
//! exits at once with code 1 (never healthy); `unhealthy`, it runs and
//! never passes its checks; anything else runs healthy.

#![allow(dead_code)]

use bytes::Bytes;
use dockhand_control::auth::sigv4;
use dockhand_model::protocol::{
    PollRequest, PollResponse, ReportRequest, ReportResponse, POLL, REPORT,
};
use dockhand_model::task::{
    ContainerStateChange, HealthStatus, NetworkBinding, TaskStateChange, TaskStatus,
};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Where and as whom to call.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Other replicas, tried in turn when one cannot be reached.
    pub others: Vec<SocketAddr>,
    pub key: String,
    pub secret: String,
    pub region: String,
}

/// An error answer: (exception name, message), or a transport failure.
#[derive(Debug, Clone)]
pub struct CallError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// One keep-alive connection to the control endpoint, reopened on error.
pub struct Conn {
    ep: Endpoint,
    tx: Option<SendRequest<Full<Bytes>>>,
    /// Which of the endpoint's addresses is in use.
    current: usize,
}

impl Conn {
    pub fn new(ep: &Endpoint) -> Conn {
        Conn {
            ep: ep.clone(),
            tx: None,
            current: 0,
        }
    }

    /// The address in use now.
    pub fn addr(&self) -> SocketAddr {
        let n = 1 + self.ep.others.len();
        match self.current % n {
            0 => self.ep.addr,
            i => self.ep.others[i - 1],
        }
    }

    /// After a transport failure: the next replica.
    fn next(&mut self) {
        self.tx = None;
        self.current += 1;
    }

    async fn open(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, CallError> {
        if self.tx.as_ref().is_none_or(|t| t.is_closed()) {
            let transport = |e: &dyn std::fmt::Display| CallError {
                code: "Transport".into(),
                message: e.to_string(),
            };
            let s = tokio::net::TcpStream::connect(self.addr())
                .await
                .map_err(|e| transport(&e))?;
            let _ = s.set_nodelay(true);
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .map_err(|e| transport(&e))?;
            tokio::spawn(conn);
            self.tx = Some(tx);
        }
        Ok(self.tx.as_mut().expect("just opened"))
    }

    /// Calls `target` with `body`; returns the answer's JSON. After a
    /// transport failure the next call goes to the next replica.
    pub async fn call(&mut self, target: &str, body: &Value) -> Result<Value, CallError> {
        let r = self.call_here(target, body).await;
        if r.as_ref().is_err_and(|e| e.code == "Transport") {
            self.next();
        }
        r
    }

    async fn call_here(&mut self, target: &str, body: &Value) -> Result<Value, CallError> {
        let bytes = body.to_string().into_bytes();
        let host = self.addr().to_string();
        let mut headers = vec![
            ("Host".to_string(), host),
            (
                "Content-Type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            ("X-Amz-Target".to_string(), target.to_string()),
        ];
        sigv4::sign_headers(
            "POST",
            "/",
            "",
            &mut headers,
            &bytes,
            &self.ep.key,
            &self.ep.secret,
            "ecs",
            &self.ep.region,
            SystemTime::now(),
        );
        let mut req = hyper::Request::builder().method("POST").uri("/");
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| CallError {
                code: "Request".into(),
                message: e.to_string(),
            })?;
        let tx = self.open().await?;
        if tx.ready().await.is_err() {
            self.tx = None;
            return Err(CallError {
                code: "Transport".into(),
                message: "the connection closed".into(),
            });
        }
        let resp = match tx.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.tx = None;
                return Err(CallError {
                    code: "Transport".into(),
                    message: e.to_string(),
                });
            }
        };
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| {
            self.tx = None;
            CallError {
                code: "Transport".into(),
                message: e.to_string(),
            }
        })?;
        let v: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null);
        if status == 200 {
            Ok(v)
        } else {
            Err(CallError {
                code: v["__type"].as_str().unwrap_or("Http").to_string(),
                message: v["message"].as_str().unwrap_or("").to_string(),
            })
        }
    }
}

/// Latencies of calls, microseconds, by kind (for the benchmark).
pub static LATENCIES: Mutex<Vec<(&'static str, u32)>> = Mutex::new(Vec::new());

pub fn record(kind: &'static str, since: Instant) {
    let us = since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    if let Ok(mut l) = LATENCIES.lock() {
        if l.len() < 10_000_000 {
            l.push((kind, us));
        }
    }
}

/// The ECS target of operation `op`.
pub fn ecs(op: &str) -> String {
    format!("AmazonEC2ContainerServiceV20141113.{op}")
}

/// One task as the simulated host runs it.
#[derive(Debug, Clone)]
pub struct SimTask {
    pub arn: String,
    pub task_definition: String,
    pub image: String,
    pub service: Option<String>,
    pub status: TaskStatus,
    pub host_port: u16,
}

/// What a simulated agent holds, for the test to look at.
#[derive(Default)]
pub struct SimState {
    pub arn: Option<String>,
    pub sequence: u64,
    pub instance_status: String,
    pub tasks: BTreeMap<String, SimTask>,
    /// Reports not yet acknowledged.
    pub outbox: Vec<TaskStateChange>,
    pub next_report: u64,
    pub last_error: Option<String>,
    pub polls: u64,
    /// When each task was first seen, and when it was acknowledged
    /// RUNNING (for the benchmark).
    pub acked_running: u64,
}

/// A simulated agent; dropping it stops it (as if its host died).
pub struct SimAgent {
    pub ec2_instance_id: String,
    pub state: Arc<Mutex<SimState>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

/// How a simulated host is made.
#[derive(Clone)]
pub struct SimSpec {
    pub cluster: String,
    pub ec2_instance_id: String,
    pub cpu: i64,
    pub memory: i64,
    pub attributes: Vec<(String, String)>,
    /// How long a poll may be held.
    pub wait_seconds: u64,
}

impl SimSpec {
    pub fn new(cluster: &str, ec2_instance_id: &str) -> SimSpec {
        SimSpec {
            cluster: cluster.into(),
            ec2_instance_id: ec2_instance_id.into(),
            cpu: 2048,
            memory: 3900,
            attributes: vec![("ecs.availability-zone".into(), "us-east-1a".into())],
            wait_seconds: 20,
        }
    }
}

/// Registers, for the first time or again (`arn`).
pub async fn register(
    conn: &mut Conn,
    spec: &SimSpec,
    arn: Option<&str>,
) -> Result<String, CallError> {
    let mut attributes: Vec<Value> = vec![
        json!({"name": "ecs.os-type", "value": "linux"}),
        json!({"name": "ecs.cpu-architecture", "value": "x86_64"}),
    ];
    attributes.extend(
        spec.attributes
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v})),
    );
    let mut body = json!({
        "cluster": spec.cluster,
        "instanceIdentityDocument": json!({"instanceId": spec.ec2_instance_id}).to_string(),
        "totalResources": [
            {"name": "CPU", "type": "INTEGER", "integerValue": spec.cpu},
            {"name": "MEMORY", "type": "INTEGER", "integerValue": spec.memory},
            {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ["22"]},
            {"name": "PORTS_UDP", "type": "STRINGSET", "stringSetValue": []},
        ],
        "versionInfo": {"agentVersion": "sim-1", "dockerVersion": "none"},
        "attributes": attributes,
    });
    if let Some(a) = arn {
        body["containerInstanceArn"] = json!(a);
    }
    let sent = Instant::now();
    let v = conn.call(&ecs("RegisterContainerInstance"), &body).await?;
    record("RegisterContainerInstance", sent);
    Ok(v["containerInstance"]["containerInstanceArn"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

static PORTS: AtomicU64 = AtomicU64::new(0);

/// The changes that bring `state` to the desired set `resp`.
fn reconcile(st: &mut SimState, resp: &PollResponse) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut changes = Vec::new();
    let wanted: BTreeMap<&str, _> = resp
        .tasks
        .iter()
        .map(|t| (t.task_arn.as_str(), t))
        .collect();
    // Tasks no longer in the set, or asked to stop: stopped.
    let gone: Vec<String> = st
        .tasks
        .keys()
        .filter(|a| {
            wanted
                .get(a.as_str())
                .is_none_or(|d| d.desired_status == TaskStatus::Stopped)
        })
        .cloned()
        .collect();
    for arn in gone {
        if let Some(t) = st.tasks.remove(&arn) {
            changes.push(change(
                &t,
                TaskStatus::Stopped,
                HealthStatus::Unknown,
                Some(0),
                now,
            ));
        }
    }
    for d in resp
        .tasks
        .iter()
        .filter(|d| d.desired_status == TaskStatus::Running)
    {
        if st.tasks.contains_key(&d.task_arn) {
            continue;
        }
        let image = d
            .task_definition
            .container_definitions
            .first()
            .map(|c| c.image.clone())
            .unwrap_or_default();
        let t = SimTask {
            arn: d.task_arn.clone(),
            task_definition: d.task_definition_arn.clone(),
            image: image.clone(),
            service: d.service.clone(),
            status: TaskStatus::Running,
            host_port: 49153 + (PORTS.fetch_add(1, Ordering::Relaxed) % 16000) as u16,
        };
        if image.contains("crash") {
            changes.push(change(
                &t,
                TaskStatus::Running,
                HealthStatus::Unknown,
                None,
                now,
            ));
            let mut c = change(&t, TaskStatus::Stopped, HealthStatus::Unknown, Some(1), now);
            c.reason = Some("Essential container in task exited".into());
            changes.push(c);
            continue;
        }
        let health = if image.contains("unhealthy") {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Healthy
        };
        changes.push(change(&t, TaskStatus::Running, health, None, now));
        st.tasks.insert(t.arn.clone(), t);
    }
    for mut c in changes {
        st.next_report += 1;
        c.sequence = st.next_report;
        st.outbox.push(c);
    }
}

fn change(
    t: &SimTask,
    status: TaskStatus,
    health: HealthStatus,
    exit: Option<i64>,
    now: u64,
) -> TaskStateChange {
    TaskStateChange {
        sequence: 0,
        task: t.arn.clone(),
        status,
        reason: None,
        stop_code: None,
        health_status: health,
        containers: vec![ContainerStateChange {
            container_name: "main".into(),
            runtime_id: Some(format!("sim-{}", t.arn.rsplit('/').next().unwrap_or(""))),
            status,
            exit_code: exit,
            reason: None,
            network_bindings: if status == TaskStatus::Running {
                vec![NetworkBinding {
                    bind_ip: Some("127.0.0.1".into()),
                    container_port: 5000,
                    host_port: t.host_port,
                    protocol: "tcp".into(),
                }]
            } else {
                Vec::new()
            },
            health_status: health,
        }],
        at_ms: now,
        engine_failure: false,
    }
}

impl SimAgent {
    /// Registers and starts the session and the reporter.
    pub async fn start(ep: &Endpoint, spec: SimSpec) -> Result<SimAgent, CallError> {
        let mut conn = Conn::new(ep);
        let arn = register(&mut conn, &spec, None).await?;
        let state = Arc::new(Mutex::new(SimState {
            arn: Some(arn.clone()),
            instance_status: "ACTIVE".into(),
            ..Default::default()
        }));
        let wake = Arc::new(tokio::sync::Notify::new());
        let session = {
            let (state, wake, spec, ep) = (
                Arc::clone(&state),
                Arc::clone(&wake),
                spec.clone(),
                ep.clone(),
            );
            tokio::spawn(async move { session(ep, spec, arn, state, wake).await })
        };
        let reporter = {
            let (state, wake, spec, ep) = (
                Arc::clone(&state),
                Arc::clone(&wake),
                spec.clone(),
                ep.clone(),
            );
            tokio::spawn(async move { reporter(ep, spec, state, wake).await })
        };
        Ok(SimAgent {
            ec2_instance_id: spec.ec2_instance_id,
            state,
            handles: vec![session, reporter],
        })
    }

    pub fn arn(&self) -> String {
        self.state.lock().unwrap().arn.clone().unwrap_or_default()
    }

    /// Running tasks by task definition ARN.
    pub fn running(&self) -> BTreeMap<String, usize> {
        let st = self.state.lock().unwrap();
        let mut m = BTreeMap::new();
        for t in st.tasks.values() {
            *m.entry(t.task_definition.clone()).or_default() += 1;
        }
        m
    }

    pub fn task_count(&self) -> usize {
        self.state.lock().unwrap().tasks.len()
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

async fn session(
    ep: Endpoint,
    spec: SimSpec,
    arn: String,
    state: Arc<Mutex<SimState>>,
    wake: Arc<tokio::sync::Notify>,
) {
    let mut conn = Conn::new(&ep);
    let mut backoff = Duration::from_millis(100);
    loop {
        let sequence = state.lock().unwrap().sequence;
        let req = PollRequest {
            cluster: spec.cluster.clone(),
            container_instance: arn.clone(),
            sequence,
            wait_seconds: spec.wait_seconds,
        };
        let body = serde_json::to_value(&req).unwrap_or_default();
        match conn.call(POLL, &body).await {
            Ok(v) => {
                backoff = Duration::from_millis(100);
                let Ok(resp) = serde_json::from_value::<PollResponse>(v) else {
                    continue;
                };
                let mut st = state.lock().unwrap();
                st.polls += 1;
                st.instance_status = resp.instance_status.clone();
                if !resp.unchanged {
                    reconcile(&mut st, &resp);
                    st.sequence = resp.sequence;
                    drop(st);
                    wake.notify_one();
                }
            }
            Err(e) => {
                state.lock().unwrap().last_error = Some(e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn reporter(
    ep: Endpoint,
    spec: SimSpec,
    state: Arc<Mutex<SimState>>,
    wake: Arc<tokio::sync::Notify>,
) {
    let mut conn = Conn::new(&ep);
    loop {
        let (batch, arn) = {
            let st = state.lock().unwrap();
            let batch: Vec<TaskStateChange> = st.outbox.iter().take(500).cloned().collect();
            (batch, st.arn.clone().unwrap_or_default())
        };
        if batch.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        let running = batch
            .iter()
            .filter(|c| c.status == TaskStatus::Running)
            .count() as u64;
        let req = ReportRequest {
            cluster: spec.cluster.clone(),
            container_instance: arn,
            changes: batch,
        };
        let sent = Instant::now();
        match conn
            .call(REPORT, &serde_json::to_value(&req).unwrap_or_default())
            .await
        {
            Ok(v) => {
                record("ReportTaskStates", sent);
                let acked = serde_json::from_value::<ReportResponse>(v)
                    .map(|r| r.acknowledged)
                    .unwrap_or(0);
                let mut st = state.lock().unwrap();
                st.outbox.retain(|c| c.sequence > acked);
                st.acked_running += running;
            }
            Err(e) => {
                state.lock().unwrap().last_error = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Waits until `f` holds, polling every 50 ms, at most `timeout`.
/// Every task on `agents`, by ARN.
pub fn task_arns(agents: &[SimAgent]) -> BTreeSet<String> {
    agents
        .iter()
        .flat_map(|a| {
            a.state
                .lock()
                .unwrap()
                .tasks
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Tasks of task definition `td` running on `agents`.
pub fn count(agents: &[SimAgent], td: &str) -> usize {
    agents
        .iter()
        .map(|a| a.running().get(td).copied().unwrap_or(0))
        .sum()
}

pub async fn until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
