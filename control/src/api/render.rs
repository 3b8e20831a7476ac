//! Records as ECS's JSON shapes (`Cluster`, `TaskDefinition`, `Service`,
//! `Task`, `ContainerInstance`). Timestamps are epoch seconds, as the JSON
//! protocol carries them.

use crate::records::{ClusterRec, InstanceRec, ServiceRec, TaskDefRec, TaskRec};
use crate::Control;
use dockhand_model::instance::Resource;
use dockhand_model::task::TaskStatus;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Milliseconds as ECS's epoch-seconds timestamp.
pub fn ts(ms: i64) -> Value {
    json!(ms as f64 / 1000.0)
}

fn opt_ts(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, ts)
}

pub fn tags(list: &[(String, String)]) -> Value {
    Value::Array(
        list.iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}

/// Counts of a cluster, for `Cluster`.
#[derive(Debug, Default, Clone)]
pub struct ClusterCounts {
    pub instances: i64,
    pub running: i64,
    pub pending: i64,
    pub services: i64,
}

pub fn cluster(
    ctl: &Control,
    c: &ClusterRec,
    counts: &ClusterCounts,
    tags_of: &[(String, String)],
) -> Value {
    json!({
        "clusterArn": ctl.arn(&format!("cluster/{}", c.name)),
        "clusterName": c.name,
        "status": c.status,
        "registeredContainerInstancesCount": counts.instances,
        "runningTasksCount": counts.running,
        "pendingTasksCount": counts.pending,
        "activeServicesCount": counts.services,
        "statistics": [],
        "tags": tags(tags_of),
        "settings": if c.settings.is_empty() { json!([{"name": "containerInsights", "value": "disabled"}]) } else { json!(c.settings) },
        "capacityProviders": [],
        "defaultCapacityProviderStrategy": [],
    })
}

pub fn taskdef_arn(ctl: &Control, family: &str, revision: i64) -> String {
    ctl.arn(&format!("task-definition/{family}:{revision}"))
}

pub fn task_definition(ctl: &Control, t: &TaskDefRec) -> Value {
    let mut v = t.request.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "taskDefinitionArn".into(),
            json!(taskdef_arn(ctl, &t.family, t.revision)),
        );
        o.insert("revision".into(), json!(t.revision));
        o.insert("status".into(), json!(t.status));
        o.insert("registeredAt".into(), ts(t.registered_at));
        if let Some(d) = t.deregistered_at {
            o.insert("deregisteredAt".into(), ts(d));
        }
        o.insert("compatibilities".into(), json!(["EXTERNAL", "EC2"]));
        o.insert("requiresAttributes".into(), json!([]));
        o.entry("networkMode").or_insert(json!("bridge"));
        o.entry("volumes").or_insert(json!([]));
        o.entry("placementConstraints").or_insert(json!([]));
        if let Some(cs) = o
            .get_mut("containerDefinitions")
            .and_then(|c| c.as_array_mut())
        {
            for c in cs {
                if let Some(c) = c.as_object_mut() {
                    c.entry("cpu").or_insert(json!(0));
                    c.entry("essential").or_insert(json!(true));
                    c.entry("portMappings").or_insert(json!([]));
                    c.entry("environment").or_insert(json!([]));
                    c.entry("mountPoints").or_insert(json!([]));
                    c.entry("volumesFrom").or_insert(json!([]));
                }
            }
        }
    }
    v
}

/// Task counts of a service: per deployment id, (running, pending).
pub type DeploymentCounts = BTreeMap<String, (i64, i64)>;

pub fn service(
    ctl: &Control,
    s: &ServiceRec,
    counts: &DeploymentCounts,
    events: &[(String, i64, String)],
    tags_of: &[(String, String)],
) -> Value {
    let (running, pending) = s
        .deployments
        .iter()
        .filter(|d| d.status != "INACTIVE")
        .fold((0, 0), |(r, p), d| {
            let (dr, dp) = counts.get(&d.id).copied().unwrap_or((0, 0));
            (r + dr, p + dp)
        });
    let dc = &s.deployment_configuration;
    let cb =
        dc.deployment_circuit_breaker
            .clone()
            .unwrap_or(dockhand_model::service::CircuitBreaker {
                enable: false,
                rollback: false,
            });
    json!({
        "serviceArn": ctl.arn(&format!("service/{}/{}", s.cluster, s.name)),
        "serviceName": s.name,
        "clusterArn": ctl.arn(&format!("cluster/{}", s.cluster)),
        "loadBalancers": s.load_balancers.iter().map(|l| l.api.clone()).collect::<Vec<_>>(),
        "serviceRegistries": [],
        "status": s.status,
        "desiredCount": s.desired_count,
        "runningCount": running,
        "pendingCount": pending,
        "launchType": s.launch_type.clone().unwrap_or_else(|| "EC2".into()),
        "taskDefinition": s.task_definition,
        "deploymentConfiguration": {
            "deploymentCircuitBreaker": {"enable": cb.enable, "rollback": cb.rollback},
            "maximumPercent": dc.maximum_percent,
            "minimumHealthyPercent": dc.minimum_healthy_percent,
        },
        "deployments": s.deployments.iter().filter(|d| d.status != "INACTIVE").map(|d| {
            let (r, p) = counts.get(&d.id).copied().unwrap_or((0, 0));
            json!({
                "id": d.id,
                "status": d.status,
                "taskDefinition": d.task_definition,
                "desiredCount": d.desired_count,
                "pendingCount": p,
                "runningCount": r,
                "failedTasks": d.failed_tasks,
                "createdAt": ts(d.created_at),
                "updatedAt": ts(d.updated_at),
                "launchType": s.launch_type.clone().unwrap_or_else(|| "EC2".into()),
                "rolloutState": d.rollout_state,
                "rolloutStateReason": d.rollout_state_reason,
            })
        }).collect::<Vec<_>>(),
        "roleArn": s.role,
        "events": events.iter().map(|(id, at, m)| json!({"id": id, "createdAt": ts(*at), "message": m})).collect::<Vec<_>>(),
        "createdAt": ts(s.created_at),
        "placementConstraints": s.placement_constraints,
        "placementStrategy": s.placement_strategy,
        "healthCheckGracePeriodSeconds": s.health_check_grace_period_seconds,
        "schedulingStrategy": s.scheduling_strategy,
        "deploymentController": {"type": "ECS"},
        "tags": tags(tags_of),
        "createdBy": ctl.arn("role/dockhand-operator").replace(":ecs:", ":iam:"),
        "enableECSManagedTags": s.enable_ecs_managed_tags,
        "propagateTags": s.propagate_tags.clone().unwrap_or_else(|| "NONE".into()),
        "enableExecuteCommand": false,
    })
}

pub fn task(ctl: &Control, t: &TaskRec, tags_of: &[(String, String)]) -> Value {
    json!({
        "taskArn": t.arn,
        "clusterArn": ctl.arn(&format!("cluster/{}", t.cluster)),
        "taskDefinitionArn": t.task_definition,
        "containerInstanceArn": t.container_instance,
        "overrides": {"containerOverrides": [], "inferenceAcceleratorOverrides": []},
        "lastStatus": t.last_status,
        "desiredStatus": t.desired_status,
        "healthStatus": t.health_status,
        "cpu": t.cpu.to_string(),
        "memory": t.memory.to_string(),
        "containers": t.containers.iter().map(|c| json!({
            "containerArn": ctl.arn(&format!("container/{}/{}/{}", t.cluster, t.id(), c.name)),
            "taskArn": t.arn,
            "name": c.name,
            "image": c.image,
            "runtimeId": c.runtime_id,
            "lastStatus": c.last_status,
            "exitCode": c.exit_code,
            "reason": c.reason,
            "networkBindings": c.network_bindings.iter().map(|b| json!({
                "bindIP": b.bind_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                "containerPort": b.container_port,
                "hostPort": b.host_port,
                "protocol": if b.protocol.is_empty() { "tcp".to_string() } else { b.protocol.clone() },
            })).collect::<Vec<_>>(),
            "healthStatus": c.health_status,
            "cpu": c.cpu.to_string(),
            "memory": c.memory.map(|m| m.to_string()),
            "memoryReservation": c.memory_reservation.map(|m| m.to_string()),
        })).collect::<Vec<_>>(),
        "startedBy": t.started_by,
        "version": t.version,
        "stoppedReason": t.stopped_reason,
        "stopCode": t.stop_code,
        "connectivity": "CONNECTED",
        "createdAt": ts(t.created_at),
        "startedAt": opt_ts(t.started_at),
        "stoppingAt": opt_ts(t.stopping_at),
        "stoppedAt": opt_ts(t.stopped_at),
        "group": t.group,
        "launchType": "EC2",
        "attributes": [],
        "tags": tags(tags_of),
    })
}

/// What the live tasks of an instance take: (CPU, MEMORY, host ports,
/// running tasks, pending tasks).
pub fn usage(tasks: &[&TaskRec]) -> (i64, i64, Vec<(u16, String)>, i64, i64) {
    let mut cpu = 0i64;
    let mut mem = 0i64;
    let mut ports = Vec::new();
    let (mut running, mut pending) = (0, 0);
    for t in tasks {
        cpu = cpu.saturating_add(t.cpu);
        mem = mem.saturating_add(t.memory);
        ports.extend(t.host_ports.iter().cloned());
        match t.last_status {
            TaskStatus::Running => running += 1,
            TaskStatus::Stopped => {}
            _ => pending += 1,
        }
    }
    (cpu, mem, ports, running, pending)
}

pub fn instance(
    ctl: &Control,
    i: &InstanceRec,
    tasks: &[&TaskRec],
    tags_of: &[(String, String)],
    now: i64,
) -> Value {
    let (cpu, mem, ports, running, pending) = usage(tasks);
    let mut tcp: Vec<String> = i
        .reserved_ports("PORTS")
        .into_iter()
        .map(|p| p.to_string())
        .chain(
            ports
                .iter()
                .filter(|(_, p)| p == "tcp")
                .map(|(n, _)| n.to_string()),
        )
        .collect();
    tcp.sort();
    tcp.dedup();
    let mut udp: Vec<String> = i
        .reserved_ports("PORTS_UDP")
        .into_iter()
        .map(|p| p.to_string())
        .chain(
            ports
                .iter()
                .filter(|(_, p)| p == "udp")
                .map(|(n, _)| n.to_string()),
        )
        .collect();
    udp.sort();
    udp.dedup();
    let remaining = vec![
        Resource::integer("CPU", i.integer("CPU").saturating_sub(cpu)),
        Resource::integer("MEMORY", i.integer("MEMORY").saturating_sub(mem)),
        Resource::string_set("PORTS", tcp),
        Resource::string_set("PORTS_UDP", udp),
    ];
    json!({
        "containerInstanceArn": i.arn,
        "ec2InstanceId": i.ec2_instance_id,
        "version": i.version,
        "versionInfo": i.version_info,
        "remainingResources": remaining,
        "registeredResources": i.registered_resources,
        "status": i.status,
        "statusReason": i.status_reason,
        "agentConnected": ctl.connected(i, now),
        "runningTasksCount": running,
        "pendingTasksCount": pending,
        "attributes": i.attributes,
        "registeredAt": ts(i.registered_at),
        "tags": tags(tags_of),
    })
}
