//! Desired state: what this host should run, pushed to the supervisor.
//!
//! A source (the service files directory in standalone mode, the control
//! endpoint in managed mode) sends [`DesiredState`] values on a watch
//! channel; the supervisor reacts to each. "Not known yet" is a state of its
//! own: a source that has not answered, or cannot be read, sends
//! [`DesiredState::Unknown`], and the supervisor then holds what runs
//! (adopts, restarts crashed containers in place, serves) and stops nothing.
//!
//! The last known desired state is kept in `ECS_DATADIR/desired.json`, so an
//! agent restarted while its source is unreachable resumes it: the routes of
//! its services come back, and its tasks keep being held.

pub mod service_dir;

use dockhand_model::protocol::ServiceRouting;
use dockhand_model::{ServiceSpec, TaskDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What a source says this host should run.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredState {
    /// The source has not answered, or cannot be read: hold what runs.
    Unknown,
    Known(Desired),
}

/// The services this host should run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub services: BTreeMap<String, ServiceSpec>,
    /// Services whose definition exists but is invalid right now, with the
    /// first reason. Their running tasks are left as they are (or kept at
    /// their last good spec).
    #[serde(default)]
    pub broken: BTreeMap<String, String>,
    /// Managed mode: the tasks the control endpoint placed here. When set,
    /// `services` and `broken` are empty: the control endpoint decides
    /// counts and rollouts, the agent runs exactly these tasks.
    #[serde(default)]
    pub managed: Option<Managed>,
}

/// What the control endpoint placed on this instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Managed {
    pub sequence: u64,
    /// By task id (the last part of the task's ARN).
    pub tasks: BTreeMap<String, ManagedTask>,
    /// The routes of the services of those tasks.
    pub services: BTreeMap<String, ServiceRouting>,
}

/// One task the control endpoint placed here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagedTask {
    pub arn: String,
    /// Its service, or `family:NAME` for a task started by RunTask.
    pub service: String,
    pub revision: u32,
    pub task_definition: TaskDefinition,
    /// RUNNING; false: drain and stop it.
    pub running: bool,
    #[serde(default)]
    pub stop_reason: Option<String>,
}

impl Managed {
    /// The service a routed task of `service` belongs to, as a spec the
    /// router understands: its routes, and a task definition of it (the
    /// newest placed here) for its network mode.
    pub fn service_spec(&self, service: &str) -> Option<ServiceSpec> {
        let routing = self.services.get(service)?;
        let td = self
            .tasks
            .values()
            .filter(|t| t.service == service)
            .max_by_key(|t| t.revision)?
            .task_definition
            .clone();
        Some(ServiceSpec {
            service_name: service.to_string(),
            desired_count: None,
            scheduling_strategy: Default::default(),
            deployment_configuration: Default::default(),
            health_check_grace_period_seconds: routing.health_check_grace_period_seconds,
            task_definition: td,
            load_balancers: routing.load_balancers.clone(),
        })
    }
}

/// A channel whose receiver starts at [`DesiredState::Unknown`].
pub fn channel() -> (
    tokio::sync::watch::Sender<DesiredState>,
    tokio::sync::watch::Receiver<DesiredState>,
) {
    tokio::sync::watch::channel(DesiredState::Unknown)
}

const FILE: &str = "desired.json";

/// The last known desired state saved in `dir`, if any. A file that cannot
/// be read is reported and ignored: the agent then holds what runs until its
/// source answers, which loses nothing.
pub fn load_last(dir: &Path) -> Option<Desired> {
    let path = dir.join(FILE);
    let text = match crate::files::read_regular(&path, 64 * 1024 * 1024) {
        Ok(t) => t,
        Err(crate::files::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), cause = %e, "cannot read the last desired state; holding what runs until the source answers");
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(path = %path.display(), cause = %e, "the last desired state is not valid; holding what runs until the source answers");
            None
        }
    }
}

/// Saves `desired` in `dir`, atomically.
pub fn save_last(dir: &Path, desired: &Desired) -> Result<(), crate::store::StoreError> {
    // Serializing plain data with string keys cannot fail.
    let bytes = serde_json::to_vec(desired).unwrap_or_default();
    crate::store::write_atomic(dir, FILE, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_desired_state_survives_and_a_bad_file_is_ignored() {
        let dir =
            std::env::temp_dir().join(format!("dockhand-desired-{}", crate::store::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load_last(&dir), None);
        let mut d = Desired::default();
        d.broken.insert("web".into(), "bad".into());
        save_last(&dir, &d).unwrap();
        assert_eq!(load_last(&dir), Some(d));
        std::fs::write(dir.join(FILE), "{").unwrap();
        assert_eq!(load_last(&dir), None);
        std::fs::remove_dir_all(dir).ok();
    }
}
