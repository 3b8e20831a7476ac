//! Managed mode: the agent joins a cluster of a control endpoint
//! (`ECS_BACKEND_HOST`) and runs what it places here.
//!
//! ```text
//!   register (RegisterContainerInstance; the ARN kept in ECS_DATADIR)
//!      │
//!   session: Poll ──► desired task set + sequence ──► DesiredState::Known
//!      │    (held open until it changes;             (the supervisor runs
//!      │     unreachable ──► DesiredState::Unknown:   exactly those tasks)
//!      │     hold what runs, stop nothing)
//!   reports: supervisor's changes ──► outbox (ECS_DATADIR) ──► ReportTaskStates
//! ```
//!
//! [`client`] signs and sends; [`reports`] keeps what is not acknowledged.
//! On SIGTERM with `DOCKHAND_DRAIN_ON_SHUTDOWN`, [`drain`] asks for
//! DRAINING and waits until this host's tasks run elsewhere.

pub mod client;
pub mod reports;

use crate::changes::Changes;
use crate::config::Config;
use crate::desired::{Desired, DesiredState, Managed, ManagedTask};
use crate::engine::HostCapacity;
use client::{CallError, Client};
use dockhand_model::protocol::{PollResponse, ReportResponse, MAX_POLL_WAIT_SECONDS, POLL, REPORT};
use dockhand_model::task::TaskStatus;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// ECS's operations, by name.
fn ecs(op: &str) -> String {
    format!("{}.{op}", dockhand_model::protocol::ECS_TARGET_PREFIX)
}

/// How long a poll may be held by the control endpoint.
const POLL_WAIT: u64 = 20;
/// Retries wait at most this long.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What `dockhand status` and `/v1/metadata` show of the control endpoint.
#[derive(Debug, Clone, Default)]
pub struct ControlStatus {
    pub url: String,
    pub cluster: String,
    pub ec2_instance_id: String,
    pub instance_arn: Option<String>,
    pub connected: bool,
    /// Since when connected, or not connected.
    pub since: Option<SystemTime>,
    pub last_error: Option<String>,
    /// DRAINING asked at shutdown.
    pub draining: bool,
}

pub type SharedStatus = Arc<RwLock<ControlStatus>>;

fn update(status: &SharedStatus, f: impl FnOnce(&mut ControlStatus)) {
    match status.write() {
        Ok(mut s) => f(&mut s),
        Err(p) => f(&mut p.into_inner()),
    }
}

/// What registration says of the host, once Docker answered.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub capacity: HostCapacity,
    pub docker_version: String,
}

/// The registration kept in `ECS_DATADIR/instance.json`, so a restarted
/// agent is the same container instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    cluster: String,
    arn: String,
}

const INSTANCE_FILE: &str = "instance.json";

fn load_saved(cfg: &Config) -> Option<Saved> {
    let text = crate::files::read_regular(&cfg.data_dir.join(INSTANCE_FILE), 64 * 1024).ok()?;
    serde_json::from_str::<Saved>(&text)
        .ok()
        .filter(|s| s.cluster == cfg.cluster)
}

fn save(cfg: &Config, arn: &str) {
    let bytes = serde_json::to_vec(&Saved {
        cluster: cfg.cluster.clone(),
        arn: arn.to_string(),
    })
    .unwrap_or_default();
    if let Err(e) = crate::store::write_atomic(&cfg.data_dir, INSTANCE_FILE, &bytes) {
        tracing::warn!(cause = %e, "cannot save the container-instance ARN; a restart registers a new instance");
    }
}

/// This host's instance id: `DOCKHAND_INSTANCE_ID`, else EC2 instance
/// metadata when `DOCKHAND_EC2_METADATA=true`, else derived from
/// `/etc/machine-id`, else from the agent's own id. Also the attributes
/// instance metadata gives (zone, type).
async fn identity(cfg: &Config, agent_id: &str) -> (String, Vec<(String, String)>) {
    if let Some(id) = &cfg.instance_id {
        return (id.clone(), Vec::new());
    }
    if cfg.ec2_metadata {
        match ec2_metadata().await {
            Ok(found) => return found,
            Err(e) => {
                tracing::warn!(cause = %e, "EC2 instance metadata did not answer; using /etc/machine-id")
            }
        }
    }
    let hex: String = std::fs::read_to_string("/etc/machine-id")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    let base = if hex.len() >= 17 {
        hex
    } else {
        agent_id.to_string()
    };
    (format!("i-{}", &base[..17.min(base.len())]), Vec::new())
}

/// IMDSv2: the instance id, zone and type. Asked only when enabled.
async fn ec2_metadata() -> Result<(String, Vec<(String, String)>), String> {
    const IMDS: &str = "http://169.254.169.254/latest";
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    /// The body of a successful answer, or why there is none.
    async fn body(req: reqwest::RequestBuilder) -> Result<String, String> {
        let resp = req
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        resp.map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())
    }
    let token = body(
        http.put(format!("{IMDS}/api/token"))
            .header("x-aws-ec2-metadata-token-ttl-seconds", "300"),
    )
    .await?;
    let get = |path: &'static str| {
        body(
            http.get(format!("{IMDS}/meta-data/{path}"))
                .header("x-aws-ec2-metadata-token", token.as_str()),
        )
    };
    let id = get("instance-id").await?;
    let mut attrs = Vec::new();
    if let Ok(az) = get("placement/availability-zone").await {
        attrs.push(("ecs.availability-zone".to_string(), az));
    }
    if let Ok(t) = get("instance-type").await {
        attrs.push(("ecs.instance-type".to_string(), t));
    }
    Ok((id, attrs))
}

/// RegisterContainerInstance's request for this host.
fn registration(
    cfg: &Config,
    host: &HostInfo,
    ec2_id: &str,
    extra: &[(String, String)],
    arn: Option<&str>,
) -> Value {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    };
    let mut attrs: Vec<(String, String)> = vec![
        ("ecs.os-type".into(), "linux".into()),
        ("ecs.cpu-architecture".into(), arch.into()),
        (
            "ecs.capability.container-health-check".into(),
            String::new(),
        ),
        ("dockhand.capability.proxy".into(), String::new()),
    ];
    attrs.extend(extra.iter().cloned());
    attrs.extend(
        cfg.instance_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let memory = host
        .capacity
        .memory_mib
        .saturating_sub(cfg.reserved_memory_mib);
    let ports: Vec<String> = cfg.reserved_ports.iter().map(u16::to_string).collect();
    let mut body = json!({
        "cluster": cfg.cluster,
        "instanceIdentityDocument": json!({"instanceId": ec2_id}).to_string(),
        "totalResources": [
            {"name": "CPU", "type": "INTEGER", "integerValue": host.capacity.cpu_units},
            {"name": "MEMORY", "type": "INTEGER", "integerValue": memory},
            {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ports},
            {"name": "PORTS_UDP", "type": "STRINGSET", "stringSetValue": []},
        ],
        "versionInfo": {
            "agentVersion": env!("CARGO_PKG_VERSION"),
            "dockerVersion": format!("DockerVersion: {}", host.docker_version),
        },
        "attributes": attrs.iter().map(|(k, v)| if v.is_empty() {
            json!({"name": k})
        } else {
            json!({"name": k, "value": v})
        }).collect::<Vec<_>>(),
    });
    if let Some(a) = arn {
        body["containerInstanceArn"] = json!(a);
    }
    body
}

/// A delay around `base`, ±25 %, so a fleet does not retry in step.
fn jitter(base: Duration) -> Duration {
    let r = crate::store::random_hex(2);
    let n = u16::from_str_radix(&r, 16).unwrap_or(0);
    let f = 0.75 + f64::from(n) / f64::from(u16::MAX) * 0.5;
    base.mul_f64(f)
}

/// Says why a call failed, in words for an operator.
fn explain(cfg: &Config, e: &CallError) -> String {
    match e.code() {
        Some("ClusterNotFoundException") => format!(
            "cluster {} does not exist on the control endpoint: create it (aws ecs create-cluster --cluster-name {}) or fix ECS_CLUSTER",
            cfg.cluster, cfg.cluster
        ),
        _ if e.is_auth() => format!(
            "the control endpoint refused this host's key ({e}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in ecs.config, that the key is an instance key listing cluster {}, and the clock",
            cfg.cluster
        ),
        _ => e.to_string(),
    }
}

/// The session's parts.
pub struct Parts {
    pub cfg: Arc<Config>,
    pub client: Arc<Client>,
    pub status: SharedStatus,
    pub desired: watch::Sender<DesiredState>,
    pub changes: Arc<Changes>,
    /// The agent's own id (a fallback for the instance id).
    pub agent_id: String,
    /// Set once Docker answered.
    pub host: watch::Receiver<Option<HostInfo>>,
    /// The registered ARN, for [`drain`].
    pub arn: watch::Sender<Option<String>>,
}

/// Registers, then holds the session and sends the reports, until
/// `shutdown`.
pub async fn run(mut p: Parts, shutdown: drain::Watch) {
    let signaled = shutdown.signaled();
    tokio::pin!(signaled);
    update(&p.status, |s| {
        s.url = p.client.url().to_string();
        s.cluster = p.cfg.cluster.clone();
    });
    let host = tokio::select! {
        _ = &mut signaled => return,
        h = p.host.wait_for(Option::is_some) => match h {
            Ok(h) => h.clone().unwrap_or_else(|| unreachable!("waited for Some")),
            Err(_) => return,
        },
    };
    let (ec2_id, extra) = identity(&p.cfg, &p.agent_id).await;
    update(&p.status, |s| s.ec2_instance_id = ec2_id.clone());
    let mut saved = load_saved(&p.cfg).map(|s| s.arn);
    // Known before the control endpoint answers: the same instance again.
    update(&p.status, |s| s.instance_arn = saved.clone());
    p.arn.send_replace(saved.clone());
    let (arn_tx, arn_rx) = watch::channel(String::new());
    let reporter = tokio::spawn(report_loop(
        Arc::clone(&p.cfg),
        Arc::clone(&p.client),
        Arc::clone(&p.changes),
        arn_rx,
    ));
    let mut backoff = Duration::from_secs(1);
    let register = ecs("RegisterContainerInstance");
    'register: loop {
        let body = registration(&p.cfg, &host, &ec2_id, &extra, saved.as_deref());
        let arn = tokio::select! {
            _ = &mut signaled => break 'register,
            r = p.client.call(&register, &body, Duration::from_secs(30)) => r,
        };
        let arn = match arn.map(|v| {
            v["containerInstance"]["containerInstanceArn"]
                .as_str()
                .map(str::to_string)
        }) {
            Ok(Some(arn)) => arn,
            Ok(None) => {
                disconnected(&p, "the control endpoint's answer to RegisterContainerInstance has no containerInstanceArn".into());
                sleep_or(&mut signaled, jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => {
                let why = explain(&p.cfg, &e);
                tracing::error!(
                    url = p.client.url(),
                    retry_in_s = backoff.as_secs(),
                    "cannot register with the control endpoint: {why}"
                );
                disconnected(&p, why);
                if sleep_or(&mut signaled, jitter(backoff)).await {
                    break 'register;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        if saved.as_deref() != Some(arn.as_str()) {
            save(&p.cfg, &arn);
        }
        tracing::info!(cluster = %p.cfg.cluster, instance = %arn, ec2_instance_id = %ec2_id, url = p.client.url(), "registered with the control endpoint");
        update(&p.status, |s| s.instance_arn = Some(arn.clone()));
        arn_tx.send_replace(arn.clone());
        p.arn.send_replace(Some(arn.clone()));
        // The session, until the instance must register again.
        let mut sequence = 0u64;
        loop {
            let body = json!({
                "cluster": p.cfg.cluster,
                "containerInstance": arn,
                "sequence": sequence,
                "waitSeconds": POLL_WAIT.min(MAX_POLL_WAIT_SECONDS),
            });
            let answer = tokio::select! {
                _ = &mut signaled => break 'register,
                r = p.client.call(POLL, &body, Duration::from_secs(POLL_WAIT + 15)) => r,
            };
            match answer.map(serde_json::from_value::<PollResponse>) {
                Ok(Ok(resp)) => {
                    backoff = Duration::from_secs(1);
                    connected(&p);
                    if resp.instance_status == "INACTIVE" {
                        tracing::warn!(instance = %arn, "this container instance was deregistered; registering again");
                        saved = None;
                        continue 'register;
                    }
                    if !resp.unchanged {
                        sequence = resp.sequence;
                        let managed = managed_of(&resp);
                        tracing::debug!(sequence, tasks = managed.tasks.len(), "desired task set");
                        p.desired.send_replace(DesiredState::Known(Desired {
                            managed: Some(managed),
                            ..Desired::default()
                        }));
                    }
                }
                Ok(Err(e)) => {
                    disconnected(
                        &p,
                        format!("the control endpoint's poll answer is not valid: {e}"),
                    );
                    if sleep_or(&mut signaled, jitter(backoff)).await {
                        break 'register;
                    }
                }
                Err(e) => {
                    let why = explain(&p.cfg, &e);
                    let was = p.status.read().map(|s| s.connected).unwrap_or(false);
                    if was {
                        tracing::warn!(
                            url = p.client.url(),
                            "lost the control endpoint: {why}; holding every task as it is"
                        );
                    }
                    disconnected(&p, why);
                    // The next poll asks for the whole set: an "unchanged"
                    // answer to the old sequence would leave the desired
                    // state Unknown (holding) until the set next changed.
                    sequence = 0;
                    // Static stability: hold what runs, stop nothing.
                    p.desired.send_if_modified(|d| {
                        let changed = *d != DesiredState::Unknown;
                        *d = DesiredState::Unknown;
                        changed
                    });
                    if e.code() == Some("InvalidParameterException") {
                        // Not registered there (a new database): again.
                        saved = None;
                        continue 'register;
                    }
                    if sleep_or(&mut signaled, jitter(backoff)).await {
                        break 'register;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    reporter.abort();
}

/// Sleeps `d`; true if shutdown came first.
async fn sleep_or(
    signaled: &mut std::pin::Pin<&mut impl std::future::Future>,
    d: Duration,
) -> bool {
    tokio::select! {
        _ = signaled.as_mut() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn connected(p: &Parts) {
    let url = p.client.url().to_string();
    update(&p.status, |s| {
        if !s.connected {
            tracing::info!(url = %url, "connected to the control endpoint");
            s.connected = true;
            s.since = Some(SystemTime::now());
        }
        s.url = url;
        s.last_error = None;
    });
}

fn disconnected(p: &Parts, why: String) {
    update(&p.status, |s| {
        if s.connected || s.since.is_none() {
            s.since = Some(SystemTime::now());
        }
        s.connected = false;
        s.last_error = Some(why);
    });
}

/// Whether a task id from the control endpoint can name containers and
/// state-file entries: what the endpoint makes (32 hex digits) or any
/// ASCII letters, digits and `-`, at most 64.
fn usable_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The supervisor's view of a poll's answer. A task whose id cannot name
/// a container is left out, with a warning (it stays PENDING on the
/// endpoint's side, where the id came from).
fn managed_of(resp: &PollResponse) -> Managed {
    let tasks = resp
        .tasks
        .iter()
        .filter_map(|t| {
            let id = t
                .task_arn
                .rsplit('/')
                .next()
                .unwrap_or(&t.task_arn)
                .to_string();
            if !usable_task_id(&id) {
                tracing::warn!(task = %t.task_arn, "the control endpoint sent a task whose id cannot name a container; left out");
                return None;
            }
            let service = t
                .service
                .clone()
                .unwrap_or_else(|| format!("family:{}", t.task_definition.family));
            Some((
                id,
                ManagedTask {
                    arn: t.task_arn.clone(),
                    service,
                    revision: t.revision,
                    task_definition: t.task_definition.clone(),
                    running: t.desired_status == TaskStatus::Running,
                    stop_reason: t.stop_reason.clone(),
                },
            ))
        })
        .collect();
    Managed {
        sequence: resp.sequence,
        tasks,
        services: resp.services.clone(),
    }
}

/// Sends the outbox, in order, as the supervisor publishes changes.
async fn report_loop(
    cfg: Arc<Config>,
    client: Arc<Client>,
    changes: Arc<Changes>,
    mut arn: watch::Receiver<String>,
) {
    let mut outbox = reports::Outbox::open(&cfg.data_dir);
    let mut published = changes.subscribe();
    let mut backoff = Duration::from_millis(200);
    loop {
        outbox.take(&changes);
        let current = arn.borrow().clone();
        if outbox.is_empty() || current.is_empty() {
            tokio::select! {
                _ = published.changed() => {}
                _ = arn.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        let body = json!({
            "cluster": cfg.cluster,
            "containerInstance": current,
            "changes": outbox.batch(),
        });
        let answer = client.call(REPORT, &body, Duration::from_secs(30)).await;
        match answer.map(serde_json::from_value::<ReportResponse>) {
            Ok(Ok(r)) => {
                backoff = Duration::from_millis(200);
                outbox.acknowledged(r.acknowledged);
                continue;
            }
            // A 200 that is not an answer (a proxy's page in front of the
            // endpoint): backed off like a failure, not resent at once.
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, "the control endpoint's report answer is not valid; retrying")
            }
            Err(e) => {
                tracing::debug!(cause = %e, pending = outbox.batch().len(), "reports not delivered; retrying");
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Shutdown with `DOCKHAND_DRAIN_ON_SHUTDOWN`: asks for DRAINING, marks the
/// host draining (its `/dockhand/health` answers 503), and waits until no
/// task is wanted running here any more (the control endpoint stops them
/// once their replacements run elsewhere), at most `DOCKHAND_DRAIN_TIMEOUT`.
pub async fn drain(
    cfg: &Config,
    client: &Client,
    status: &SharedStatus,
    arn: Option<String>,
    proxy: &dockhand_proxy::Proxy,
    snapshot: &Arc<RwLock<crate::status::Snapshot>>,
) {
    let Some(arn) = arn else {
        tracing::info!("not registered with the control endpoint: nothing to drain");
        return;
    };
    proxy.set_draining(true);
    update(status, |s| s.draining = true);
    let started = tokio::time::Instant::now();
    let body = json!({"cluster": cfg.cluster, "containerInstances": [arn], "status": "DRAINING"});
    match client
        .call(
            &ecs("UpdateContainerInstancesState"),
            &body,
            Duration::from_secs(10),
        )
        .await
    {
        Ok(_) => tracing::info!(
            timeout_s = cfg.drain_timeout.as_secs(),
            "draining: this host's tasks move to other hosts before it stops"
        ),
        Err(e) => {
            tracing::warn!(
                "cannot ask the control endpoint for DRAINING ({}); stopping without draining",
                explain(cfg, &e)
            );
            return;
        }
    }
    loop {
        let running = snapshot
            .read()
            .map(|s| s.tasks.iter().filter(|t| t.desired == "RUNNING").count())
            .unwrap_or(0);
        if running == 0 {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "drained: no task left here"
            );
            return;
        }
        if started.elapsed() >= cfg.drain_timeout {
            tracing::warn!(
                tasks = running,
                "DOCKHAND_DRAIN_TIMEOUT over with tasks still here; stopping (they keep running)"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve_one(
        mut s: tokio::net::TcpStream,
        polls: Arc<AtomicUsize>,
        reports: Arc<AtomicUsize>,
    ) {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let head_end;
        loop {
            let n = s.read(&mut tmp).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&tmp[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                head_end = i + 4;
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap_or(0))
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = s.read(&mut tmp).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let target = head
            .lines()
            .find_map(|l| l.strip_prefix("x-amz-target:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let (status, body) = if target.ends_with("registercontainerinstance") {
            ("200 OK", r#"{"containerInstance":{"containerInstanceArn":"arn:aws:ecs:us-east-1:0:container-instance/test/abc"}}"#.to_string())
        } else if target.ends_with(".poll") {
            let n = polls.fetch_add(1, Ordering::SeqCst);
            match n {
                0 => (
                    "200 OK",
                    r#"{"sequence":1,"instanceStatus":"ACTIVE","tasks":[]}"#.to_string(),
                ),
                1 => ("502 Bad Gateway", String::new()),
                // As the control endpoint: "unchanged" only to the
                // sequence it has, the whole set to any other.
                _ => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let request: serde_json::Value =
                        serde_json::from_slice(&buf[head_end..]).unwrap_or_default();
                    if request["sequence"] == 1 {
                        (
                            "200 OK",
                            r#"{"sequence":1,"unchanged":true,"instanceStatus":"ACTIVE"}"#
                                .to_string(),
                        )
                    } else {
                        (
                            "200 OK",
                            r#"{"sequence":1,"instanceStatus":"ACTIVE","tasks":[]}"#.to_string(),
                        )
                    }
                }
            }
        } else if target.ends_with("reporttaskstates") {
            reports.fetch_add(1, Ordering::SeqCst);
            ("200 OK", "{}".to_string())
        } else {
            ("400 Bad Request", String::new())
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
    }

    #[test]
    fn task_ids_that_cannot_name_a_container_are_refused() {
        assert!(usable_task_id("0123456789abcdef0123456789abcdef"));
        assert!(usable_task_id("t-1"));
        for bad in ["", "abcdefghijk\u{e9}x", "a/b", "a b", &"a".repeat(65)] {
            assert!(!usable_task_id(bad), "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_failed_poll_the_next_answer_makes_the_desired_state_known_and_bad_report_answers_back_off(
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let polls = Arc::new(AtomicUsize::new(0));
        let reports = Arc::new(AtomicUsize::new(0));
        {
            let polls = Arc::clone(&polls);
            let reports = Arc::clone(&reports);
            tokio::spawn(async move {
                loop {
                    let (s, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve_one(s, Arc::clone(&polls), Arc::clone(&reports)));
                }
            });
        }
        let dir = std::env::temp_dir().join(format!(
            "dockhand-managed-test-{}",
            crate::store::random_hex(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = Config::defaults();
        cfg.backend_hosts = vec![format!("http://127.0.0.1:{port}")];
        cfg.access_key_id = Some("AKIDTEST".into());
        cfg.secret_access_key = Some("secret".into());
        cfg.data_dir = dir.clone();
        cfg.cluster = "test".into();
        cfg.instance_id = Some("i-test".into());
        let cfg = Arc::new(cfg);
        let client = Arc::new(Client::new(&cfg).unwrap());
        let (desired_tx, desired_rx) = crate::desired::channel();
        let changes = Arc::new(Changes::default());
        let (_host_tx, host_rx) = watch::channel(Some(HostInfo {
            capacity: HostCapacity {
                memory_mib: 1024,
                cpu_units: 1024,
            },
            docker_version: "test".into(),
        }));
        let (arn_tx, _arn_rx) = watch::channel(None);
        let (_signal, w) = drain::channel();
        tokio::spawn(run(
            Parts {
                cfg: Arc::clone(&cfg),
                client,
                status: Arc::default(),
                desired: desired_tx,
                changes: Arc::clone(&changes),
                agent_id: "agent".into(),
                host: host_rx,
                arn: arn_tx,
            },
            w,
        ));
        // One change to report; the fake endpoint answers reports with
        // `{}`, which is not a report answer.
        changes.push(crate::changes::Change {
            service: "web".into(),
            task_id: "t1".into(),
            revision: 1,
            desired: TaskStatus::Running,
            report: dockhand_model::task::TaskStateChange {
                sequence: 0,
                task: "t1".into(),
                status: TaskStatus::Running,
                reason: None,
                stop_code: None,
                health_status: dockhand_model::task::HealthStatus::Unknown,
                containers: Vec::new(),
                at_ms: 1,
                engine_failure: false,
            },
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let polled = polls.load(Ordering::SeqCst);
        let reported = reports.load(Ordering::SeqCst);
        let state = desired_rx.borrow().clone();
        std::fs::remove_dir_all(dir).ok();
        assert!(polled >= 3, "the session went on polling ({polled})");
        assert!(
            matches!(state, DesiredState::Known(_)),
            "connected again and polls answered: the desired state is known again"
        );
        // Backed off from 200 ms, doubling up to 10 s: about 6 in 5 s (the
        // old loop resent at once, thousands of times).
        assert!(reported <= 12, "{reported} reports in 5 s");
    }
}
