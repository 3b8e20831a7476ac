//! What the agent shows about itself: a snapshot the supervisor publishes
//! after every reconcile, rendered by the local API in the ECS agent's
//! introspection shapes (`/v1/metadata`, `/v1/tasks`) and Dockhand's own
//! (`/v1/services`).

use crate::engine::{Health, RunState};
use crate::store::{DesiredStatus, TaskRecord};
use crate::task::TaskObs;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cluster: String,
    pub instance_id: String,
    /// `None` until the first reconcile has run.
    pub updated_at: Option<SystemTime>,
    /// Whether the desired-state source has answered (else tasks are held).
    pub desired_known: bool,
    /// The sequence number of the last task state change published.
    pub last_change: u64,
    /// Problems of the agent itself (its state rebuilt, or not saved).
    pub warnings: Vec<String>,
    pub tasks: Vec<TaskStatus>,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub docker_id: String,
    pub docker_name: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub exit_code: Option<i64>,
    pub health: &'static str,
    pub health_output: Option<String>,
    pub ports: Vec<(u16, String, u16)>,
    pub restart_count: i64,
}

#[derive(Debug, Clone)]
pub struct TaskStatus {
    pub arn: String,
    pub id: String,
    pub service: String,
    pub family: String,
    pub revision: u32,
    pub desired: &'static str,
    pub known: &'static str,
    pub healthy: bool,
    /// Why the proxy's checks fail, when they do.
    pub health_reason: Option<String>,
    pub stop_reason: Option<String>,
    pub containers: Vec<ContainerStatus>,
}

impl TaskStatus {
    pub fn new(cluster: &str, id: &str, rec: &TaskRecord, obs: Option<&TaskObs>) -> TaskStatus {
        let containers = obs
            .map(|t| {
                t.containers
                    .iter()
                    .map(|c| ContainerStatus {
                        docker_id: c.id.clone(),
                        docker_name: c.name.clone(),
                        name: c.name_in_task().to_string(),
                        image: c.image.clone(),
                        state: match &c.state {
                            RunState::Created => "CREATED".into(),
                            RunState::Running => "RUNNING".into(),
                            RunState::Exited { .. } => "STOPPED".into(),
                            RunState::Other(s) => s.to_uppercase(),
                        },
                        exit_code: match c.state {
                            RunState::Exited { code, .. } => Some(code),
                            _ => None,
                        },
                        health: match c.health {
                            Health::None => "UNKNOWN",
                            Health::Starting => "STARTING",
                            Health::Healthy => "HEALTHY",
                            Health::Unhealthy => "UNHEALTHY",
                        },
                        health_output: c.health_output.clone(),
                        ports: c.ports.clone(),
                        restart_count: c.restart_count,
                    })
                    .collect()
            })
            .unwrap_or_default();
        TaskStatus {
            arn: task_arn(cluster, id),
            id: id.to_string(),
            service: rec.service.clone(),
            family: rec.family.clone(),
            revision: rec.revision,
            desired: match rec.desired {
                DesiredStatus::Running => "RUNNING",
                DesiredStatus::Stopped => "STOPPED",
            },
            known: obs.map_or("PENDING", |t| t.known_status().as_str()),
            healthy: obs.is_some_and(TaskObs::healthy),
            health_reason: None,
            stop_reason: rec.stop_reason.clone(),
            containers,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub name: String,
    pub family: String,
    /// Digest of the task definition it runs (after any rollback).
    pub digest: Option<String>,
    /// A digest whose rollout failed, if any.
    pub failed_digest: Option<String>,
    /// The revision the service wants; `None` if no valid spec is known.
    pub revision: Option<u32>,
    pub desired: u32,
    pub running: u32,
    pub healthy: u32,
    /// Revision → (running, healthy) tasks.
    pub running_by_revision: BTreeMap<u32, (u32, u32)>,
    pub pending_reason: Option<String>,
    /// Why the service's definition is invalid, when it is.
    pub broken_file: Option<String>,
    pub consecutive_failures: u32,
    /// Set when the circuit breaker rolled a deployment back, with why.
    pub rollout_failed: Option<String>,
    pub total_failures: u64,
    pub events: Vec<Event>,
}

/// A task's ARN in standalone mode.
pub fn task_arn(cluster: &str, id: &str) -> String {
    format!("arn:aws:ecs:local:000000000000:task/{cluster}/{id}")
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Snapshot {
    pub fn container_instance_arn(&self) -> String {
        format!(
            "arn:aws:ecs:local:000000000000:container-instance/{}/{}",
            self.cluster, self.instance_id
        )
    }

    /// `GET /v1/metadata`, the ECS agent's shape.
    pub fn metadata_json(&self) -> Value {
        json!({
            "Cluster": self.cluster,
            "ContainerInstanceArn": self.container_instance_arn(),
            "Version": format!("Dockhand v{}", env!("CARGO_PKG_VERSION")),
            "DesiredStateKnown": self.desired_known,
            "Warnings": self.warnings,
        })
    }

    /// `GET /v1/tasks`, the ECS agent's shape plus health and exit codes.
    pub fn tasks_json(&self) -> Value {
        let tasks: Vec<Value> = self
            .tasks
            .iter()
            .map(|t| {
                json!({
                    "Arn": t.arn,
                    "DesiredStatus": t.desired,
                    "KnownStatus": t.known,
                    "Family": t.family,
                    "Version": t.revision.to_string(),
                    "ServiceName": t.service,
                    "Healthy": t.healthy,
                    "HealthReason": t.health_reason,
                    "StoppedReason": t.stop_reason,
                    "Containers": t.containers.iter().map(|c| json!({
                        "DockerId": c.docker_id,
                        "DockerName": c.docker_name,
                        "Name": c.name,
                        "Image": c.image,
                        "KnownStatus": c.state,
                        "ExitCode": c.exit_code,
                        "HealthStatus": c.health,
                        "HealthOutput": c.health_output,
                        "RestartCount": c.restart_count,
                        "Ports": c.ports.iter().map(|(cp, proto, hp)| json!({
                            "ContainerPort": cp, "Protocol": proto, "HostPort": hp,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "Tasks": tasks })
    }

    /// `GET /v1/services`: Dockhand's own view per service.
    pub fn services_json(&self) -> Value {
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|s| {
                json!({
                    "ServiceName": s.name,
                    "Family": s.family,
                    "Digest": s.digest,
                    "FailedDigest": s.failed_digest,
                    "Revision": s.revision,
                    "DesiredCount": s.desired,
                    "RunningCount": s.running,
                    "HealthyCount": s.healthy,
                    "Deployments": s.running_by_revision.iter().map(|(rev, (running, healthy))| json!({
                        "Revision": rev, "RunningCount": running, "HealthyCount": healthy,
                        "Status": if Some(*rev) == s.revision { "PRIMARY" } else { "ACTIVE" },
                    })).collect::<Vec<_>>(),
                    "PendingReason": s.pending_reason,
                    "ServiceFileInvalid": s.broken_file.is_some(),
                    "ServiceFileError": s.broken_file,
                    "ConsecutiveFailures": s.consecutive_failures,
                    "RolloutState": if s.rollout_failed.is_some() { "FAILED" } else if s.running_by_revision.len() > 1 { "IN_PROGRESS" } else { "COMPLETED" },
                    "RolloutStateReason": s.rollout_failed,
                    "TotalFailures": s.total_failures,
                    "Events": s.events.iter().rev().map(|e| json!({
                        "At": time(e.at), "Message": e.message,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "Services": services,
            "UpdatedAt": self.updated_at.map(time),
            "DesiredStateKnown": self.desired_known,
            "Warnings": self.warnings,
        })
    }
}
