//! RunTask, StartTask, StopTask, ListTasks, DescribeTasks. RunTask places
//! at once, with the same rules as the scheduler; StartTask puts a task on
//! the instances named; StopTask asks the task's agent to drain and stop it.

use super::render;
use super::{cluster_name, failure, page, parse, refuse_unsupported, ApiError, ApiResult};
use crate::records::{PlacementConstraint, PlacementStrategy, TaskRec};
use crate::scheduler::placement::{self, Rng};
use crate::scheduler::plan::{need_of, new_task};
use crate::scheduler::state::ClusterState;
use crate::store;
use crate::Control;
use dockhand_model::task::{StopCode, TaskStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Fields of RunTask and StartTask that Dockhand refuses with a value.
const UNSUPPORTED: &[&str] = &[
    "capacityProviderStrategy",
    "networkConfiguration",
    "platformVersion",
    "enableExecuteCommand",
    "volumeConfigurations",
];

/// The ARN of a task reference (an id or an ARN) in `cluster`.
pub fn task_arn(ctl: &Control, cluster: &str, r: &str) -> String {
    if r.starts_with("arn:") {
        r.to_string()
    } else {
        ctl.arn(&format!("task/{cluster}/{r}"))
    }
}

/// Container overrides are not supported yet: only an empty list passes.
fn refuse_overrides(body: &Value) -> Result<(), ApiError> {
    let Some(o) = body.get("overrides") else {
        return Ok(());
    };
    if o.is_null() {
        return Ok(());
    }
    let Some(obj) = o.as_object() else {
        return Err(ApiError::invalid("overrides must be an object"));
    };
    for (k, v) in obj {
        let empty = v.is_null() || v.as_array().is_some_and(Vec::is_empty);
        if !empty {
            return Err(ApiError::unsupported(&format!("overrides.{k}")));
        }
    }
    Ok(())
}

fn check_started_by(s: Option<&str>) -> Result<(), ApiError> {
    if s.is_some_and(|s| {
        s.len() > 128
            || s.chars()
                .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    }) {
        return Err(ApiError::invalid(
            "startedBy: up to 128 letters (uppercase and lowercase), numbers, hyphens, and underscores are allowed.",
        ));
    }
    Ok(())
}

fn check_group(g: &str) -> Result<(), ApiError> {
    if g.is_empty() || g.len() > 255 || g.contains(char::is_control) {
        return Err(ApiError::invalid("group: 1-255 characters"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunRequest {
    task_definition: String,
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    started_by: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    placement_constraints: Vec<PlacementConstraint>,
    #[serde(default)]
    placement_strategy: Vec<PlacementStrategy>,
    #[serde(default)]
    launch_type: Option<String>,
    #[serde(default)]
    tags: Vec<super::tags::Tag>,
    #[serde(default)]
    client_token: Option<String>,
}

pub async fn run(ctl: &Control, body: &Value) -> ApiResult {
    refuse_unsupported(body, UNSUPPORTED)?;
    refuse_overrides(body)?;
    let req: RunRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    if let Some(t) = &req.client_token {
        if t.is_empty() || t.len() > 64 {
            return Err(ApiError::invalid("clientToken: 1-64 characters"));
        }
    }
    match req.launch_type.as_deref() {
        None | Some("EC2") | Some("EXTERNAL") => {}
        Some(t) => {
            return Err(ApiError::invalid(format!(
                "launchType {t} is not supported"
            )))
        }
    }
    let count = req.count.unwrap_or(1);
    if !(1..=10).contains(&count) {
        return Err(ApiError::invalid("count must be 1-10"));
    }
    check_started_by(req.started_by.as_deref())?;
    let constraints =
        placement::constraints(&req.placement_constraints).map_err(ApiError::invalid)?;
    let strategies = if req.placement_strategy.is_empty() {
        placement::service_default()
    } else {
        placement::strategies(&req.placement_strategy).map_err(ApiError::invalid)?
    };
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    // A token seen before: the same request is answered as it was then
    // (botocore retries a RunTask whose answer it lost with the token it
    // made for it); another request with it is refused.
    let request = body.to_string();
    if let Some(token) = &req.client_token {
        if let Some((first, answer)) = store::client_token(&mut tx, &cluster, token).await? {
            if first != request {
                return Err(ApiError::invalid(
                    "clientToken was used before with another request",
                ));
            }
            return serde_json::from_str(&answer)
                .map_err(|e| ApiError::server(format!("the stored answer is not JSON: {e}")));
        }
    }
    let mut l = Launch::prepare(
        ctl,
        &mut tx,
        &cluster,
        &req.task_definition,
        req.group.as_deref(),
    )
    .await?;
    let mut rng = Rng((l.now as u64) | 1);
    let (chosen, unplaced) = placement::place(
        &mut l.st.instances,
        &l.need,
        count as usize,
        &constraints,
        &strategies,
        &mut rng,
    );
    let mut tasks = Vec::new();
    for i in chosen {
        let t = l
            .launch(ctl, &mut tx, i, req.started_by.as_deref(), &req.tags)
            .await?;
        tasks.push(render::task(ctl, &t, &[]));
    }
    let failures: Vec<Value> = unplaced
        .map(|u| vec![json!({"arn": l.td_arn, "reason": u.code, "detail": u.reason})])
        .unwrap_or_default();
    let answer = json!({"tasks": tasks, "failures": failures});
    if let Some(token) = &req.client_token {
        store::put_client_token(
            &mut tx,
            &cluster,
            token,
            &request,
            &answer.to_string(),
            l.now,
        )
        .await?;
    }
    l.commit(ctl, tx).await?;
    Ok(answer)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRequest {
    task_definition: String,
    container_instances: Vec<String>,
    #[serde(default)]
    started_by: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    tags: Vec<super::tags::Tag>,
}

pub async fn start(ctl: &Control, body: &Value) -> ApiResult {
    refuse_unsupported(body, UNSUPPORTED)?;
    refuse_overrides(body)?;
    let req: StartRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    if req.container_instances.is_empty() || req.container_instances.len() > 10 {
        return Err(ApiError::invalid("containerInstances: 1-10 instances"));
    }
    check_started_by(req.started_by.as_deref())?;
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let mut l = Launch::prepare(
        ctl,
        &mut tx,
        &cluster,
        &req.task_definition,
        req.group.as_deref(),
    )
    .await?;
    let mut rng = Rng((l.now as u64) | 1);
    let mut tasks = Vec::new();
    let mut failures = Vec::new();
    for r in &req.container_instances {
        let arn = super::instances::instance_arn(ctl, &cluster, r);
        let Some(i) = l.st.instances.iter().position(|v| v.rec.arn == arn) else {
            failures.push(failure(&arn, "MISSING"));
            continue;
        };
        let (chosen, unplaced) =
            placement::place(&mut l.st.instances[i..=i], &l.need, 1, &[], &[], &mut rng);
        if chosen.is_empty() {
            let u = unplaced
                .map(|u| u.code)
                .unwrap_or_else(|| "RESOURCE".into());
            failures.push(failure(&arn, &u));
            continue;
        }
        let t = l
            .launch(ctl, &mut tx, i, req.started_by.as_deref(), &req.tags)
            .await?;
        tasks.push(render::task(ctl, &t, &[]));
    }
    l.commit(ctl, tx).await?;
    Ok(json!({"tasks": tasks, "failures": failures}))
}

/// RunTask's and StartTask's common part: a task definition, a group, the
/// cluster as placement sees it, and the instances given new tasks.
struct Launch {
    td_arn: String,
    model: dockhand_model::TaskDefinition,
    group: String,
    st: ClusterState,
    need: placement::Need,
    now: i64,
    touched: BTreeSet<String>,
}

impl Launch {
    async fn prepare(
        ctl: &Control,
        tx: &mut sqlx::AnyConnection,
        cluster: &str,
        task_definition: &str,
        group: Option<&str>,
    ) -> Result<Launch, ApiError> {
        super::active_cluster(tx, cluster).await?;
        let td = super::taskdefs::resolve(tx, task_definition).await?;
        if td.status != "ACTIVE" {
            return Err(ApiError::client("TaskDefinition is inactive"));
        }
        let model = super::taskdefs::parsed(&td)?;
        let group = group.map_or_else(|| format!("family:{}", td.family), str::to_string);
        check_group(&group)?;
        let now = crate::ids::now_ms();
        let st = ClusterState::load(ctl, tx, cluster, now).await?;
        Ok(Launch {
            td_arn: render::taskdef_arn(ctl, &td.family, td.revision),
            need: need_of(&model, &group),
            model,
            group,
            st,
            now,
            touched: BTreeSet::new(),
        })
    }

    /// A new task on instance `i` (already charged by placement).
    async fn launch(
        &mut self,
        ctl: &Control,
        tx: &mut sqlx::AnyConnection,
        i: usize,
        started_by: Option<&str>,
        tags: &[super::tags::Tag],
    ) -> Result<TaskRec, ApiError> {
        let v = &self.st.instances[i];
        let t = new_task(
            task_arn(ctl, &self.st.cluster, &crate::ids::task_id()),
            &self.st.cluster,
            v,
            &self.td_arn,
            &self.model,
            &self.group,
            None,
            None,
            started_by,
            self.now,
        );
        store::put_task(tx, &t).await?;
        super::tags::apply(tx, &t.arn, tags).await?;
        self.touched.insert(v.rec.arn.clone());
        Ok(t)
    }

    /// Commits, and wakes the agents of the instances given tasks.
    async fn commit(self, ctl: &Control, mut tx: crate::store::Tx) -> Result<(), ApiError> {
        let list: Vec<String> = self.touched.iter().cloned().collect();
        store::bump_desired(&mut tx, &list).await?;
        tx.commit().await?;
        ctl.notify_instances(&self.touched).await;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StopRequest {
    task: String,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn stop(ctl: &Control, body: &Value) -> ApiResult {
    let req: StopRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    if req.reason.as_deref().is_some_and(|r| r.len() > 255) {
        return Err(ApiError::invalid("reason: at most 255 characters"));
    }
    let arn = task_arn(ctl, &cluster, &req.task);
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    super::active_cluster(&mut tx, &cluster).await?;
    let Some(mut t) = store::get_task(&mut tx, &arn)
        .await?
        .filter(|t| t.cluster == cluster)
    else {
        return Err(ApiError::invalid("The referenced task was not found."));
    };
    let mut touched = BTreeSet::new();
    if t.desired_status != TaskStatus::Stopped {
        let now = crate::ids::now_ms();
        t.desired_status = TaskStatus::Stopped;
        t.stopping_at = Some(now);
        t.stopped_reason = Some(
            req.reason
                .clone()
                .unwrap_or_else(|| "Task stopped by user".into()),
        );
        t.stop_code = Some(StopCode::UserInitiated);
        t.version += 1;
        store::put_task(&mut tx, &t).await?;
        touched.insert(t.container_instance.clone());
        store::bump_desired(&mut tx, std::slice::from_ref(&t.container_instance)).await?;
    }
    let tags = store::tags(&mut tx, &t.arn).await?;
    tx.commit().await?;
    ctl.notify_instances(&touched).await;
    if t.service.is_some() {
        ctl.wake();
    }
    Ok(json!({"task": render::task(ctl, &t, &tags)}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListRequest {
    #[serde(default)]
    container_instance: Option<String>,
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    max_results: Option<i64>,
    #[serde(default)]
    started_by: Option<String>,
    #[serde(default)]
    service_name: Option<String>,
    #[serde(default)]
    desired_status: Option<String>,
    #[serde(default)]
    launch_type: Option<String>,
}

pub async fn list(ctl: &Control, body: &Value) -> ApiResult {
    let req: ListRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    super::require_cluster(ctl, &cluster).await?;
    let desired = req
        .desired_status
        .clone()
        .unwrap_or_else(|| "RUNNING".into());
    if !["RUNNING", "PENDING", "STOPPED"].contains(&desired.as_str()) {
        return Err(ApiError::invalid(
            "desiredStatus must be RUNNING, PENDING or STOPPED",
        ));
    }
    if req
        .launch_type
        .as_deref()
        .is_some_and(|t| t != "EC2" && t != "EXTERNAL")
    {
        return Ok(json!({"taskArns": [], "nextToken": null}));
    }
    let instance = req
        .container_instance
        .as_deref()
        .map(|r| super::instances::instance_arn(ctl, &cluster, r));
    // A service ARN must be of this cluster (see service_ref).
    let service = match req.service_name.as_deref() {
        None => None,
        Some(r) => {
            let (in_cluster, name) = super::service_ref(body, r)?;
            if in_cluster != cluster {
                return Err(ApiError::invalid(format!(
                    "serviceName {r:?} is a service of cluster {in_cluster:?}; give --cluster {in_cluster}"
                )));
            }
            Some(name)
        }
    };
    let mut c = ctl.store.read().await?;
    let arns = store::task_arns(
        &mut c,
        &store::TaskFilter {
            cluster: &cluster,
            container_instance: instance.as_deref(),
            family: req.family.as_deref(),
            service: service.as_deref(),
            started_by: req.started_by.as_deref(),
            desired_status: Some(&desired),
        },
    )
    .await?;
    let (page, next) = page(
        &arns,
        |a| a.clone(),
        req.next_token.as_deref(),
        req.max_results,
        100,
    )?;
    Ok(json!({"taskArns": page, "nextToken": next}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeRequest {
    tasks: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

pub async fn describe(ctl: &Control, body: &Value) -> ApiResult {
    let req: DescribeRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    if req.tasks.is_empty() || req.tasks.len() > 100 {
        return Err(ApiError::invalid("tasks: 1-100 ids or ARNs"));
    }
    if let Some(i) = req.include.iter().find(|i| *i != "TAGS") {
        return Err(ApiError::invalid(format!("include: {i:?} is not TAGS")));
    }
    super::require_cluster(ctl, &cluster).await?;
    let with_tags = !req.include.is_empty();
    let mut c = ctl.store.read().await?;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for r in &req.tasks {
        let arn = task_arn(ctl, &cluster, r);
        match store::get_task(&mut c, &arn)
            .await?
            .filter(|t: &TaskRec| t.cluster == cluster)
        {
            Some(t) => {
                let tags = if with_tags {
                    store::tags(&mut c, &t.arn).await?
                } else {
                    Vec::new()
                };
                out.push(render::task(ctl, &t, &tags));
            }
            None => failures.push(failure(&arn, "MISSING")),
        }
    }
    Ok(json!({"tasks": out, "failures": failures}))
}
