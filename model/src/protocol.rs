//! The protocol between a managed agent and the control endpoint.
//!
//! The agent always initiates, over HTTPS (or HTTP), with the ECS JSON 1.1
//! protocol (`POST /`, `X-Amz-Target`), every call SigV4-signed with its
//! instance key:
//!
//! 1. `AmazonEC2ContainerServiceV20141113.RegisterContainerInstance`
//!    (ECS's own call): the host's resources, attributes and versions; the
//!    answer's container-instance ARN is kept in `ECS_DATADIR` and sent
//!    again on every later registration, so a restarted agent is the same
//!    instance.
//! 2. [`POLL`]: the session. The answer is this instance's complete desired
//!    task set with a sequence number; the control endpoint holds the call
//!    open until the set changes past the sequence the agent already has
//!    (or `waitSeconds` pass). A poll is also the heartbeat: an instance
//!    with no poll for about 50 s shows `agentConnected: false`.
//! 3. [`REPORT`]: task state changes, batched, in order, each with the
//!    agent's sequence number (the `SubmitTaskStateChange` shape per task).
//!    The answer acknowledges the highest sequence stored; the agent keeps
//!    what is not acknowledged and sends it again, so none is lost.
//!
//! `UpdateContainerInstancesState` with the instance's own ARN (DRAINING)
//! is how an agent asks to be drained when its host shuts down.

use crate::service::LoadBalancer;
use crate::task::{TaskStateChange, TaskStatus};
use crate::taskdef::TaskDefinition;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `X-Amz-Target` prefix of ECS's operations.
pub const ECS_TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113";
/// The `X-Amz-Target` prefix of Dockhand's agent operations.
pub const AGENT_TARGET_PREFIX: &str = "DockhandAgentV1";
/// The session call.
pub const POLL: &str = "DockhandAgentV1.Poll";
/// The report call.
pub const REPORT: &str = "DockhandAgentV1.ReportTaskStates";

/// The longest a poll is held open, seconds.
pub const MAX_POLL_WAIT_SECONDS: u64 = 25;
/// Reports sent in one call, at most.
pub const MAX_REPORT_BATCH: usize = 500;

/// [`POLL`]'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollRequest {
    pub cluster: String,
    pub container_instance: String,
    /// The sequence of the desired set the agent holds (0: none yet).
    #[serde(default)]
    pub sequence: u64,
    /// How long the control endpoint may hold the call open.
    #[serde(default)]
    pub wait_seconds: u64,
}

/// [`POLL`]'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollResponse {
    /// The sequence of this desired set.
    pub sequence: u64,
    /// Nothing changed past the request's sequence: `tasks` and `services`
    /// are empty and mean nothing.
    #[serde(default)]
    pub unchanged: bool,
    /// `ACTIVE` or `DRAINING` (or `INACTIVE`: deregistered; stop asking).
    pub instance_status: String,
    /// Every task this instance should run or stop.
    #[serde(default)]
    pub tasks: Vec<DesiredTask>,
    /// The routes of the services whose tasks are here.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRouting>,
}

/// One task the control endpoint placed on this instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredTask {
    pub task_arn: String,
    pub task_definition_arn: String,
    pub revision: u32,
    pub task_definition: TaskDefinition,
    /// `RUNNING`, or `STOPPED`: drain and stop it.
    pub desired_status: TaskStatus,
    /// The service it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Why it should stop, when it should.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// A service's routing on the hosts that run its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRouting {
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancer>,
    #[serde(default)]
    pub health_check_grace_period_seconds: i64,
}

/// [`REPORT`]'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportRequest {
    pub cluster: String,
    pub container_instance: String,
    pub changes: Vec<TaskStateChange>,
}

/// [`REPORT`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportResponse {
    /// Every change up to this sequence is stored.
    pub acknowledged: u64,
}
