//! CreateService, UpdateService, DescribeServices, ListServices,
//! DeleteService. A service is a record; the scheduler
//! ([`crate::scheduler`]) does the work: this module validates, starts
//! deployments and wakes it.

use super::render;
use super::{
    cluster_name, failure, page, parse, refuse_unsupported, require_cluster, ApiError, ApiResult,
};
use crate::records::{
    Deployment, PlacementConstraint, PlacementStrategy, ServiceLoadBalancer, ServiceRec, TaskDefRec,
};
use crate::scheduler::placement;
use crate::store;
use crate::Control;
use dockhand_model::service::{
    CircuitBreaker, DeploymentConfiguration, LoadBalancer, MAX_DESIRED_COUNT,
    MAX_GRACE_PERIOD_SECONDS,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// ECS's limit on load balancers per service.
const MAX_LOAD_BALANCERS: usize = 5;

/// Fields of CreateService and UpdateService that Dockhand refuses when
/// they carry a value.
const UNSUPPORTED: &[&str] = &[
    "serviceRegistries",
    "capacityProviderStrategy",
    "platformVersion",
    "networkConfiguration",
    "serviceConnectConfiguration",
    "volumeConfigurations",
    "vpcLatticeConfigurations",
    "enableExecuteCommand",
];

/// ECS's rule for service names.
fn valid_service_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Refuses what Dockhand does not do, field by field.
fn refuse_common(body: &Value) -> Result<(), ApiError> {
    refuse_unsupported(body, UNSUPPORTED)?;
    match body
        .get("availabilityZoneRebalancing")
        .and_then(Value::as_str)
    {
        None | Some("DISABLED") => {}
        Some(_) => return Err(ApiError::unsupported("availabilityZoneRebalancing ENABLED")),
    }
    if let Some(dc) = body.get("deploymentController") {
        match dc.get("type").and_then(Value::as_str) {
            None | Some("ECS") => {}
            Some(t) => {
                return Err(ApiError::unsupported(&format!(
                    "deploymentController.type {t}"
                )))
            }
        }
    }
    if let Some(dc) = body.get("deploymentConfiguration") {
        refuse_unsupported(
            dc,
            &[
                "bakeTimeInMinutes",
                "lifecycleHooks",
                "linearConfiguration",
                "canaryConfiguration",
            ],
        )
        .map_err(|e| ApiError::invalid(format!("deploymentConfiguration.{}", e.message)))?;
        if dc.pointer("/alarms/enable").and_then(Value::as_bool) == Some(true) {
            return Err(ApiError::unsupported("deploymentConfiguration.alarms"));
        }
        match dc.get("strategy").and_then(Value::as_str) {
            None | Some("ROLLING") => {}
            Some(s) => {
                return Err(ApiError::unsupported(&format!(
                    "deploymentConfiguration.strategy {s}"
                )))
            }
        }
    }
    Ok(())
}

/// `deploymentConfiguration` as the API carries it: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeploymentConfigurationIn {
    #[serde(default)]
    deployment_circuit_breaker: Option<CircuitBreakerIn>,
    #[serde(default)]
    maximum_percent: Option<i64>,
    #[serde(default)]
    minimum_healthy_percent: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CircuitBreakerIn {
    enable: bool,
    rollback: bool,
}

/// Applies the given fields over `dc`, and checks the result.
fn merge_deployment_configuration(
    dc: &mut DeploymentConfiguration,
    given: Option<DeploymentConfigurationIn>,
) -> Result<(), ApiError> {
    let Some(g) = given else { return Ok(()) };
    if let Some(v) = g.maximum_percent {
        dc.maximum_percent = v;
    }
    if let Some(v) = g.minimum_healthy_percent {
        dc.minimum_healthy_percent = v;
    }
    if let Some(cb) = g.deployment_circuit_breaker {
        dc.deployment_circuit_breaker = Some(CircuitBreaker {
            enable: cb.enable,
            rollback: cb.rollback,
        });
    }
    if !(0..=100).contains(&dc.minimum_healthy_percent) {
        return Err(ApiError::invalid(
            "deploymentConfiguration.minimumHealthyPercent must be 0-100",
        ));
    }
    if !(100..=1000).contains(&dc.maximum_percent) {
        return Err(ApiError::invalid(
            "deploymentConfiguration.maximumPercent must be 100-1000",
        ));
    }
    Ok(())
}

/// A `loadBalancers` entry as ECS has it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LoadBalancerIn {
    #[serde(default)]
    target_group_arn: Option<String>,
    #[serde(default)]
    load_balancer_name: Option<String>,
    #[serde(default)]
    container_name: Option<String>,
    #[serde(default)]
    container_port: Option<i64>,
}

/// The routes of `list` for task definition `td` (its containers' labels
/// give the settings).
fn routes(list: &[Value], td: &TaskDefRec) -> Result<Vec<ServiceLoadBalancer>, ApiError> {
    if list.len() > MAX_LOAD_BALANCERS {
        return Err(ApiError::invalid(format!(
            "loadBalancers: at most {MAX_LOAD_BALANCERS}"
        )));
    }
    let model = super::taskdefs::parsed(td)?;
    let mut out = Vec::new();
    for (i, api) in list.iter().enumerate() {
        let lb: LoadBalancerIn = serde_json::from_value(api.clone())
            .map_err(|e| ApiError::invalid(format!("loadBalancers[{i}]: {e}")))?;
        let _ = (&lb.target_group_arn, &lb.load_balancer_name);
        let (Some(name), Some(port)) = (lb.container_name, lb.container_port) else {
            return Err(ApiError::invalid(format!(
                "loadBalancers[{i}]: containerName and containerPort are required (the container and port the proxy routes to)"
            )));
        };
        let route = LoadBalancer::from_api(&name, port, &model).map_err(|errors| {
            let text: Vec<String> = errors.iter().take(5).map(ToString::to_string).collect();
            ApiError::invalid(format!(
                "loadBalancers[{i}] with task definition {}:{}: {}",
                td.family,
                td.revision,
                text.join("; ")
            ))
        })?;
        out.push(ServiceLoadBalancer {
            api: api.clone(),
            route,
        });
    }
    Ok(out)
}

fn placement_rules(
    constraints: &[PlacementConstraint],
    strategy: &[PlacementStrategy],
    daemon: bool,
) -> Result<(), ApiError> {
    placement::constraints(constraints).map_err(ApiError::invalid)?;
    placement::strategies(strategy).map_err(ApiError::invalid)?;
    if daemon && !strategy.is_empty() {
        return Err(ApiError::invalid(
            "placementStrategy: not supported with schedulingStrategy DAEMON (one task per instance)",
        ));
    }
    Ok(())
}

fn check_grace(v: i64) -> Result<i64, ApiError> {
    if (0..=MAX_GRACE_PERIOD_SECONDS).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(format!(
            "healthCheckGracePeriodSeconds must be 0-{MAX_GRACE_PERIOD_SECONDS}"
        )))
    }
}

/// A new PRIMARY deployment of `td_arn`; the old PRIMARY becomes ACTIVE.
fn start_deployment(s: &mut ServiceRec, td_arn: &str, now: i64) {
    for d in &mut s.deployments {
        if d.status == "PRIMARY" {
            d.status = "ACTIVE".into();
            d.updated_at = now;
        }
    }
    s.deployments.insert(
        0,
        Deployment {
            id: crate::ids::deployment_id(),
            status: "PRIMARY".into(),
            task_definition: td_arn.to_string(),
            desired_count: s.desired_count,
            failed_tasks: 0,
            rollout_state: "IN_PROGRESS".into(),
            rollout_state_reason: Some("ECS deployment in progress.".into()),
            created_at: now,
            updated_at: now,
        },
    );
    s.task_definition = td_arn.to_string();
    s.consecutive_failures = 0;
    s.next_start_at = 0;
    s.last_placement_failure = None;
    s.steady = false;
}

/// An ACTIVE revision for a new deployment.
async fn active_taskdef(c: &mut sqlx::AnyConnection, r: &str) -> Result<TaskDefRec, ApiError> {
    let td = super::taskdefs::resolve(c, r).await?;
    if td.status != "ACTIVE" {
        return Err(ApiError::client(format!(
            "TaskDefinition {}:{} is inactive; register a new revision.",
            td.family, td.revision
        )));
    }
    Ok(td)
}

async fn render_one(
    ctl: &Control,
    c: &mut sqlx::AnyConnection,
    s: &ServiceRec,
    with_tags: bool,
) -> Result<Value, ApiError> {
    let counts: render::DeploymentCounts = store::deployment_counts(c, &s.cluster, &s.name)
        .await?
        .into_iter()
        .map(|(d, r, p)| (d, (r, p)))
        .collect();
    let events = store::events(c, &s.cluster, &s.name).await?;
    let tags = if with_tags {
        store::tags(c, &service_arn(ctl, &s.cluster, &s.name)).await?
    } else {
        Vec::new()
    };
    Ok(render::service(ctl, s, &counts, &events, &tags))
}

pub fn service_arn(ctl: &Control, cluster: &str, name: &str) -> String {
    ctl.arn(&format!("service/{cluster}/{name}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    service_name: String,
    #[serde(default)]
    task_definition: Option<String>,
    #[serde(default)]
    load_balancers: Vec<Value>,
    #[serde(default)]
    desired_count: Option<i64>,
    #[serde(default)]
    client_token: Option<String>,
    #[serde(default)]
    launch_type: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    deployment_configuration: Option<DeploymentConfigurationIn>,
    #[serde(default)]
    placement_constraints: Vec<PlacementConstraint>,
    #[serde(default)]
    placement_strategy: Vec<PlacementStrategy>,
    #[serde(default)]
    health_check_grace_period_seconds: Option<i64>,
    #[serde(default)]
    scheduling_strategy: Option<String>,
    #[serde(default)]
    tags: Vec<super::tags::Tag>,
    #[serde(default)]
    enable_ecs_managed_tags: Option<bool>,
    #[serde(default)]
    propagate_tags: Option<String>,
}

fn check_launch_type(t: Option<&str>) -> Result<(), ApiError> {
    match t {
        None | Some("EC2") | Some("EXTERNAL") => Ok(()),
        Some(t) => Err(ApiError::invalid(format!(
            "launchType {t} is not supported: Dockhand runs tasks on registered container instances (EC2 or EXTERNAL)"
        ))),
    }
}

pub async fn create(ctl: &Control, body: &Value) -> ApiResult {
    refuse_common(body)?;
    let req: CreateRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    if !valid_service_name(&req.service_name) {
        return Err(ApiError::invalid(
            "serviceName: up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed.",
        ));
    }
    check_launch_type(req.launch_type.as_deref())?;
    let daemon = match req.scheduling_strategy.as_deref() {
        None | Some("REPLICA") => false,
        Some("DAEMON") => true,
        Some(s) => {
            return Err(ApiError::invalid(format!(
                "schedulingStrategy must be REPLICA or DAEMON, got {s:?}"
            )))
        }
    };
    let desired_count = match (daemon, req.desired_count) {
        (false, None) => return Err(ApiError::invalid("desiredCount is required for schedulingStrategy REPLICA")),
        (false, Some(n)) if !(0..=MAX_DESIRED_COUNT).contains(&n) => {
            return Err(ApiError::invalid(format!("desiredCount must be 0-{MAX_DESIRED_COUNT}")))
        }
        (false, Some(n)) => n,
        (true, Some(n)) if n != 0 => {
            return Err(ApiError::invalid(
                "desiredCount is not allowed with schedulingStrategy DAEMON: it runs one task on each matching instance",
            ))
        }
        (true, _) => 0,
    };
    let mut dc = if daemon {
        DeploymentConfiguration {
            minimum_healthy_percent: 0,
            maximum_percent: 100,
            deployment_circuit_breaker: None,
        }
    } else {
        DeploymentConfiguration::default()
    };
    merge_deployment_configuration(&mut dc, req.deployment_configuration)?;
    placement_rules(&req.placement_constraints, &req.placement_strategy, daemon)?;
    let grace = check_grace(req.health_check_grace_period_seconds.unwrap_or(0))?;
    if let Some(p) = req.propagate_tags.as_deref() {
        if !["TASK_DEFINITION", "SERVICE", "NONE"].contains(&p) {
            return Err(ApiError::invalid(
                "propagateTags must be TASK_DEFINITION, SERVICE or NONE",
            ));
        }
    }
    let Some(td_ref) = req.task_definition.as_deref() else {
        return Err(ApiError::invalid("taskDefinition is required"));
    };

    let now = crate::ids::now_ms();
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    super::active_cluster(&mut tx, &cluster).await?;
    if let Some(existing) = store::get_service(&mut tx, &cluster, &req.service_name).await? {
        if existing.status != "INACTIVE" {
            if existing.status == "ACTIVE"
                && req.client_token.is_some()
                && existing.client_token == req.client_token
            {
                let out = render_one(ctl, &mut tx, &existing, false).await?;
                return Ok(json!({ "service": out }));
            }
            return Err(ApiError::invalid("Creation of service was not idempotent."));
        }
        // An INACTIVE service of that name is forgotten, as in ECS.
        store::delete_service(&mut tx, &cluster, &req.service_name).await?;
    }
    let td = active_taskdef(&mut tx, td_ref).await?;
    let td_arn = render::taskdef_arn(ctl, &td.family, td.revision);
    let load_balancers = routes(&req.load_balancers, &td)?;
    let mut s = ServiceRec {
        cluster: cluster.clone(),
        name: req.service_name.clone(),
        status: "ACTIVE".into(),
        task_definition: td_arn.clone(),
        desired_count,
        scheduling_strategy: if daemon { "DAEMON" } else { "REPLICA" }.into(),
        deployment_configuration: dc,
        placement_constraints: req.placement_constraints,
        placement_strategy: req.placement_strategy,
        load_balancers,
        health_check_grace_period_seconds: grace,
        launch_type: req.launch_type,
        role: req.role,
        propagate_tags: req.propagate_tags,
        enable_ecs_managed_tags: req.enable_ecs_managed_tags.unwrap_or(false),
        client_token: req.client_token,
        deployments: Vec::new(),
        created_at: now,
        updated_at: now,
        consecutive_failures: 0,
        next_start_at: 0,
        last_placement_failure: None,
        steady: false,
    };
    start_deployment(&mut s, &td_arn, now);
    store::put_service(&mut tx, &s).await?;
    super::tags::apply(&mut tx, &service_arn(ctl, &cluster, &s.name), &req.tags).await?;
    let out = render_one(ctl, &mut tx, &s, true).await?;
    tx.commit().await?;
    tracing::info!(cluster = %cluster, service = %s.name, task_definition = %td_arn, desired = desired_count, "service created");
    ctl.wake();
    Ok(json!({ "service": out }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateRequest {
    service: String,
    #[serde(default)]
    desired_count: Option<i64>,
    #[serde(default)]
    task_definition: Option<String>,
    #[serde(default)]
    deployment_configuration: Option<DeploymentConfigurationIn>,
    #[serde(default)]
    placement_constraints: Option<Vec<PlacementConstraint>>,
    #[serde(default)]
    placement_strategy: Option<Vec<PlacementStrategy>>,
    #[serde(default)]
    force_new_deployment: Option<bool>,
    #[serde(default)]
    health_check_grace_period_seconds: Option<i64>,
    #[serde(default)]
    enable_ecs_managed_tags: Option<bool>,
    #[serde(default)]
    load_balancers: Option<Vec<Value>>,
    #[serde(default)]
    propagate_tags: Option<String>,
}

pub async fn update(ctl: &Control, body: &Value) -> ApiResult {
    refuse_common(body)?;
    let req: UpdateRequest = parse(body)?;
    let (cluster, name) = super::service_ref(body, &req.service)?;
    let now = crate::ids::now_ms();
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    super::active_cluster(&mut tx, &cluster).await?;
    let Some(mut s) = store::get_service(&mut tx, &cluster, &name).await? else {
        return Err(ApiError::service_not_found());
    };
    if s.status != "ACTIVE" {
        return Err(ApiError::new(
            "ServiceNotActiveException",
            "Service was not ACTIVE.",
        ));
    }
    let daemon = s.scheduling_strategy == "DAEMON";
    if let Some(n) = req.desired_count {
        if daemon {
            return Err(ApiError::invalid(
                "desiredCount cannot be set on a DAEMON service: it runs one task on each matching instance",
            ));
        }
        if !(0..=MAX_DESIRED_COUNT).contains(&n) {
            return Err(ApiError::invalid(format!(
                "desiredCount must be 0-{MAX_DESIRED_COUNT}"
            )));
        }
        if n != s.desired_count {
            s.desired_count = n;
            s.steady = false;
            s.last_placement_failure = None;
        }
    }
    merge_deployment_configuration(
        &mut s.deployment_configuration,
        req.deployment_configuration,
    )?;
    if let Some(c) = req.placement_constraints {
        s.placement_constraints = c;
    }
    if let Some(p) = req.placement_strategy {
        s.placement_strategy = p;
    }
    placement_rules(&s.placement_constraints, &s.placement_strategy, daemon)?;
    if let Some(g) = req.health_check_grace_period_seconds {
        s.health_check_grace_period_seconds = check_grace(g)?;
    }
    if let Some(v) = req.enable_ecs_managed_tags {
        s.enable_ecs_managed_tags = v;
    }
    if let Some(p) = req.propagate_tags {
        s.propagate_tags = Some(p);
    }
    let current = s
        .primary()
        .map(|d| d.task_definition.clone())
        .unwrap_or_default();
    let td = match &req.task_definition {
        Some(r) => active_taskdef(&mut tx, r).await?,
        None => super::taskdefs::resolve(&mut tx, &current).await?,
    };
    let td_arn = render::taskdef_arn(ctl, &td.family, td.revision);
    // Routes follow the task definition's labels, and may be replaced.
    let api_lbs: Vec<Value> = match req.load_balancers {
        Some(l) => l,
        None => s.load_balancers.iter().map(|l| l.api.clone()).collect(),
    };
    s.load_balancers = routes(&api_lbs, &td)?;
    let new_deployment = td_arn != current || req.force_new_deployment.unwrap_or(false);
    if new_deployment {
        start_deployment(&mut s, &td_arn, now);
    }
    s.updated_at = now;
    store::put_service(&mut tx, &s).await?;
    // Every instance running the service learns its new routes.
    let touched = service_instances(&mut tx, &cluster, &name).await?;
    store::bump_desired(&mut tx, &touched.iter().cloned().collect::<Vec<_>>()).await?;
    let out = render_one(ctl, &mut tx, &s, false).await?;
    tx.commit().await?;
    tracing::info!(cluster = %cluster, service = %name, task_definition = %td_arn, desired = s.desired_count, new_deployment, "service updated");
    ctl.notify_instances(&touched).await;
    ctl.wake();
    Ok(json!({ "service": out }))
}

/// The instances running live tasks of `service`.
async fn service_instances(
    c: &mut sqlx::AnyConnection,
    cluster: &str,
    service: &str,
) -> Result<std::collections::BTreeSet<String>, ApiError> {
    Ok(store::live_tasks(c, cluster)
        .await?
        .into_iter()
        .filter(|t| t.service.as_deref() == Some(service))
        .map(|t| t.container_instance)
        .collect())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeRequest {
    services: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

pub async fn describe(ctl: &Control, body: &Value) -> ApiResult {
    let req: DescribeRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    if req.services.is_empty() || req.services.len() > 10 {
        return Err(ApiError::invalid("services: 1-10 names or ARNs"));
    }
    if let Some(i) = req.include.iter().find(|i| *i != "TAGS") {
        return Err(ApiError::invalid(format!("include: {i:?} is not TAGS")));
    }
    require_cluster(ctl, &cluster).await?;
    let with_tags = !req.include.is_empty();
    let mut c = ctl.store.read().await?;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for r in &req.services {
        // An ARN of a service in another cluster than the request's is
        // missing from this one.
        let Ok((in_cluster, name)) = super::service_ref(body, r) else {
            failures.push(failure(r, "MISSING"));
            continue;
        };
        match store::get_service(&mut c, &in_cluster, &name).await? {
            Some(s) => out.push(render_one(ctl, &mut c, &s, with_tags).await?),
            None => failures.push(failure(&service_arn(ctl, &in_cluster, &name), "MISSING")),
        }
    }
    Ok(json!({"services": out, "failures": failures}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListRequest {
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    max_results: Option<i64>,
    #[serde(default)]
    launch_type: Option<String>,
    #[serde(default)]
    scheduling_strategy: Option<String>,
}

pub async fn list(ctl: &Control, body: &Value) -> ApiResult {
    refuse_unsupported(body, &["resourceManagementType"])?;
    let req: ListRequest = parse(body)?;
    let cluster = cluster_name(body)?;
    require_cluster(ctl, &cluster).await?;
    let mut c = ctl.store.read().await?;
    let arns: Vec<String> = store::list_services(&mut c, &cluster)
        .await?
        .into_iter()
        .filter(|s| s.status != "INACTIVE")
        .filter(|s| {
            req.scheduling_strategy
                .as_deref()
                .is_none_or(|x| x == s.scheduling_strategy)
        })
        .filter(|s| {
            req.launch_type
                .as_deref()
                .is_none_or(|x| x == s.launch_type.as_deref().unwrap_or("EC2"))
        })
        .map(|s| service_arn(ctl, &cluster, &s.name))
        .collect();
    let (page, next) = page(
        &arns,
        |a| a.clone(),
        req.next_token.as_deref(),
        req.max_results.or(Some(10)),
        100,
    )?;
    Ok(json!({"serviceArns": page, "nextToken": next}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteRequest {
    service: String,
    #[serde(default)]
    force: Option<bool>,
}

pub async fn delete(ctl: &Control, body: &Value) -> ApiResult {
    let req: DeleteRequest = parse(body)?;
    let (cluster, name) = super::service_ref(body, &req.service)?;
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    super::active_cluster(&mut tx, &cluster).await?;
    let Some(mut s) = store::get_service(&mut tx, &cluster, &name).await? else {
        return Err(ApiError::service_not_found());
    };
    if s.status == "ACTIVE" {
        if s.scheduling_strategy == "REPLICA" && s.desired_count > 0 && !req.force.unwrap_or(false)
        {
            return Err(ApiError::invalid(
                "The service cannot be stopped while it is scaled above 0.",
            ));
        }
        s.status = "DRAINING".into();
        s.desired_count = 0;
        s.updated_at = crate::ids::now_ms();
        store::put_service(&mut tx, &s).await?;
    }
    let out = render_one(ctl, &mut tx, &s, false).await?;
    tx.commit().await?;
    tracing::info!(cluster = %cluster, service = %name, "service deleted");
    ctl.wake();
    Ok(json!({ "service": out }))
}
