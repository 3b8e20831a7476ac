//! The managed agents' side ([`dockhand_model::protocol`]): the session
//! ([`poll`]: this instance's desired task set, held open until it changes)
//! and the reports ([`report`]: task state changes in order, acknowledged
//! by sequence), plus ECS's own DiscoverPollEndpoint,
//! SubmitTaskStateChange and SubmitContainerStateChange.
//!
//! An instance key may act only on instances of the clusters its profile
//! lists.

use super::{parse, ApiError, ApiResult};
use crate::auth::Caller;
use crate::records::{InstanceRec, TaskRec};
use crate::scheduler::plan;
use crate::store;
use crate::Control;
use dockhand_model::protocol::{
    DesiredTask, PollRequest, PollResponse, ReportRequest, ReportResponse, ServiceRouting,
    MAX_POLL_WAIT_SECONDS, MAX_REPORT_BATCH,
};
use dockhand_model::task::{
    ContainerStateChange, HealthStatus, NetworkBinding, StopCode, TaskStateChange, TaskStatus,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Answers a `DockhandAgentV1.<op>` call.
pub async fn dispatch(ctl: &Control, caller: &Caller, op: &str, body: Value) -> ApiResult {
    match op {
        "Poll" => poll(ctl, caller, &body).await,
        "ReportTaskStates" => report(ctl, caller, &body).await,
        _ => Err(ApiError::new(
            "UnknownOperationException",
            format!("{op} is not an agent operation (Poll, ReportTaskStates)"),
        )),
    }
}

fn check_cluster(caller: &Caller, cluster: &str) -> Result<(), ApiError> {
    if caller.may_use_cluster(cluster) {
        Ok(())
    } else {
        Err(ApiError::access_denied(format!(
            "User: {} is not authorized to act on cluster {cluster} (its key lists other clusters)",
            caller.name()
        )))
    }
}

/// The instance a call names, in its cluster, still registered.
async fn own_instance(
    ctl: &Control,
    c: &mut sqlx::AnyConnection,
    caller: &Caller,
    cluster: &str,
    instance: &str,
) -> Result<InstanceRec, ApiError> {
    let cluster = super::name_of(cluster);
    check_cluster(caller, cluster)?;
    let arn = super::instances::instance_arn(ctl, cluster, instance);
    match store::get_instance(c, &arn).await? {
        Some(i) if i.cluster == cluster => Ok(i),
        _ => Err(ApiError::invalid(format!(
            "Container instance {arn} is not registered in cluster {cluster}: register it first."
        ))),
    }
}

/// The session: answers at once when the desired set differs from the
/// sequence the agent holds, else when it changes, else after the wait.
pub async fn poll(ctl: &Control, caller: &Caller, body: &Value) -> ApiResult {
    let req: PollRequest = parse(body)?;
    let (arn, mut seq) = {
        let mut c = ctl.store.read().await?;
        let i = own_instance(ctl, &mut c, caller, &req.cluster, &req.container_instance).await?;
        // The database's clock, with PostgreSQL: the leader judges
        // silence on it, whichever replica a host polls.
        let now = store::db_now(&mut c, ctl.store.kind).await?;
        store::touch_instance(&mut c, &i.arn, now).await?;
        (i.arn, i.desired_seq)
    };
    let wait =
        Duration::from_secs(req.wait_seconds.min(MAX_POLL_WAIT_SECONDS)).min(ctl.cfg.poll_wait);
    let deadline = tokio::time::Instant::now() + wait;
    let mut rx = ctl.notifier.subscribe(&arn, seq);
    let mut closing = ctl.closing.subscribe();
    // One process owns an SQLite file: every change is announced by the
    // notifier. With PostgreSQL another replica may have made it.
    let recheck = match ctl.store.kind {
        store::Kind::Sqlite => wait,
        store::Kind::Postgres => crate::notify::RECHECK,
    };
    while seq.max(0) as u64 == req.sequence && !*closing.borrow() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = closing.changed() => {}
            _ = tokio::time::sleep(recheck.min(left)) => {}
        }
        let mut c = ctl.store.read().await?;
        match store::instance_head(&mut c, &arn).await? {
            Some((s, _, _)) => seq = s,
            None => break,
        }
    }
    desired_set(ctl, &arn, req.sequence).await
}

/// The desired task set of an instance, read in one transaction so that
/// the tasks and the sequence agree.
async fn desired_set(ctl: &Control, arn: &str, have: u64) -> ApiResult {
    let mut tx = ctl.store.snapshot().await?;
    let Some(i) = store::get_instance(&mut tx, arn).await? else {
        return Err(ApiError::invalid("Container instance not found."));
    };
    let sequence = i.desired_seq.max(0) as u64;
    if sequence == have {
        tx.commit().await?;
        return Ok(serde_json::to_value(PollResponse {
            sequence,
            unchanged: true,
            instance_status: i.status,
            tasks: Vec::new(),
            services: BTreeMap::new(),
        })
        .unwrap_or_default());
    }
    let tasks: Vec<TaskRec> = store::instance_tasks(&mut tx, arn, i64::MAX).await?;
    let mut out = Vec::with_capacity(tasks.len());
    let mut services = BTreeMap::new();
    for t in tasks
        .iter()
        .filter(|t| t.live() && t.last_status != TaskStatus::Stopped)
    {
        let Some(td) = ctl.taskdef(&mut tx, &t.task_definition).await? else {
            tracing::error!(task = %t.arn, task_definition = %t.task_definition, "a task's definition is missing; not sent to its agent");
            continue;
        };
        let revision = t
            .task_definition
            .rsplit(':')
            .next()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        if let Some(name) = &t.service {
            if !services.contains_key(name) {
                if let Some(s) = store::get_service(&mut tx, &i.cluster, name).await? {
                    services.insert(
                        name.clone(),
                        ServiceRouting {
                            load_balancers: s
                                .load_balancers
                                .iter()
                                .map(|l| l.route.clone())
                                .collect(),
                            health_check_grace_period_seconds: s.health_check_grace_period_seconds,
                        },
                    );
                }
            }
        }
        out.push(DesiredTask {
            task_arn: t.arn.clone(),
            task_definition_arn: t.task_definition.clone(),
            revision,
            task_definition: (*td).clone(),
            desired_status: t.desired_status,
            service: t.service.clone(),
            stop_reason: t
                .stopped_reason
                .clone()
                .filter(|_| t.desired_status == TaskStatus::Stopped),
        });
    }
    tx.commit().await?;
    Ok(serde_json::to_value(PollResponse {
        sequence,
        unchanged: false,
        instance_status: i.status,
        tasks: out,
        services,
    })
    .unwrap_or_default())
}

/// Applies one reported change to its task. Returns whether anything the
/// scheduler looks at changed.
fn apply_change(t: &mut TaskRec, ch: &TaskStateChange, now: i64) -> bool {
    if !t.live() {
        // Given up or stopped already: the agent stops it, since it is no
        // longer in its desired set.
        return false;
    }
    let before = (t.last_status, t.health_status);
    let at = i64::try_from(ch.at_ms).unwrap_or(now).min(now);
    t.last_status = ch.status;
    t.health_status = ch.health_status;
    if ch.health_status == HealthStatus::Healthy {
        t.healthy_once = true;
    }
    if ch.status == TaskStatus::Running && t.started_at.is_none() {
        t.started_at = Some(at);
    }
    for c in &ch.containers {
        if let Some(rc) = t
            .containers
            .iter_mut()
            .find(|rc| rc.name == c.container_name)
        {
            if c.runtime_id.is_some() {
                rc.runtime_id = c.runtime_id.clone();
            }
            rc.last_status = c.status;
            rc.exit_code = c.exit_code.or(rc.exit_code);
            if c.reason.is_some() {
                rc.reason = c.reason.clone();
            }
            if !c.network_bindings.is_empty() || c.status == TaskStatus::Stopped {
                rc.network_bindings = c.network_bindings.clone();
            }
            rc.health_status = c.health_status;
        }
    }
    if ch.status == TaskStatus::Stopped {
        t.stopped_at = Some(at);
        t.stopping_at.get_or_insert(at);
        if t.desired_status != TaskStatus::Stopped {
            // It stopped on its own: a crash, or its host's engine went away.
            t.desired_status = TaskStatus::Stopped;
            t.failed = !ch.engine_failure;
            t.stop_code = Some(ch.stop_code.unwrap_or(StopCode::EssentialContainerExited));
            t.stopped_reason = Some(
                ch.reason
                    .clone()
                    .unwrap_or_else(|| "Essential container in task exited".into()),
            );
        }
    }
    t.version += 1;
    before != (t.last_status, t.health_status) || ch.status == TaskStatus::Stopped
}

/// Changes being applied in one transaction: the tasks they touch, read
/// once, changed in memory, written once.
#[derive(Default)]
pub struct Batch {
    tasks: HashMap<String, TaskRec>,
    changed: BTreeSet<String>,
    /// Something the scheduler looks at changed.
    pub wake: bool,
}

impl Batch {
    /// Reads the tasks `arns` names that are not read yet.
    pub async fn load(
        &mut self,
        tx: &mut sqlx::AnyConnection,
        arns: &[String],
    ) -> Result<(), ApiError> {
        let missing: Vec<&str> = arns
            .iter()
            .filter(|a| !self.tasks.contains_key(*a))
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for t in store::get_tasks(tx, &missing).await? {
            self.tasks.insert(t.arn.clone(), t);
        }
        Ok(())
    }

    /// Applies one instance's changes. With `applied`, changes of a
    /// sequence up to it are repeats, skipped. Returns the highest
    /// sequence applied (or `applied`).
    pub fn apply(
        &mut self,
        instance: &InstanceRec,
        arns: &[String],
        changes: &[TaskStateChange],
        applied: Option<u64>,
        now: i64,
    ) -> u64 {
        let mut highest = applied.unwrap_or(0);
        for (ch, arn) in changes.iter().zip(arns) {
            if applied.is_some_and(|a| ch.sequence <= a) {
                continue;
            }
            highest = highest.max(ch.sequence);
            // Not this instance's task: acknowledged and dropped.
            if let Some(t) = self
                .tasks
                .get_mut(arn)
                .filter(|t| t.container_instance == instance.arn)
            {
                self.wake |= apply_change(t, ch, now);
                self.changed.insert(arn.clone());
            }
        }
        highest
    }

    /// Counts new failures against their services and writes everything
    /// changed.
    pub async fn write(self, tx: &mut sqlx::AnyConnection, now: i64) -> Result<bool, ApiError> {
        let Batch {
            mut tasks,
            changed,
            wake,
        } = self;
        let mut services: BTreeMap<(String, String), crate::records::ServiceRec> = BTreeMap::new();
        for arn in &changed {
            let Some(t) = tasks.get_mut(arn) else {
                continue;
            };
            if !t.failed || t.failure_counted {
                continue;
            }
            t.failure_counted = true;
            let Some(name) = t.service.clone() else {
                continue;
            };
            let key = (t.cluster.clone(), name);
            if !services.contains_key(&key) {
                if let Some(s) = store::get_service(tx, &key.0, &key.1).await? {
                    services.insert(key.clone(), s);
                }
            }
            if let Some(s) = services.get_mut(&key) {
                plan::count_failure(s, t, now);
            }
        }
        let list: Vec<&TaskRec> = changed.iter().filter_map(|a| tasks.get(a)).collect();
        store::put_tasks(tx, &list).await?;
        for s in services.values() {
            store::put_service(tx, s).await?;
        }
        Ok(wake)
    }
}

/// The ARN of each change's task.
fn arns_of(ctl: &Control, cluster: &str, changes: &[TaskStateChange]) -> Vec<String> {
    changes
        .iter()
        .map(|c| super::tasks::task_arn(ctl, cluster, &c.task))
        .collect()
}

/// A report waiting for the next group commit.
pub struct PendingReport {
    caller: Caller,
    req: ReportRequest,
    reply: tokio::sync::oneshot::Sender<ApiResult>,
}

/// Reports applied in one transaction at most.
const GROUP_COMMIT: usize = 256;

/// The reports: changes in order, each applied once. Reports of many
/// agents share a transaction (a group commit, [`run_reports`]).
pub async fn report(ctl: &Control, caller: &Caller, body: &Value) -> ApiResult {
    let req: ReportRequest = parse(body)?;
    if req.changes.len() > MAX_REPORT_BATCH {
        return Err(ApiError::invalid(format!(
            "changes: at most {MAX_REPORT_BATCH} per call"
        )));
    }
    // The instance's applied sequence is stored as a signed 64-bit
    // number: one beyond it would be stored as the maximum, and every
    // later report skipped as a repeat while still acknowledged.
    if let Some((i, ch)) = req
        .changes
        .iter()
        .enumerate()
        .find(|(_, ch)| i64::try_from(ch.sequence).is_err())
    {
        return Err(ApiError::invalid(format!(
            "changes[{i}].sequence: {} is beyond {}",
            ch.sequence,
            i64::MAX
        )));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let pending = PendingReport {
        caller: caller.clone(),
        req,
        reply,
    };
    if ctl.reports.send(pending).await.is_err() {
        return Err(ApiError::server("the control endpoint is stopping"));
    }
    answer
        .await
        .unwrap_or_else(|_| Err(ApiError::server("the report was not applied")))
}

/// Applies queued reports, as many at a time as are waiting, each group in
/// one transaction; answers each report when its group is committed.
pub async fn run_reports(
    ctl: std::sync::Arc<Control>,
    mut rx: tokio::sync::mpsc::Receiver<PendingReport>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_COMMIT {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        match apply_reports(&ctl, &group).await {
            Ok((answers, wake)) => {
                for (p, a) in group.into_iter().zip(answers) {
                    let _ = p.reply.send(a);
                }
                if wake {
                    ctl.wake();
                }
            }
            Err(e) => {
                for p in group {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One group of reports: an answer for each (a refusal for a report whose
/// caller may not act on its instance), and whether the scheduler should
/// look.
async fn apply_reports(
    ctl: &Control,
    group: &[PendingReport],
) -> Result<(Vec<ApiResult>, bool), ApiError> {
    let t0 = std::time::Instant::now();
    let _w = ctl.store.lock().await;
    let t1 = t0.elapsed();
    let mut tx = ctl.store.begin().await?;
    let now = store::db_now(&mut tx, ctl.store.kind).await?;
    let mut instances: HashMap<String, InstanceRec> = HashMap::new();
    let mut owners: Vec<Result<String, ApiError>> = Vec::with_capacity(group.len());
    let mut all_arns: Vec<String> = Vec::new();
    let mut task_arns: Vec<Vec<String>> = Vec::with_capacity(group.len());
    for p in group {
        let owner = own_instance(
            ctl,
            &mut tx,
            &p.caller,
            &p.req.cluster,
            &p.req.container_instance,
        )
        .await;
        let arns = match &owner {
            Ok(i) => arns_of(ctl, &i.cluster, &p.req.changes),
            Err(_) => Vec::new(),
        };
        all_arns.extend(arns.iter().cloned());
        task_arns.push(arns);
        owners.push(owner.map(|i| {
            let arn = i.arn.clone();
            instances.entry(arn.clone()).or_insert(i);
            arn
        }));
    }
    let mut batch = Batch::default();
    batch.load(&mut tx, &all_arns).await?;
    let mut answers = Vec::with_capacity(group.len());
    for ((p, owner), arns) in group.iter().zip(owners).zip(&task_arns) {
        let arn = match owner {
            Ok(a) => a,
            Err(e) => {
                answers.push(Err(e));
                continue;
            }
        };
        let Some(i) = instances.get_mut(&arn) else {
            continue;
        };
        let applied = i.report_seq.max(0) as u64;
        let highest = batch.apply(i, arns, &p.req.changes, Some(applied), now);
        i.report_seq = i64::try_from(highest).unwrap_or(i64::MAX);
        answers.push(Ok(serde_json::to_value(ReportResponse {
            acknowledged: highest,
        })
        .unwrap_or_default()));
    }
    let wake = batch.write(&mut tx, now).await?;
    for i in instances.values() {
        store::set_report_seq(&mut tx, &i.arn, i.report_seq, now).await?;
    }
    tx.commit().await?;
    tracing::debug!(
        reports = group.len(),
        lock_wait_ms = t1.as_millis() as u64,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "reports applied"
    );
    Ok((answers, wake))
}

/// ECS's DiscoverPollEndpoint: the agent's session is on this endpoint.
pub async fn discover(ctl: &Control, caller: &Caller, host: &str, body: &Value) -> ApiResult {
    if let Some(cluster) = body.get("cluster").and_then(Value::as_str) {
        check_cluster(caller, super::name_of(cluster))?;
    }
    let scheme = if ctl.cfg.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let host = if host.is_empty() {
        ctl.cfg.listen.to_string()
    } else {
        host.to_string()
    };
    let url = format!("{scheme}://{host}/");
    Ok(json!({"endpoint": url, "telemetryEndpoint": url}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerIn {
    #[serde(default)]
    container_name: Option<String>,
    #[serde(default)]
    runtime_id: Option<String>,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    network_bindings: Vec<NetworkBinding>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubmitTaskRequest {
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    containers: Vec<ContainerIn>,
}

fn status_of(s: Option<&str>, field: &str) -> Result<TaskStatus, ApiError> {
    let s = s.ok_or_else(|| ApiError::invalid(format!("{field} is required")))?;
    TaskStatus::parse(s)
        .ok_or_else(|| ApiError::invalid(format!("{field}: {s:?} is not a task status")))
}

/// The instance that runs `task` (an ARN or id in `cluster`), checked
/// against the caller's clusters.
async fn task_instance(
    ctl: &Control,
    tx: &mut sqlx::AnyConnection,
    caller: &Caller,
    cluster: &str,
    task: &str,
) -> Result<InstanceRec, ApiError> {
    check_cluster(caller, cluster)?;
    let arn = super::tasks::task_arn(ctl, cluster, task);
    let Some(t) = store::get_task(tx, &arn)
        .await?
        .filter(|t| t.cluster == cluster)
    else {
        return Err(ApiError::invalid("The referenced task was not found."));
    };
    store::get_instance(tx, &t.container_instance)
        .await?
        .ok_or_else(|| ApiError::invalid("The task's container instance is not registered."))
}

/// One unsequenced change, applied as is.
async fn submit(ctl: &Control, caller: &Caller, body: &Value, ch: TaskStateChange) -> ApiResult {
    let cluster = super::cluster_name(body)?;
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let i = task_instance(ctl, &mut tx, caller, &cluster, &ch.task).await?;
    let now = crate::ids::now_ms();
    let changes = std::slice::from_ref(&ch);
    let arns = arns_of(ctl, &cluster, changes);
    let mut batch = Batch::default();
    batch.load(&mut tx, &arns).await?;
    batch.apply(&i, &arns, changes, None, now);
    let wake = batch.write(&mut tx, now).await?;
    tx.commit().await?;
    if wake {
        ctl.wake();
    }
    Ok(json!({"acknowledgment": "ACK"}))
}

pub async fn submit_task(ctl: &Control, caller: &Caller, body: &Value) -> ApiResult {
    super::refuse_unsupported(body, &["attachments", "managedAgents"])?;
    let req: SubmitTaskRequest = parse(body)?;
    let task = req
        .task
        .ok_or_else(|| ApiError::invalid("task is required"))?;
    let status = status_of(req.status.as_deref(), "status")?;
    let containers = req
        .containers
        .into_iter()
        .enumerate()
        .map(|(n, c)| {
            Ok(ContainerStateChange {
                container_name: c.container_name.ok_or_else(|| {
                    ApiError::invalid(format!("containers[{n}].containerName is required"))
                })?,
                runtime_id: c.runtime_id,
                status: status_of(c.status.as_deref(), &format!("containers[{n}].status"))?,
                exit_code: c.exit_code,
                reason: c.reason,
                network_bindings: c.network_bindings,
                health_status: HealthStatus::Unknown,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let ch = TaskStateChange {
        sequence: 0,
        task,
        status,
        reason: req.reason,
        stop_code: None,
        health_status: HealthStatus::Unknown,
        containers,
        at_ms: crate::ids::now_ms().max(0) as u64,
        engine_failure: false,
    };
    submit(ctl, caller, body, ch).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubmitContainerRequest {
    #[serde(default)]
    task: Option<String>,
    #[serde(flatten)]
    container: ContainerIn,
}

pub async fn submit_container(ctl: &Control, caller: &Caller, body: &Value) -> ApiResult {
    let req: SubmitContainerRequest = parse(body)?;
    let task = req
        .task
        .ok_or_else(|| ApiError::invalid("task is required"))?;
    let cluster = super::cluster_name(body)?;
    let name = req
        .container
        .container_name
        .clone()
        .ok_or_else(|| ApiError::invalid("containerName is required"))?;
    let status = status_of(req.container.status.as_deref(), "status")?;
    // The task's own status and health stay as they are.
    let (task_status, task_health) = {
        let mut c = ctl.store.read().await?;
        let arn = super::tasks::task_arn(ctl, &cluster, &task);
        match store::get_task(&mut c, &arn).await? {
            Some(t) => (t.last_status, t.health_status),
            None => return Err(ApiError::invalid("The referenced task was not found.")),
        }
    };
    let ch = TaskStateChange {
        sequence: 0,
        task,
        status: task_status,
        reason: None,
        stop_code: None,
        health_status: task_health,
        containers: vec![ContainerStateChange {
            container_name: name,
            runtime_id: req.container.runtime_id,
            status,
            exit_code: req.container.exit_code,
            reason: req.container.reason,
            network_bindings: req.container.network_bindings,
            health_status: HealthStatus::Unknown,
        }],
        at_ms: crate::ids::now_ms().max(0) as u64,
        engine_failure: false,
    };
    submit(ctl, caller, body, ch).await
}
