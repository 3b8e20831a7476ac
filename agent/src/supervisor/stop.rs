//! Tasks that end: adopting what the engine has and the store does not,
//! failing tasks whose essential container died, restarting containers in
//! place (ECS `restartPolicy`, and any crash while desired state is
//! unknown), and the drain sequence: out of rotation, in-flight requests
//! finish, SIGTERM, timeout, SIGKILL, removal.

use super::{short, OpDone, OpKind, Supervisor};
use crate::clock::ms_of;
use crate::containers::label;
use crate::engine::{Engine, RunState};
use crate::router::Router;
use crate::store::{DesiredStatus, TaskRecord};
use crate::task::TaskObs;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

impl<E: Engine, R: Router> Supervisor<E, R> {
    /// The tasks with desired status `desired`, no op in flight, and
    /// containers in the engine.
    fn tasks_wanting<'a>(
        &'a self,
        desired: DesiredStatus,
        tasks: &'a BTreeMap<String, TaskObs>,
    ) -> impl Iterator<Item = (&'a String, &'a TaskRecord, &'a TaskObs)> + 'a {
        self.store.state.tasks.iter().filter_map(move |(id, rec)| {
            if rec.desired != desired || self.inflight.contains_key(id) {
                return None;
            }
            Some((id, rec, tasks.get(id)?))
        })
    }

    /// Tasks the engine has that the store does not are adopted (a state
    /// file lost, or from an older agent); records of tasks the engine no
    /// longer has are dropped.
    pub(super) fn adopt_and_forget(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        for (id, t) in tasks {
            if self.store.state.tasks.contains_key(id) {
                continue;
            }
            let Some(service) = t.label(label::SERVICE) else {
                continue;
            };
            let dead = t.failed_essential().is_some();
            tracing::info!(task = %id, service, "adopting task found in the engine");
            let now = self.now_ms();
            self.store.state.tasks.insert(
                id.clone(),
                TaskRecord {
                    service: service.to_string(),
                    family: t.label(label::ECS_FAMILY).unwrap_or("").to_string(),
                    revision: t
                        .label(label::REVISION)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    digest: t.label(label::DIGEST).unwrap_or("").to_string(),
                    desired: if dead {
                        DesiredStatus::Stopped
                    } else {
                        DesiredStatus::Running
                    },
                    stop_reason: t.failure_reason(),
                    remove_when_stopped: false,
                    crash_counted: dead,
                    created_at_ms: t.started_at().map_or(now, ms_of),
                    restarts: BTreeMap::new(),
                },
            );
        }
        let inflight = &self.inflight;
        let router = &self.router;
        let ended = &mut self.ended;
        let managed = self.desired.managed.is_some();
        let mut dropped = Vec::new();
        self.store.state.tasks.retain(|id, rec| {
            let keep = tasks.contains_key(id) || inflight.contains_key(id);
            if !keep {
                router.remove_task(id);
                if managed {
                    ended.insert(id.clone());
                }
                dropped.push((id.clone(), rec.clone()));
            }
            keep
        });
        for (id, rec) in dropped {
            self.publish_forgotten(&id, &rec);
        }
    }

    /// A running task whose essential container exited is failed: counted
    /// toward crash backoff once, and its other containers stopped.
    pub(super) fn fail_dead_tasks(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        self.restart_in_place(tasks);
        let mut failed = Vec::new();
        for (id, rec, t) in self.tasks_wanting(DesiredStatus::Running, tasks) {
            if t.failure_reason().is_none() && t.has_unstarted() {
                // Created and never started, and no launch of this agent
                // is running it: an agent stopped mid-launch left it, and
                // nothing would ever start it. Replaced, not blamed on
                // the revision.
                failed.push((
                    id.clone(),
                    rec.service.clone(),
                    "its launch was interrupted (containers created, never started: the agent stopped mid-launch); replaced, not counted as a failure".to_string(),
                    None,
                    true,
                ));
                continue;
            }
            if let Some(mut reason) = t.failure_reason() {
                let finished = t.failed_essential().and_then(|c| match c.state {
                    RunState::Exited { finished_at, .. } => finished_at,
                    _ => None,
                });
                let with_engine = self.died_with_engine(finished);
                if with_engine {
                    reason = format!("{reason} when the container engine went away; replaced, not counted as a failure");
                } else if let Some(Err(why_not)) =
                    t.failed_essential().and_then(|c| c.restart_decision())
                {
                    reason = format!("{reason}; not restarted in place: {why_not}");
                }
                let ran_for = t.started_at().map(|s| self.age(s));
                failed.push((
                    id.clone(),
                    rec.service.clone(),
                    reason,
                    ran_for,
                    with_engine,
                ));
            }
        }
        for (id, service, reason, ran_for, with_engine) in failed {
            // Nothing to drain: the task is dead. Out of rotation at once.
            self.router.remove_task(&id);
            if let Some(rec) = self.store.state.tasks.get_mut(&id) {
                rec.desired = DesiredStatus::Stopped;
                rec.stop_reason = Some(reason.clone());
                rec.crash_counted = true;
            }
            if with_engine {
                // The engine's fault, not the task's or its revision's: no
                // backoff, no circuit breaker. It is replaced like a crash.
                self.event(&service, format!("task {} stopped: {reason}", short(&id)));
                continue;
            }
            self.record_failure(&service, ran_for, &id, &reason);
            let failures = self
                .store
                .state
                .services
                .get(&service)
                .map_or(0, |s| s.consecutive_failures);
            self.event(
                &service,
                format!(
                    "task {} stopped: {reason} ({failures} consecutive failure(s))",
                    short(&id)
                ),
            );
        }
    }

    /// ECS `restartPolicy`: containers that exited and whose policy allows
    /// it are started again in place (same container, same ports); the
    /// task is not failed for them.
    fn restart_in_place(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        let mut restarts = Vec::new();
        for (id, rec, t) in self.tasks_wanting(DesiredStatus::Running, tasks) {
            // An essential container exiting without a restart fails the
            // task; then nothing of it is restarted.
            let essential_fails = t.containers.iter().any(|c| {
                c.is_essential()
                    && matches!(c.state, RunState::Exited { .. })
                    && !matches!(c.restart_decision(), Some(Ok(())))
            });
            if essential_fails {
                continue;
            }
            for c in &t.containers {
                if let Some(Ok(())) = c.restart_decision() {
                    let code = match c.state {
                        RunState::Exited { code, .. } => code,
                        _ => 0,
                    };
                    restarts.push((
                        id.clone(),
                        rec.service.clone(),
                        c.id.clone(),
                        c.name_in_task().to_string(),
                        code,
                    ));
                }
            }
        }
        self.spawn_restarts(restarts, "restarted in place");
    }

    /// Desired state unknown: a task whose essential container exited is
    /// not failed (that would start a replacement, and nothing new starts
    /// without word from the source); its exited containers are started
    /// again in place, with the service's crash backoff.
    pub(super) fn restart_crashed_in_place(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        let mut restarts = Vec::new();
        let mut crashed_services = Vec::new();
        let mut wait = None;
        for (id, rec, t) in self.tasks_wanting(DesiredStatus::Running, tasks) {
            if t.failed_essential().is_none() {
                continue;
            }
            if let Some(left) = self.backoff_left(&rec.service) {
                wait = Some(wait.map_or(left, |w: Duration| w.min(left)));
                continue;
            }
            crashed_services.push((rec.service.clone(), t.started_at().map(|s| self.age(s))));
            for c in &t.containers {
                if let RunState::Exited { code, .. } = c.state {
                    restarts.push((
                        id.clone(),
                        rec.service.clone(),
                        c.id.clone(),
                        c.name_in_task().to_string(),
                        code,
                    ));
                }
            }
        }
        if let Some(w) = wait {
            self.wake_in(w);
        }
        for (service, ran_for) in crashed_services {
            self.count_crash(&service, ran_for);
        }
        self.spawn_restarts(
            restarts,
            "restarted in place (desired state unknown: no replacement is started)",
        );
    }

    /// Starts exited containers again, one op per task.
    fn spawn_restarts(&mut self, restarts: Vec<(String, String, String, String, i64)>, how: &str) {
        let mut by_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (task, service, container_id, name, code) in restarts {
            let n = self.store.state.tasks.get_mut(&task).map_or(0, |r| {
                let n = r.restarts.entry(name.clone()).or_default();
                *n = n.saturating_add(1);
                *n
            });
            self.event(
                &service,
                format!(
                    "task {}: container {name} exited with code {code}; {how} (restart {n})",
                    short(&task)
                ),
            );
            by_task.entry(task).or_default().push(container_id);
        }
        for (task, ids) in by_task {
            let engine = self.engine.clone();
            self.inflight.insert(task.clone(), OpKind::Launch);
            self.ops.spawn(async move {
                let mut result = Ok(());
                for id in ids {
                    if let Err(e) = engine.start(&id).await {
                        result = Err(format!("restart container in place: {e}"));
                        break;
                    }
                }
                OpDone {
                    task,
                    kind: OpKind::Launch,
                    result,
                }
            });
        }
    }

    /// Tasks the agent wants stopped: stops (after the pass's save) what
    /// still runs, removes what should go, and cleans up failed tasks after
    /// the cleanup wait.
    pub(super) fn drive_stops(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        let cleanup_wait = self.cfg.task_cleanup_wait;
        let mut to_stop = Vec::new();
        let mut wake = None;
        for (id, rec, t) in self.tasks_wanting(DesiredStatus::Stopped, tasks) {
            let alive = t.any_alive() || t.has_unstarted();
            if alive || rec.remove_when_stopped {
                to_stop.push((id.clone(), rec.remove_when_stopped));
            } else if let Some(finished) = t.finished_at() {
                let age = self.age(finished);
                if age >= cleanup_wait {
                    to_stop.push((id.clone(), true));
                } else {
                    let left = cleanup_wait - age;
                    wake = Some(wake.map_or(left, |w: Duration| w.min(left)));
                }
            }
        }
        if let Some(w) = wake {
            self.wake_in(w);
        }
        self.stops_due.extend(to_stop);
    }

    /// Starts the stops this pass decided. Called after the pass saved the
    /// state: an agent killed between a container's signal and the save
    /// would leave a state that still wants the task running, and the next
    /// agent would take the exit for a crash (counted as a failure, its
    /// container kept beside the desired count).
    pub(super) fn spawn_due_stops(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        for (id, remove) in std::mem::take(&mut self.stops_due) {
            if self.inflight.contains_key(&id) {
                // A launch in flight is left to finish; the next pass
                // stops the task (drive_stops).
                continue;
            }
            if let Some(t) = tasks.get(&id) {
                self.spawn_stop(&id, t, remove);
            }
        }
    }

    fn spawn_stop(&mut self, id: &str, t: &TaskObs, remove: bool) {
        let default_timeout = self.cfg.container_stop_timeout;
        // A container never started holds its name and ports and has
        // nothing to inspect: it goes even when the task's containers are
        // kept (otherwise it would be "stopped" on every pass, for ever).
        let mut containers: Vec<StopOne> = t
            .containers
            .iter()
            .map(|c| StopOne {
                id: c.id.clone(),
                timeout: c.stop_timeout(default_timeout),
                order: c.start_order(),
                remove: remove || c.state == RunState::Created,
            })
            .collect();
        // Dependents first: reverse start order.
        containers.sort_by_key(|c| std::cmp::Reverse(c.order));
        let engine = self.engine.clone();
        let task = id.to_string();
        // Out of rotation now; the op waits for in-flight requests before
        // SIGTERM (DESIGN.md's stop order).
        let drain = self.router.drain(id);
        self.inflight.insert(task.clone(), OpKind::Stop);
        self.ops.spawn(async move {
            let started = Instant::now();
            let left = drain.await;
            let waited = started.elapsed();
            if waited > Duration::from_millis(5) || left > 0 {
                tracing::info!(task = %task, waited_ms = waited.as_millis() as u64, in_flight_left = left, "drained");
            }
            let result = stop_task(&engine, &containers).await;
            OpDone {
                task,
                kind: OpKind::Stop,
                result,
            }
        });
    }

    /// Marks a task stopped (the pass's save records it) and takes it out
    /// of rotation; [`Self::spawn_due_stops`] stops its containers after
    /// the save.
    pub(super) fn request_stop(&mut self, id: &str, why: &str, remove: bool) {
        let Some(rec) = self.store.state.tasks.get_mut(id) else {
            return;
        };
        rec.desired = DesiredStatus::Stopped;
        rec.remove_when_stopped = remove;
        rec.stop_reason = Some(why.to_string());
        let service = rec.service.clone();
        self.event(&service, format!("stopping task {}: {why}", short(id)));
        // Out of rotation now, even while a launch is in flight.
        drop(self.router.drain(id));
        self.stops_due.insert(id.to_string(), remove);
    }
}

/// One container of a task being stopped.
struct StopOne {
    id: String,
    timeout: Duration,
    order: u32,
    remove: bool,
}

/// Stops containers in the order given, then removes those to remove.
async fn stop_task<E: Engine>(engine: &E, containers: &[StopOne]) -> Result<(), String> {
    for c in containers {
        engine
            .stop(&c.id, c.timeout)
            .await
            .map_err(|e| format!("stop {}: {e}", c.id))?;
    }
    for c in containers.iter().filter(|c| c.remove) {
        engine
            .remove(&c.id)
            .await
            .map_err(|e| format!("remove {}: {e}", c.id))?;
    }
    Ok(())
}
