//! Telling the world: the status snapshot the local API serves, systemd's
//! status line, and the ordered stream of task state changes.

use super::Supervisor;
use crate::changes::Change;
use crate::engine::{Engine, Health, RunState};
use crate::router::Router;
use crate::status::{ServiceStatus, Snapshot, TaskStatus as TaskView};
use crate::store::{DesiredStatus, ServiceRecord, TaskRecord};
use crate::task::{KnownStatus, TaskObs};
use dockhand_model::task::{
    ContainerStateChange, HealthStatus, NetworkBinding, StopCode, TaskStateChange, TaskStatus,
};
use dockhand_model::ServiceSpec;
use std::collections::{BTreeMap, BTreeSet};

/// What was last published of a task; a new change is published when it
/// differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Published {
    service: String,
    revision: u32,
    status: TaskStatus,
    desired: TaskStatus,
    health: HealthStatus,
    containers: Vec<(String, TaskStatus, Option<i64>, HealthStatus)>,
}

fn container_status(state: &RunState) -> (TaskStatus, Option<i64>) {
    match state {
        RunState::Created => (TaskStatus::Pending, None),
        RunState::Running => (TaskStatus::Running, None),
        RunState::Exited { code, .. } => (TaskStatus::Stopped, Some(*code)),
        RunState::Other(_) => (TaskStatus::Pending, None),
    }
}

fn health_of(h: Health) -> HealthStatus {
    match h {
        Health::Healthy => HealthStatus::Healthy,
        Health::Unhealthy => HealthStatus::Unhealthy,
        Health::None | Health::Starting => HealthStatus::Unknown,
    }
}

/// ECS's `lastStatus` of a task from what the engine shows.
fn task_status(rec: &TaskRecord, obs: Option<&TaskObs>) -> TaskStatus {
    match obs.map(TaskObs::known_status) {
        None if rec.desired == DesiredStatus::Stopped => TaskStatus::Stopped,
        None | Some(KnownStatus::Pending) => TaskStatus::Pending,
        Some(KnownStatus::Running) => TaskStatus::Running,
        Some(KnownStatus::Stopping) => TaskStatus::Stopping,
        Some(KnownStatus::Stopped) => TaskStatus::Stopped,
    }
}

fn stop_code(rec: &TaskRecord) -> StopCode {
    match &rec.stop_reason {
        Some(r) if rec.crash_counted && r.starts_with("failed to start") => {
            StopCode::TaskFailedToStart
        }
        _ if rec.crash_counted => StopCode::EssentialContainerExited,
        _ => StopCode::ServiceSchedulerInitiated,
    }
}

impl<E: Engine, R: Router> Supervisor<E, R> {
    /// A task whose record is dropped (no container of it is left, and no
    /// launch of it runs) ends with a STOPPED change saying why, unless
    /// this process published its end already. Without it a task whose
    /// launch an agent restart cut short (its record saved, no container
    /// made yet) was never reported: the control endpoint kept it PENDING
    /// for ever, its service one task short.
    pub(super) fn publish_forgotten(&mut self, id: &str, rec: &TaskRecord) {
        let last = self.published.remove(id);
        if last
            .as_ref()
            .is_some_and(|l| l.status == TaskStatus::Stopped)
        {
            return;
        }
        let (reason, stop_code) = match (&rec.stop_reason, last) {
            (Some(r), _) => (r.clone(), Some(stop_code(rec))),
            // Seen with its containers by this process: they went.
            (None, Some(_)) => ("the task's containers are gone".to_string(), None),
            // Never seen with any: removed while no agent ran, or never
            // made, an agent having stopped in the middle of the launch.
            (None, None) => (
                "no container of the task is left (removed, or never created: the agent stopped during its launch)".to_string(),
                Some(StopCode::TaskFailedToStart),
            ),
        };
        let at_ms = self.now_ms();
        self.push_end(
            id,
            rec.service.clone(),
            rec.revision,
            reason,
            stop_code,
            at_ms,
        );
    }

    /// A STOPPED change for a task that has no container left to report.
    fn push_end(
        &mut self,
        id: &str,
        service: String,
        revision: u32,
        reason: String,
        stop_code: Option<StopCode>,
        at_ms: u64,
    ) {
        self.changes.push(Change {
            service,
            task_id: id.to_string(),
            revision,
            desired: TaskStatus::Stopped,
            report: TaskStateChange {
                sequence: 0,
                task: crate::status::task_arn(&self.cfg.cluster, id),
                status: TaskStatus::Stopped,
                reason: Some(reason),
                stop_code,
                health_status: HealthStatus::Unknown,
                containers: Vec::new(),
                at_ms,
                engine_failure: false,
            },
        });
    }

    /// Publishes what the local API and `dockhand status` show, and the
    /// state changes since the last pass.
    pub(super) fn publish(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        self.publish_changes(tasks);
        let mut snapshot = Snapshot {
            cluster: self.cfg.cluster.clone(),
            instance_id: self.store.state.instance_id.clone(),
            updated_at: Some(self.clock.now()),
            desired_known: self.known,
            last_change: self.changes.last(),
            warnings: self
                .recovered
                .iter()
                .cloned()
                .chain(
                    self.save_error
                        .iter()
                        .map(|e| format!("the agent state cannot be saved: {e}")),
                )
                .collect(),
            ..Snapshot::default()
        };
        for (id, rec) in &self.store.state.tasks {
            let obs = tasks.get(id);
            let mut t = TaskView::new(&self.cfg.cluster, id, rec, obs);
            for c in &mut t.containers {
                if let Some(n) = rec.restarts.get(&c.name) {
                    c.restart_count += i64::from(*n);
                }
            }
            if let Some(h) = self.router.task_health(id) {
                t.healthy = t.healthy && h;
                t.health_reason = self.router.task_failure(id);
            }
            snapshot.tasks.push(t);
        }
        let managed = self.desired.managed.as_ref();
        let names: BTreeSet<&String> = self
            .desired
            .services
            .keys()
            .chain(self.store.state.services.keys())
            .chain(
                managed
                    .into_iter()
                    .flat_map(|m| m.tasks.values().map(|t| &t.service)),
            )
            .collect();
        for name in names {
            let spec = self
                .current_spec(name)
                .or_else(|| managed?.service_spec(name));
            let spec = spec.as_ref();
            // Managed mode: as many as the control endpoint placed here.
            let placed = managed.map(|m| {
                m.tasks
                    .values()
                    .filter(|t| &t.service == name && t.running)
                    .count() as u32
            });
            let rec = self
                .store
                .state
                .services
                .get(name)
                .cloned()
                .unwrap_or_else(ServiceRecord::default);
            let mine = snapshot.tasks.iter().filter(|t| &t.service == name);
            let managed_revision = managed.and_then(|m| {
                m.tasks
                    .values()
                    .filter(|t| &t.service == name && t.running)
                    .map(|t| t.revision)
                    .max()
            });
            let revision = managed_revision.or_else(|| {
                let s = spec?;
                let digest = s.task_definition.digest();
                self.store
                    .state
                    .revisions
                    .get(&s.task_definition.family)
                    .and_then(|l| l.iter().position(|d| *d == digest))
                    .map(|i| i as u32 + 1)
            });
            let mut running = 0;
            let mut healthy = 0;
            // Per revision: (running, healthy).
            let mut by_revision: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
            for t in mine {
                if t.desired == "RUNNING" && t.known == "RUNNING" {
                    running += 1;
                    by_revision.entry(t.revision).or_default().0 += 1;
                }
                if t.desired == "RUNNING" && t.healthy {
                    healthy += 1;
                    by_revision.entry(t.revision).or_default().1 += 1;
                }
            }
            snapshot.services.push(ServiceStatus {
                name: name.clone(),
                family: spec
                    .map(|s| s.task_definition.family.clone())
                    .unwrap_or_default(),
                digest: spec.map(|s| s.task_definition.digest()),
                failed_digest: rec.failed_digest.clone(),
                revision,
                desired: placed.unwrap_or_else(|| spec.map_or(0, ServiceSpec::wanted_tasks)),
                running,
                healthy,
                running_by_revision: by_revision,
                pending_reason: self.pending_reason.get(name).cloned(),
                broken_file: self.desired.broken.get(name).cloned(),
                consecutive_failures: rec.consecutive_failures,
                rollout_failed: rec.failed_reason.clone(),
                total_failures: rec.total_failures,
                events: self
                    .events
                    .get(name)
                    .map(|e| e.iter().cloned().collect())
                    .unwrap_or_default(),
            });
        }
        self.status_line(&snapshot);
        match self.status.write() {
            Ok(mut s) => *s = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    /// systemd's STATUS= line, sent when it changes.
    fn status_line(&mut self, snapshot: &Snapshot) {
        let running: usize = snapshot.services.iter().map(|s| s.running as usize).sum();
        let healthy: usize = snapshot.services.iter().map(|s| s.healthy as usize).sum();
        let pending = snapshot
            .services
            .iter()
            .filter(|s| s.pending_reason.is_some())
            .count();
        let line = format!(
            "{} service(s), {running} task(s) running, {healthy} healthy{}{}",
            snapshot.services.len(),
            if pending > 0 {
                format!(", {pending} service(s) waiting (see dockhand status)")
            } else {
                String::new()
            },
            if self.known {
                ""
            } else {
                "; desired state unknown, holding"
            }
        );
        if self.last_status_line != line {
            crate::notify::status(&line);
            self.last_status_line = line;
        }
    }

    /// Appends a state change for every task whose state differs from what
    /// was last published; a task whose containers vanished is published
    /// STOPPED once.
    fn publish_changes(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        let now = self.now_ms();
        let mut seen = BTreeSet::new();
        for (id, rec) in &self.store.state.tasks {
            seen.insert(id.clone());
            let obs = tasks.get(id);
            let status = task_status(rec, obs);
            let desired = match rec.desired {
                DesiredStatus::Running => TaskStatus::Running,
                DesiredStatus::Stopped => TaskStatus::Stopped,
            };
            let docker_health = obs.map_or(HealthStatus::Unknown, |t| {
                let checked: Vec<Health> = t
                    .containers
                    .iter()
                    .filter(|c| c.is_essential() && c.health != Health::None)
                    .map(|c| c.health)
                    .collect();
                if checked.is_empty() {
                    HealthStatus::Unknown
                } else if t.healthy() {
                    HealthStatus::Healthy
                } else if checked.contains(&Health::Unhealthy) {
                    HealthStatus::Unhealthy
                } else {
                    HealthStatus::Unknown
                }
            });
            let health = match self.router.task_health(id) {
                Some(true) if docker_health != HealthStatus::Unhealthy => HealthStatus::Healthy,
                Some(_) => HealthStatus::Unhealthy,
                None => docker_health,
            };
            let containers: Vec<ContainerStateChange> = obs
                .map(|t| {
                    t.containers
                        .iter()
                        .map(|c| {
                            let (status, exit_code) = container_status(&c.state);
                            ContainerStateChange {
                                container_name: c.name_in_task().to_string(),
                                runtime_id: Some(c.id.clone()),
                                status,
                                exit_code,
                                reason: c.oom_killed.then(|| "OutOfMemoryError: container killed for exceeding its memory limit".to_string()),
                                network_bindings: c
                                    .ports
                                    .iter()
                                    .map(|(cp, proto, hp)| NetworkBinding {
                                        bind_ip: Some(self.cfg.port_bind_address.to_string()),
                                        container_port: *cp,
                                        host_port: *hp,
                                        protocol: proto.clone(),
                                    })
                                    .collect(),
                                health_status: health_of(c.health),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let fingerprint = Published {
                service: rec.service.clone(),
                revision: rec.revision,
                status,
                desired,
                health,
                containers: containers
                    .iter()
                    .map(|c| {
                        (
                            c.container_name.clone(),
                            c.status,
                            c.exit_code,
                            c.health_status,
                        )
                    })
                    .collect(),
            };
            if self.published.get(id) == Some(&fingerprint) {
                continue;
            }
            self.published.insert(id.clone(), fingerprint);
            let stopping = status == TaskStatus::Stopped || desired == TaskStatus::Stopped;
            self.changes.push(Change {
                service: rec.service.clone(),
                task_id: id.clone(),
                revision: rec.revision,
                desired,
                report: TaskStateChange {
                    sequence: 0,
                    task: crate::status::task_arn(&self.cfg.cluster, id),
                    status,
                    reason: if stopping {
                        rec.stop_reason.clone()
                    } else {
                        None
                    },
                    stop_code: stopping.then(|| stop_code(rec)),
                    health_status: health,
                    containers,
                    at_ms: now,
                    engine_failure: stopping
                        && rec
                            .stop_reason
                            .as_deref()
                            .is_some_and(|r| r.contains("container engine went away")),
                },
            });
        }
        // Tasks forgotten since the last pass: their containers are gone.
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            let Some(last) = self.published.remove(&id) else {
                continue;
            };
            if last.status == TaskStatus::Stopped {
                continue;
            }
            let reason = "the task's containers are gone".to_string();
            self.push_end(&id, last.service, last.revision, reason, None, now);
        }
    }
}
