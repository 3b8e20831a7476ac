//! RegisterContainerInstance, DeregisterContainerInstance,
//! ListContainerInstances, DescribeContainerInstances,
//! UpdateContainerInstancesState, and the instances' attributes
//! (PutAttributes, ListAttributes, DeleteAttributes).

use super::render;
use super::{cluster_name, failure, name_of, page, parse, require_cluster, ApiError, ApiResult};
use crate::auth::Caller;
use crate::records::{ClusterRec, InstanceRec, TaskRec};
use crate::scheduler::state::InstanceView;
use crate::store;
use crate::Control;
use dockhand_model::instance::{Attribute, Resource, VersionInfo};
use dockhand_model::task::TaskStatus;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The ARN of an instance reference (an id or an ARN) in `cluster`.
pub fn instance_arn(ctl: &Control, cluster: &str, r: &str) -> String {
    if r.starts_with("arn:") {
        r.to_string()
    } else {
        ctl.arn(&format!("container-instance/{cluster}/{r}"))
    }
}

/// Checks an instance key may act on `cluster`.
fn check_caller(caller: &Caller, cluster: &str) -> Result<(), ApiError> {
    if caller.may_use_cluster(cluster) {
        Ok(())
    } else {
        Err(ApiError::access_denied(format!(
            "User: {} is not authorized to act on cluster {cluster} (its key lists other clusters)",
            caller.name()
        )))
    }
}

/// Renders instances with what their live tasks take.
async fn render_many(
    ctl: &Control,
    c: &mut sqlx::AnyConnection,
    list: &[InstanceRec],
) -> Result<Vec<Value>, ApiError> {
    let now = crate::ids::now_ms();
    let mut out = Vec::with_capacity(list.len());
    for i in list {
        let tasks: Vec<TaskRec> = store::instance_tasks(c, &i.arn, i64::MAX).await?;
        let live: Vec<&TaskRec> = tasks.iter().filter(|t| t.live()).collect();
        let tags = store::tags(c, &i.arn).await?;
        out.push(render::instance(ctl, i, &live, &tags, now));
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterRequest {
    #[serde(default)]
    instance_identity_document: Option<String>,
    #[serde(default)]
    total_resources: Vec<Resource>,
    #[serde(default)]
    version_info: Option<VersionInfo>,
    #[serde(default)]
    container_instance_arn: Option<String>,
    #[serde(default)]
    attributes: Vec<Attribute>,
    #[serde(default)]
    tags: Vec<super::tags::Tag>,
}

/// Attribute names Dockhand sets itself from the registration.
fn check_attributes(list: &[Attribute]) -> Result<(), ApiError> {
    if list.len() > Attribute::MAX_PER_INSTANCE {
        return Err(ApiError::new(
            "AttributeLimitExceededException",
            format!("at most {} attributes", Attribute::MAX_PER_INSTANCE),
        ));
    }
    for a in list {
        Attribute::check(&a.name, a.value.as_deref()).map_err(ApiError::invalid)?;
    }
    Ok(())
}

pub async fn register(ctl: &Control, caller: &Caller, body: &Value) -> ApiResult {
    super::refuse_unsupported(body, &["platformDevices"])?;
    let req: RegisterRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    check_caller(caller, &cluster)?;
    check_attributes(&req.attributes)?;
    let ec2_id = req
        .instance_identity_document
        .as_deref()
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .and_then(|v| v["instanceId"].as_str().map(str::to_string))
        .filter(|id| !id.is_empty() && id.len() <= 255);
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let now = store::db_now(&mut tx, ctl.store.kind).await?;
    match store::get_cluster(&mut tx, &cluster).await? {
        Some(c) if c.status == "ACTIVE" => {}
        // ECS creates `default` for agents with no ECS_CLUSTER.
        _ if cluster == "default" => {
            store::put_cluster(
                &mut tx,
                &ClusterRec {
                    name: "default".into(),
                    status: "ACTIVE".into(),
                    created_at: now,
                    settings: Vec::new(),
                },
            )
            .await?
        }
        _ => return Err(ApiError::cluster_not_found()),
    }
    let existing = match &req.container_instance_arn {
        Some(arn) => store::get_instance(&mut tx, arn)
            .await?
            .filter(|i| i.cluster == cluster),
        None => None,
    };
    let existing = match (existing, &ec2_id) {
        (Some(i), _) => Some(i),
        (None, Some(id)) => store::find_instance_by_ec2(&mut tx, &cluster, id).await?,
        (None, None) => None,
    };
    let mut rec = match existing {
        Some(mut i) => {
            if i.status == "INACTIVE" || (i.status == "DRAINING" && i.drained_by_agent) {
                i.status = "ACTIVE".into();
                i.status_reason = None;
                i.drained_by_agent = false;
            }
            // A registering agent numbers its reports on from its own data
            // directory, which may be new (a replaced disk, a wiped
            // directory): its sequences start over, and those at or below
            // the old agent's would be skipped as repeats. What it sends
            // again after registering was not acknowledged, so it was not
            // applied, or was and is the same state again.
            i.report_seq = 0;
            i
        }
        None => {
            let id = crate::ids::task_id();
            InstanceRec {
                arn: ctl.arn(&format!("container-instance/{cluster}/{id}")),
                cluster: cluster.clone(),
                ec2_instance_id: ec2_id.clone().unwrap_or_else(|| format!("i-{}", &id[..17])),
                status: "ACTIVE".into(),
                status_reason: None,
                drained_by_agent: false,
                registered_at: now,
                last_seen_at: now,
                registered_resources: Vec::new(),
                attributes: Vec::new(),
                version_info: VersionInfo::default(),
                desired_seq: 1,
                report_seq: 0,
                version: 0,
            }
        }
    };
    if !req.total_resources.is_empty() {
        rec.registered_resources = req.total_resources;
    }
    if let Some(v) = req.version_info {
        rec.version_info = v;
    }
    // The agent's attributes replace those it sent before; ones an operator
    // put stay.
    let mut attrs: BTreeMap<String, Attribute> = rec
        .attributes
        .iter()
        .map(|a| (a.name.clone(), a.clone()))
        .collect();
    for a in req.attributes {
        attrs.insert(a.name.clone(), Attribute::new(&a.name, a.value.as_deref()));
    }
    rec.attributes = attrs.into_values().collect();
    rec.last_seen_at = now;
    rec.version += 1;
    rec.desired_seq += 1;
    store::put_instance(&mut tx, &rec).await?;
    super::tags::apply(&mut tx, &rec.arn, &req.tags).await?;
    let out = render_many(ctl, &mut tx, std::slice::from_ref(&rec)).await?;
    tx.commit().await?;
    tracing::info!(cluster = %cluster, instance = %rec.arn, ec2_instance_id = %rec.ec2_instance_id, "container instance registered");
    ctl.wake();
    Ok(json!({ "containerInstance": out.into_iter().next().unwrap_or(Value::Null) }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeregisterRequest {
    container_instance: String,
    #[serde(default)]
    force: Option<bool>,
}

pub async fn deregister(ctl: &Control, caller: &Caller, body: &Value) -> ApiResult {
    let req: DeregisterRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    check_caller(caller, &cluster)?;
    require_cluster(ctl, &cluster).await?;
    let arn = instance_arn(ctl, &cluster, &req.container_instance);
    let now = crate::ids::now_ms();
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let Some(mut rec) = store::get_instance(&mut tx, &arn)
        .await?
        .filter(|i| i.cluster == cluster)
    else {
        return Err(ApiError::invalid("Container instance not found."));
    };
    let tasks: Vec<TaskRec> = store::instance_tasks(&mut tx, &arn, i64::MAX)
        .await?
        .into_iter()
        .filter(TaskRec::live)
        .collect();
    if !tasks.is_empty() && !req.force.unwrap_or(false) {
        return Err(ApiError::invalid(format!(
            "Found {} running tasks on the instance; stop them, or deregister with force (their service tasks are replaced elsewhere).",
            tasks.len()
        )));
    }
    for mut t in tasks {
        t.desired_status = TaskStatus::Stopped;
        t.last_status = TaskStatus::Stopped;
        t.stopped_at = Some(now);
        t.stopped_reason = Some("Container instance deregistered".into());
        t.version += 1;
        store::put_task(&mut tx, &t).await?;
    }
    rec.status = "INACTIVE".into();
    rec.version += 1;
    rec.desired_seq += 1;
    store::put_instance(&mut tx, &rec).await?;
    let out = render_many(ctl, &mut tx, std::slice::from_ref(&rec)).await?;
    tx.commit().await?;
    ctl.notifier.desired_changed(&rec.arn, rec.desired_seq);
    ctl.wake();
    Ok(json!({ "containerInstance": out.into_iter().next().unwrap_or(Value::Null) }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListRequest {
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    max_results: Option<i64>,
}

/// The live views of a cluster's instances (for filters).
async fn views(
    ctl: &Control,
    c: &mut sqlx::AnyConnection,
    cluster: &str,
) -> Result<Vec<InstanceView>, ApiError> {
    let now = crate::ids::now_ms();
    let st = crate::scheduler::state::ClusterState::load(ctl, c, cluster, now).await?;
    Ok(st.instances)
}

pub async fn list(ctl: &Control, body: &Value) -> ApiResult {
    let req: ListRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    require_cluster(ctl, &cluster).await?;
    let filter = match &req.filter {
        Some(f) if !f.is_empty() => {
            Some(crate::query::parse(f).map_err(|e| ApiError::invalid(format!("filter: {e}")))?)
        }
        _ => None,
    };
    let mut c = ctl.store.read().await?;
    let arns: Vec<String> = match &filter {
        // A filter may ask about tasks: the instances with what runs there.
        Some(f) => views(ctl, &mut c, &cluster)
            .await?
            .into_iter()
            .filter(|v| req.status.as_deref().is_none_or(|s| v.rec.status == s))
            .filter(|v| f.matches(v))
            .map(|v| v.rec.arn)
            .collect(),
        None => store::list_instances(&mut c, &cluster, false)
            .await?
            .into_iter()
            .filter(|i| req.status.as_deref().is_none_or(|s| i.status == s))
            .map(|i| i.arn)
            .collect(),
    };
    let (page, next) = page(
        &arns,
        |a| a.clone(),
        req.next_token.as_deref(),
        req.max_results,
        100,
    )?;
    Ok(json!({"containerInstanceArns": page, "nextToken": next}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeRequest {
    container_instances: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

pub async fn describe(ctl: &Control, body: &Value) -> ApiResult {
    let req: DescribeRequest = parse(body)?;
    let _ = req.include;
    let cluster = cluster_name(body)?;
    require_cluster(ctl, &cluster).await?;
    if req.container_instances.len() > 100 {
        return Err(ApiError::invalid("containerInstances: at most 100"));
    }
    let mut c = ctl.store.read().await?;
    let mut found = Vec::new();
    let mut failures = Vec::new();
    for r in &req.container_instances {
        let arn = instance_arn(ctl, &cluster, r);
        match store::get_instance(&mut c, &arn)
            .await?
            .filter(|i| i.cluster == cluster)
        {
            Some(i) => found.push(i),
            None => failures.push(failure(&arn, "MISSING")),
        }
    }
    let out = render_many(ctl, &mut c, &found).await?;
    Ok(json!({"containerInstances": out, "failures": failures}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateRequest {
    container_instances: Vec<String>,
    status: String,
}

pub async fn update_state(ctl: &Control, caller: &Caller, body: &Value) -> ApiResult {
    let req: StateRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    check_caller(caller, &cluster)?;
    require_cluster(ctl, &cluster).await?;
    if !["ACTIVE", "DRAINING"].contains(&req.status.as_str()) {
        return Err(ApiError::invalid("status must be ACTIVE or DRAINING"));
    }
    // An agent drains its host when it shuts down, and its registration
    // makes it ACTIVE again; ACTIVE by an instance key would let any host
    // of the cluster (they share the key) undo an operator's DRAINING.
    if !caller.is_operator() && req.status != "DRAINING" {
        return Err(ApiError::access_denied(format!(
            "User: {} may only set DRAINING: an instance key cannot make a container instance ACTIVE",
            caller.name()
        )));
    }
    if req.container_instances.is_empty() || req.container_instances.len() > 10 {
        return Err(ApiError::invalid("containerInstances: 1-10 instances"));
    }
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let mut changed = Vec::new();
    let mut failures = Vec::new();
    for r in &req.container_instances {
        let arn = instance_arn(ctl, &cluster, r);
        let Some(mut i) = store::get_instance(&mut tx, &arn)
            .await?
            .filter(|i| i.cluster == cluster && i.status != "INACTIVE")
        else {
            failures.push(failure(&arn, "MISSING"));
            continue;
        };
        if i.status != req.status {
            i.status = req.status.clone();
            i.drained_by_agent = req.status == "DRAINING" && !caller.is_operator();
            i.status_reason = (req.status == "DRAINING").then(|| {
                if caller.is_operator() {
                    "drained by an operator".to_string()
                } else {
                    "drained by its agent: the host is shutting down".to_string()
                }
            });
            i.version += 1;
            i.desired_seq += 1;
            store::put_instance(&mut tx, &i).await?;
            tracing::info!(instance = %arn, status = %req.status, "container instance state");
        }
        changed.push(i);
    }
    let out = render_many(ctl, &mut tx, &changed).await?;
    tx.commit().await?;
    for i in &changed {
        ctl.notifier.desired_changed(&i.arn, i.desired_seq);
    }
    ctl.wake();
    Ok(json!({"containerInstances": out, "failures": failures}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttributesRequest {
    attributes: Vec<Attribute>,
}

/// The instance an attribute targets.
fn target(ctl: &Control, cluster: &str, a: &Attribute) -> Result<String, ApiError> {
    if let Some(t) = a.target_type.as_deref() {
        if t != "container-instance" {
            return Err(ApiError::invalid("targetType must be container-instance"));
        }
    }
    let id = a.target_id.as_deref().ok_or_else(|| {
        ApiError::invalid(format!("attribute {:?}: targetId is required", a.name))
    })?;
    Ok(instance_arn(ctl, cluster, id))
}

async fn change_attributes(ctl: &Control, body: &Value, put: bool) -> ApiResult {
    let req: AttributesRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    require_cluster(ctl, &cluster).await?;
    if req.attributes.len() > 10 {
        return Err(ApiError::new(
            "AttributeLimitExceededException",
            "at most 10 attributes per call",
        ));
    }
    if put {
        check_attributes(&req.attributes)?;
    }
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let mut out = Vec::new();
    for a in &req.attributes {
        let arn = target(ctl, &cluster, a)?;
        let Some(mut i) = store::get_instance(&mut tx, &arn)
            .await?
            .filter(|i| i.cluster == cluster)
        else {
            return Err(ApiError::new(
                "TargetNotFoundException",
                format!("Could not find {arn}."),
            ));
        };
        i.attributes.retain(|x| x.name != a.name);
        if put {
            i.attributes
                .push(Attribute::new(&a.name, a.value.as_deref()));
            if i.attributes.len() > 100 {
                return Err(ApiError::new(
                    "AttributeLimitExceededException",
                    "at most 100 attributes per instance",
                ));
            }
        }
        i.version += 1;
        store::put_instance(&mut tx, &i).await?;
        out.push(json!({"name": a.name, "value": a.value, "targetType": "container-instance", "targetId": arn}));
    }
    tx.commit().await?;
    ctl.wake();
    Ok(json!({ "attributes": out }))
}

pub async fn put_attributes(ctl: &Control, body: &Value) -> ApiResult {
    change_attributes(ctl, body, true).await
}

pub async fn delete_attributes(ctl: &Control, body: &Value) -> ApiResult {
    change_attributes(ctl, body, false).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListAttributesRequest {
    target_type: String,
    #[serde(default)]
    attribute_name: Option<String>,
    #[serde(default)]
    attribute_value: Option<String>,
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    max_results: Option<i64>,
}

pub async fn list_attributes(ctl: &Control, body: &Value) -> ApiResult {
    let req: ListAttributesRequest = parse(body)?;
    if req.target_type != "container-instance" {
        return Err(ApiError::invalid("targetType must be container-instance"));
    }
    if req.attribute_value.is_some() && req.attribute_name.is_none() {
        return Err(ApiError::invalid("attributeValue needs attributeName"));
    }
    let cluster = cluster_name(body)?;
    require_cluster(ctl, &cluster).await?;
    let mut c = ctl.store.read().await?;
    let mut all = Vec::new();
    for i in store::list_instances(&mut c, &cluster, false).await? {
        for a in &i.attributes {
            if req.attribute_name.as_deref().is_some_and(|n| n != a.name) {
                continue;
            }
            if req.attribute_value.is_some() && req.attribute_value != a.value {
                continue;
            }
            all.push((format!("{}\u{0}{}", i.arn, a.name), json!({"name": a.name, "value": a.value, "targetType": "container-instance", "targetId": i.arn})));
        }
    }
    let (page, next) = page(
        &all,
        |x| x.0.clone(),
        req.next_token.as_deref(),
        req.max_results,
        100,
    )?;
    Ok(json!({"attributes": page.into_iter().map(|x| x.1).collect::<Vec<_>>(), "nextToken": next}))
}

/// The name of an instance reference, for messages.
pub fn short(r: &str) -> &str {
    name_of(r)
}
