//! The task state machine: what a task's containers, as Docker reports
//! them, mean for the task.
//!
//! ```text
//!  PENDING ──create──► CREATED ──start in dependsOn order──► RUNNING
//!     │                   │                                    │
//!     └── launch fails ───┴──── an essential container exits ──┤
//!                                                              ▼
//!                           agent stops it (drain, SIGTERM) ► STOPPED ─► removed
//! ```
//!
//! Known status is always derived from Docker's view of the containers, never
//! kept only in memory; desired status is the agent's decision and lives in
//! the store ([`crate::store::TaskRecord`]).

use crate::containers::label;
use crate::engine::{Health, Observed, RunState};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// ECS's task status names, as the local API reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KnownStatus {
    /// Some containers are not created or not started yet.
    Pending,
    /// Every essential container runs.
    Running,
    /// Something is running but an essential container has exited.
    Stopping,
    /// Nothing runs.
    Stopped,
}

impl KnownStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KnownStatus::Pending => "PENDING",
            KnownStatus::Running => "RUNNING",
            KnownStatus::Stopping => "STOPPING",
            KnownStatus::Stopped => "STOPPED",
        }
    }
}

/// The containers of one task, in start order.
#[derive(Debug, Clone)]
pub struct TaskObs {
    pub id: String,
    pub containers: Vec<Observed>,
}

/// Groups observed containers by their task label.
pub fn group(observed: Vec<Observed>) -> BTreeMap<String, TaskObs> {
    let mut tasks: BTreeMap<String, TaskObs> = BTreeMap::new();
    for c in observed {
        let Some(id) = c.label(label::TASK).map(str::to_string) else {
            continue;
        };
        tasks
            .entry(id.clone())
            .or_insert_with(|| TaskObs {
                id,
                containers: Vec::new(),
            })
            .containers
            .push(c);
    }
    for t in tasks.values_mut() {
        t.containers.sort_by_key(Observed::start_order);
    }
    tasks
}

impl TaskObs {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.containers.iter().find_map(|c| c.label(key))
    }

    pub fn known_status(&self) -> KnownStatus {
        let any_running = self.containers.iter().any(Observed::is_running);
        let essential_exited = self.failed_essential().is_some();
        let essentials_running = self
            .containers
            .iter()
            .filter(|c| c.is_essential())
            .all(Observed::is_running);
        if essential_exited {
            if any_running {
                KnownStatus::Stopping
            } else {
                KnownStatus::Stopped
            }
        } else if essentials_running {
            KnownStatus::Running
        } else if self
            .containers
            .iter()
            .all(|c| matches!(c.state, RunState::Exited { .. }))
        {
            KnownStatus::Stopped
        } else {
            KnownStatus::Pending
        }
    }

    /// The first essential container that has exited, if any.
    pub fn failed_essential(&self) -> Option<&Observed> {
        self.containers
            .iter()
            .find(|c| c.is_essential() && matches!(c.state, RunState::Exited { .. }))
    }

    /// A sentence saying why the task failed, from its first dead essential.
    pub fn failure_reason(&self) -> Option<String> {
        let c = self.failed_essential()?;
        let RunState::Exited { code, .. } = c.state else {
            return None;
        };
        let name = c.label(label::CONTAINER).unwrap_or(&c.name);
        let oom = if c.oom_killed { " (OOM killed)" } else { "" };
        Some(format!(
            "essential container {name} exited with code {code}{oom}"
        ))
    }

    /// Running and passing its Docker health checks, where it has any.
    pub fn healthy(&self) -> bool {
        self.known_status() == KnownStatus::Running
            && self
                .containers
                .iter()
                .filter(|c| c.is_essential())
                .all(|c| matches!(c.health, Health::None | Health::Healthy))
    }

    /// Whether any container is still up (running, restarting, paused).
    pub fn any_alive(&self) -> bool {
        self.containers
            .iter()
            .any(|c| !matches!(c.state, RunState::Exited { .. } | RunState::Created))
    }

    /// Whether some container was created and never started.
    pub fn has_unstarted(&self) -> bool {
        self.containers.iter().any(|c| c.state == RunState::Created)
    }

    /// When the task's first container started.
    pub fn started_at(&self) -> Option<SystemTime> {
        self.containers.iter().filter_map(|c| c.started_at).min()
    }

    /// When the task's last container finished, if all have.
    pub fn finished_at(&self) -> Option<SystemTime> {
        let mut latest = None;
        for c in &self.containers {
            match c.state {
                RunState::Exited { finished_at, .. } => latest = latest.max(finished_at),
                RunState::Created => {}
                _ => return None,
            }
        }
        latest
    }

    /// Host ports this task holds while any of its containers is alive:
    /// published ones (bridge), and a host-network container's own.
    pub fn host_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.containers
            .iter()
            .filter(|c| !matches!(c.state, RunState::Exited { .. }))
            .flat_map(|c| {
                let host_network = c
                    .labels
                    .get(crate::containers::label::HOST_PORTS)
                    .into_iter()
                    .flat_map(|v| v.split(',').filter_map(|p| p.parse::<u16>().ok()));
                c.ports.iter().map(|p| p.2).chain(host_network)
            })
    }

    /// (memory MiB, CPU units) the task reserves, from its labels.
    pub fn reservation(&self) -> (u64, u64) {
        let get = |k| {
            self.label(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (get(label::TASK_MEMORY), get(label::TASK_CPU))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn c(name: &str, essential: bool, state: RunState, health: Health) -> Observed {
        Observed {
            id: format!("id-{name}"),
            name: name.into(),
            labels: HashMap::from([
                (label::TASK.to_string(), "t1".to_string()),
                (label::CONTAINER.to_string(), name.to_string()),
                (label::ESSENTIAL.to_string(), essential.to_string()),
            ]),
            image: "img".into(),
            state,
            health,
            health_output: None,
            started_at: None,
            ports: vec![(5000, "tcp".into(), 49200)],
            restart_count: 0,
            oom_killed: false,
        }
    }

    fn task(cs: Vec<Observed>) -> TaskObs {
        group(cs).remove("t1").unwrap()
    }

    const EXIT_1: RunState = RunState::Exited {
        code: 1,
        finished_at: None,
    };

    #[test]
    fn essential_exit_stops_the_task_non_essential_does_not() {
        let t = task(vec![
            c("app", true, RunState::Running, Health::None),
            c("init", false, EXIT_1, Health::None),
        ]);
        assert_eq!(t.known_status(), KnownStatus::Running);
        assert!(t.healthy());

        let t = task(vec![
            c("app", true, EXIT_1, Health::None),
            c("side", false, RunState::Running, Health::None),
        ]);
        assert_eq!(t.known_status(), KnownStatus::Stopping);
        assert_eq!(
            t.failure_reason().unwrap(),
            "essential container app exited with code 1"
        );
        assert_eq!(t.host_ports().collect::<Vec<_>>(), vec![49200]);
    }

    #[test]
    fn health_gates_healthy_and_created_is_pending() {
        let t = task(vec![c("app", true, RunState::Running, Health::Starting)]);
        assert_eq!(t.known_status(), KnownStatus::Running);
        assert!(!t.healthy());
        let t = task(vec![c("app", true, RunState::Created, Health::None)]);
        assert_eq!(t.known_status(), KnownStatus::Pending);
        assert!(t.has_unstarted());
    }
}
