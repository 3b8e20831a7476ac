//! What the control endpoint keeps: one record type per table, stored as
//! its JSON body. Times are unix milliseconds.

use dockhand_model::instance::{Attribute, Resource, VersionInfo};
use dockhand_model::service::{DeploymentConfiguration, LoadBalancer};
use dockhand_model::task::{HealthStatus, NetworkBinding, StopCode, TaskStatus};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRec {
    pub name: String,
    /// `ACTIVE` or `INACTIVE` (deleted).
    pub status: String,
    pub created_at: i64,
    #[serde(default)]
    pub settings: Vec<serde_json::Value>,
}

/// A registered task definition revision: the request as sent (AWS-only
/// fields included, echoed by DescribeTaskDefinition) and its revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefRec {
    pub family: String,
    pub revision: i64,
    /// `ACTIVE` or `INACTIVE`.
    pub status: String,
    pub registered_at: i64,
    #[serde(default)]
    pub deregistered_at: Option<i64>,
    /// The RegisterTaskDefinition request body, minus tags.
    pub request: serde_json::Value,
}

/// A placement constraint, as ECS writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementConstraint {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

/// A placement strategy, as ECS writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStrategy {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A service's load balancer: as the API took it (ECS's fields) and the
/// route it means on the hosts (defaults and `dockhand.lb.*` labels
/// applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLoadBalancer {
    pub api: serde_json::Value,
    pub route: LoadBalancer,
}

/// One deployment of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// `ecs-svc/` and 19 digits.
    pub id: String,
    /// `PRIMARY`, `ACTIVE` or `INACTIVE`.
    pub status: String,
    pub task_definition: String,
    pub desired_count: i64,
    pub failed_tasks: i64,
    /// `IN_PROGRESS`, `COMPLETED` or `FAILED`.
    pub rollout_state: String,
    #[serde(default)]
    pub rollout_state_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRec {
    pub cluster: String,
    pub name: String,
    /// `ACTIVE`, `DRAINING` (being deleted) or `INACTIVE`.
    pub status: String,
    pub task_definition: String,
    pub desired_count: i64,
    /// `REPLICA` or `DAEMON`.
    pub scheduling_strategy: String,
    pub deployment_configuration: DeploymentConfiguration,
    #[serde(default)]
    pub placement_constraints: Vec<PlacementConstraint>,
    #[serde(default)]
    pub placement_strategy: Vec<PlacementStrategy>,
    #[serde(default)]
    pub load_balancers: Vec<ServiceLoadBalancer>,
    #[serde(default)]
    pub health_check_grace_period_seconds: i64,
    #[serde(default)]
    pub launch_type: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub propagate_tags: Option<String>,
    #[serde(default)]
    pub enable_ecs_managed_tags: bool,
    /// CreateService's `clientToken`: the same request again answers with
    /// this service instead of an error.
    #[serde(default)]
    pub client_token: Option<String>,
    pub deployments: Vec<Deployment>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Crash backoff: failures in a row, and no new task before this.
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default)]
    pub next_start_at: i64,
    /// The last reason a task could not be placed (to say it once).
    #[serde(default)]
    pub last_placement_failure: Option<String>,
    /// Whether the last pass found the service steady (to say it once).
    #[serde(default)]
    pub steady: bool,
}

impl ServiceRec {
    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.status == "PRIMARY")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRec {
    pub arn: String,
    pub cluster: String,
    pub ec2_instance_id: String,
    /// `ACTIVE`, `DRAINING` or `INACTIVE` (deregistered).
    pub status: String,
    #[serde(default)]
    pub status_reason: Option<String>,
    /// DRAINING asked by the agent itself (its host shutting down): a later
    /// registration makes it ACTIVE again; an operator's DRAINING stays.
    #[serde(default)]
    pub drained_by_agent: bool,
    pub registered_at: i64,
    pub last_seen_at: i64,
    pub registered_resources: Vec<Resource>,
    #[serde(default)]
    pub attributes: Vec<Attribute>,
    #[serde(default)]
    pub version_info: VersionInfo,
    /// Bumped whenever this instance's desired task set changes.
    pub desired_seq: i64,
    /// The highest report sequence applied.
    pub report_seq: i64,
    /// The version of this record, for optimistic updates.
    #[serde(default)]
    pub version: i64,
}

impl InstanceRec {
    /// The registered integer resource `name` (CPU, MEMORY).
    pub fn integer(&self, name: &str) -> i64 {
        self.registered_resources
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.integer_value.or(r.long_value))
            .unwrap_or(0)
    }

    /// Reserved host ports (`PORTS`, `PORTS_UDP`).
    pub fn reserved_ports(&self, name: &str) -> Vec<u16> {
        self.registered_resources
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.string_set_value.as_ref())
            .map(|v| v.iter().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.value.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub runtime_id: Option<String>,
    pub last_status: TaskStatus,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub network_bindings: Vec<NetworkBinding>,
    #[serde(default)]
    pub health_status: HealthStatus,
    #[serde(default)]
    pub cpu: i64,
    #[serde(default)]
    pub memory: Option<i64>,
    #[serde(default)]
    pub memory_reservation: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRec {
    pub arn: String,
    pub cluster: String,
    pub container_instance: String,
    pub task_definition: String,
    /// `service:NAME`, or what RunTask was given (`family:NAME` by default).
    pub group: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub deployment: Option<String>,
    #[serde(default)]
    pub started_by: Option<String>,
    pub desired_status: TaskStatus,
    pub last_status: TaskStatus,
    pub health_status: HealthStatus,
    pub cpu: i64,
    pub memory: i64,
    /// Static host ports the task takes on its instance.
    #[serde(default)]
    pub host_ports: Vec<(u16, String)>,
    pub created_at: i64,
    #[serde(default)]
    pub started_at: Option<i64>,
    #[serde(default)]
    pub stopping_at: Option<i64>,
    #[serde(default)]
    pub stopped_at: Option<i64>,
    #[serde(default)]
    pub stopped_reason: Option<String>,
    #[serde(default)]
    pub stop_code: Option<StopCode>,
    pub containers: Vec<ContainerRec>,
    /// The task passed its health checks at least once.
    #[serde(default)]
    pub healthy_once: bool,
    /// The task failed (crashed, never passed its checks): it counts
    /// toward its service's backoff and its deployment's failures once.
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub failure_counted: bool,
    /// The agent's sequence of the last report applied to this task.
    #[serde(default)]
    pub report_seq: i64,
    pub version: i64,
}

impl TaskRec {
    /// Not finished: wanted running, or not yet seen stopped.
    pub fn live(&self) -> bool {
        self.desired_status != TaskStatus::Stopped || self.last_status != TaskStatus::Stopped
    }

    pub fn id(&self) -> &str {
        self.arn.rsplit('/').next().unwrap_or("")
    }
}
