//! A cluster as one scheduling pass sees it: its container instances (with
//! what their tasks take), its services, its live tasks, and the task
//! definitions those name. Loaded inside the pass's transaction.

use crate::query::Subject;
use crate::records::{InstanceRec, ServiceRec, TaskRec};
use crate::store::{self, StoreError};
use crate::Control;
use dockhand_model::TaskDefinition;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// One container instance and what runs on it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub rec: InstanceRec,
    /// It polled within the heartbeat timeout.
    pub connected: bool,
    /// Silent past the grace: its tasks are given up.
    pub lost: bool,
    pub free_cpu: i64,
    pub free_memory: i64,
    /// Host ports taken by its tasks, and reserved at registration.
    pub used_ports: BTreeSet<(u16, String)>,
    /// Live tasks per group (`service:NAME`, …).
    pub groups: BTreeMap<String, usize>,
    pub running: u64,
}

impl InstanceView {
    /// A view of `rec` at `now`; `heard` is when it was last heard from
    /// as far as silence counts ([`Control::last_heard`]).
    pub fn new(heard: i64, rec: InstanceRec, ctl_now: (i64, i64, i64)) -> InstanceView {
        let (now, heartbeat_ms, grace_ms) = ctl_now;
        let silent = now.saturating_sub(heard);
        let mut used_ports = BTreeSet::new();
        for p in rec.reserved_ports("PORTS") {
            used_ports.insert((p, "tcp".to_string()));
        }
        for p in rec.reserved_ports("PORTS_UDP") {
            used_ports.insert((p, "udp".to_string()));
        }
        InstanceView {
            connected: rec.status != "INACTIVE" && silent < heartbeat_ms,
            lost: rec.status != "INACTIVE" && silent >= grace_ms,
            free_cpu: rec.integer("CPU"),
            free_memory: rec.integer("MEMORY"),
            used_ports,
            groups: BTreeMap::new(),
            running: 0,
            rec,
        }
    }

    /// Counts a live task against this instance.
    pub fn take(&mut self, t: &TaskRec) {
        self.free_cpu = self.free_cpu.saturating_sub(t.cpu);
        self.free_memory = self.free_memory.saturating_sub(t.memory);
        for p in &t.host_ports {
            self.used_ports.insert(p.clone());
        }
        *self.groups.entry(t.group.clone()).or_default() += 1;
        self.running += 1;
    }

    /// Whether new tasks may go here at all.
    pub fn schedulable(&self) -> bool {
        self.rec.status == "ACTIVE" && self.connected
    }
}

impl Subject for InstanceView {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.rec.attribute(name)
    }
    fn ec2_instance_id(&self) -> &str {
        &self.rec.ec2_instance_id
    }
    fn agent_connected(&self) -> bool {
        self.connected
    }
    fn agent_version(&self) -> &str {
        self.rec.version_info.agent_version.as_deref().unwrap_or("")
    }
    fn registered_at_unix_secs(&self) -> i64 {
        self.rec.registered_at / 1000
    }
    fn running_tasks_count(&self) -> u64 {
        self.running
    }
    fn has_task_group(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|n| *n > 0)
    }
    fn task_groups(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(g, _)| g.clone())
            .collect()
    }
}

/// A cluster at the start of a pass.
pub struct ClusterState {
    pub cluster: String,
    pub now: i64,
    pub instances: Vec<InstanceView>,
    pub services: Vec<ServiceRec>,
    pub tasks: Vec<TaskRec>,
    /// Task definitions by ARN, parsed.
    pub taskdefs: HashMap<String, Arc<TaskDefinition>>,
}

impl ClusterState {
    /// Loads a cluster; the views already count their live tasks.
    pub async fn load(
        ctl: &Control,
        c: &mut sqlx::AnyConnection,
        cluster: &str,
        now: i64,
    ) -> Result<ClusterState, StoreError> {
        let timing = (
            now,
            ctl.cfg.heartbeat_timeout.as_millis() as i64,
            ctl.cfg.instance_grace.as_millis() as i64,
        );
        let mut instances: Vec<InstanceView> = store::list_instances(c, cluster, false)
            .await?
            .into_iter()
            .map(|r| InstanceView::new(ctl.last_heard(&r), r, timing))
            .collect();
        let services: Vec<ServiceRec> = store::list_services(c, cluster)
            .await?
            .into_iter()
            .filter(|s| s.status != "INACTIVE")
            .collect();
        let tasks = store::live_tasks(c, cluster).await?;
        let index: HashMap<String, usize> = instances
            .iter()
            .enumerate()
            .map(|(i, v)| (v.rec.arn.clone(), i))
            .collect();
        for t in &tasks {
            if let Some(&i) = index.get(&t.container_instance) {
                instances[i].take(t);
            }
        }
        let mut taskdefs = HashMap::new();
        let arns: BTreeSet<String> = services
            .iter()
            .flat_map(|s| s.deployments.iter().map(|d| d.task_definition.clone()))
            .chain(std::iter::once(String::new()))
            .filter(|a| !a.is_empty())
            .collect();
        for arn in arns {
            if let Some(td) = ctl.taskdef(c, &arn).await? {
                taskdefs.insert(arn, td);
            }
        }
        Ok(ClusterState {
            cluster: cluster.to_string(),
            now,
            instances,
            services,
            tasks,
            taskdefs,
        })
    }
}
