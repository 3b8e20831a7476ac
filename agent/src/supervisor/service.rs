//! One service, one step: which spec it runs (circuit breaker), where its
//! routes go, which tasks to start and stop (`rollout::plan`), crash
//! backoff, and tasks that never pass their health checks.

use super::{short, Supervisor, BACKOFF_RESET_AFTER};
use crate::clock::ms_of;
use crate::containers::label;
use crate::engine::Engine;
use crate::router::Router;
use crate::store::DesiredStatus;
use crate::task::{KnownStatus, TaskObs};
use dockhand_model::rollout::{self, TaskView};
use dockhand_model::taskdef::NetworkMode;
use dockhand_model::ServiceSpec;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// How long a new task of a routed service may run without passing its
/// checks before it is failed: the grace period, then enough intervals for
/// the healthy threshold plus the unhealthy threshold, plus one timeout.
/// Counted from when the task is seen running, so a slow pull or start does
/// not use it up.
pub(super) fn health_deadline(spec: &ServiceSpec) -> Option<Duration> {
    spec.routes()
        .iter()
        .map(|r| {
            let c = &r.health_check;
            let checks = c.healthy_threshold + c.unhealthy_threshold;
            r.grace + c.interval * checks + c.timeout
        })
        .max()
}

impl<E: Engine, R: Router> Supervisor<E, R> {
    /// The spec a service should run now: the desired one, its last good
    /// one while its definition is invalid, or `None` when it was removed.
    fn spec_of(&mut self, name: &str) -> Result<Option<ServiceSpec>, ()> {
        if let Some(spec) = self.desired.services.get(name).cloned() {
            let rec = self.service_record(name);
            if rec.last_good.as_ref() != Some(&spec) {
                rec.last_good = Some(spec.clone());
            }
            return Ok(Some(spec));
        }
        if self.desired.broken.contains_key(name) {
            let last = self
                .store
                .state
                .services
                .get(name)
                .and_then(|r| r.last_good.clone());
            if last.is_none() {
                self.pending_reason.insert(
                    name.to_string(),
                    "service file is invalid and no earlier version is known; its tasks are left as they are".into(),
                );
                return Err(());
            }
            return Ok(last);
        }
        Ok(None)
    }

    pub(super) fn reconcile_service(&mut self, name: &str, tasks: &BTreeMap<String, TaskObs>) {
        let Ok(spec) = self.spec_of(name) else { return };
        let Some(spec) = spec else {
            // The service was removed: stop and remove all its tasks.
            let ids: Vec<String> = self
                .store
                .state
                .tasks
                .iter()
                .filter(|(_, r)| r.service == name && r.desired == DesiredStatus::Running)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                self.request_stop(&id, "service removed", true);
            }
            self.router.set_routes(name, &[]);
            self.pending_reason.remove(name);
            return;
        };
        let spec = self.effective_spec(name, spec);
        self.route(&spec, tasks);
        if !spec.load_balancers.is_empty() && self.ready.is_some() {
            // Just started: the tasks found running have not had their
            // first health check, so "not healthy" only means "not known
            // yet". A plan now would stop serving tasks as unhealthy (and
            // start others in their place); it waits for those checks
            // (at most READY_WAIT).
            return;
        }

        let digest = spec.task_definition.digest();
        let revision = self
            .store
            .state
            .revision_of(&spec.task_definition.family, &digest);
        let views = self.views(&spec, &digest, tasks);
        self.fail_unproven(&spec, &views);

        let dc = &spec.deployment_configuration;
        let plan = rollout::plan(
            spec.wanted_tasks(),
            dc.minimum_healthy_percent.clamp(0, 100) as u32,
            dc.maximum_percent.clamp(100, 1000) as u32,
            &views,
        );
        if !plan.stop.is_empty() || plan.start > 0 {
            tracing::debug!(service = name, ?views, ?plan, "rollout plan");
        }
        for (id, why) in &plan.stop {
            self.request_stop(id, why, true);
        }

        let mut reason = plan.waiting.clone();
        if plan.start > 0 {
            let rec = self
                .store
                .state
                .services
                .get(name)
                .cloned()
                .unwrap_or_default();
            if let Some(wait) = self.backoff_left(name) {
                reason = Some(format!(
                    "restart backoff after {} consecutive failure(s): next start in {:.1}s; last failure: {}",
                    rec.consecutive_failures,
                    wait.as_secs_f64(),
                    rec.last_failure.as_deref().unwrap_or("unknown")
                ));
                self.wake_in(wait);
            } else {
                for _ in 0..plan.start {
                    if let Err(why) = self.start_task(&spec, revision, &digest, tasks) {
                        if self.pending_reason.get(name) != Some(&why) {
                            self.event(name, format!("cannot start a task: {why}"));
                        }
                        reason = Some(why);
                        break;
                    }
                }
            }
        }
        let settled = plan.stop.is_empty()
            && plan.start == 0
            && views.iter().all(|v| v.current && !v.stopping)
            && views.iter().filter(|v| v.healthy).count() >= spec.wanted_tasks() as usize;
        if settled {
            let rec = self.service_record(name);
            if rec.stable.as_ref() != Some(&spec) {
                rec.stable = Some(spec.clone());
                if rec.failed_digest.as_deref() == Some(digest.as_str()) {
                    rec.failed_digest = None;
                    rec.failed_reason = None;
                }
            }
        }
        match reason {
            Some(r) => {
                self.pending_reason.insert(name.to_string(), r);
            }
            None => {
                // Keep a launch failure visible until a task runs again.
                let running = views.iter().any(|v| v.current && v.healthy);
                if running || plan.start == 0 && views.iter().all(|v| v.current) {
                    self.pending_reason.remove(name);
                }
            }
        }
    }

    /// Desired state unknown: keep the service's routes and backends (from
    /// the last known spec) and decide nothing else.
    pub(super) fn hold_service(&mut self, name: &str, tasks: &BTreeMap<String, TaskObs>) {
        if let Some(spec) = self.current_spec(name) {
            self.route(&spec, tasks);
        }
        self.pending_reason.insert(
            name.to_string(),
            "desired state unknown (services directory missing or control endpoint not answering): tasks are held as they are".into(),
        );
    }

    /// The spec a service runs now, as far as the agent knows: the desired
    /// one or the last good one, after any rollback.
    pub(super) fn current_spec(&self, name: &str) -> Option<ServiceSpec> {
        let record = self.store.state.services.get(name);
        self.desired
            .services
            .get(name)
            .or_else(|| record.and_then(|r| r.last_good.as_ref()))
            .map(|s| record.map_or(s, |r| r.runs(s)).clone())
    }

    /// The service's tasks as the planner sees them.
    fn views(
        &mut self,
        spec: &ServiceSpec,
        digest: &str,
        tasks: &BTreeMap<String, TaskObs>,
    ) -> Vec<TaskView> {
        let name = &spec.service_name;
        let views: Vec<TaskView> = self
            .store
            .state
            .tasks
            .iter()
            .filter(|(_, r)| &r.service == name)
            .filter_map(|(id, r)| {
                let obs = tasks.get(id);
                let stopping = r.desired == DesiredStatus::Stopped;
                if stopping && !obs.is_some_and(TaskObs::any_alive) {
                    return None;
                }
                let routed_ok =
                    spec.load_balancers.is_empty() || self.router.task_health(id) == Some(true);
                Some(TaskView {
                    id: id.clone(),
                    current: r.digest == digest,
                    healthy: !stopping && routed_ok && obs.is_some_and(TaskObs::healthy),
                    stopping,
                    // The engine's start time orders "longest running" best;
                    // the record's time covers tasks not started yet.
                    created_at_ms: obs
                        .and_then(TaskObs::started_at)
                        .map_or(r.created_at_ms, ms_of),
                })
            })
            .collect();
        let now = Instant::now();
        for v in &views {
            if v.healthy {
                self.ever_healthy.insert(v.id.clone());
            }
            if tasks
                .get(&v.id)
                .is_some_and(|t| t.known_status() == KnownStatus::Running)
            {
                self.running_since.entry(v.id.clone()).or_insert(now);
            }
        }
        views
    }

    /// Fails the new tasks of a routed service that have been running past
    /// their health deadline without ever passing their checks.
    fn fail_unproven(&mut self, spec: &ServiceSpec, views: &[TaskView]) {
        let Some(deadline) = health_deadline(spec) else {
            return;
        };
        let unproven =
            |v: &&TaskView| !v.healthy && !v.stopping && !self.ever_healthy.contains(&v.id);
        let mut doomed = Vec::new();
        let mut next: Option<Duration> = None;
        for v in views.iter().filter(unproven) {
            let Some(since) = self.running_since.get(&v.id) else {
                continue;
            };
            let running = since.elapsed();
            match deadline.checked_sub(running) {
                Some(left) if !left.is_zero() => next = Some(next.map_or(left, |n| n.min(left))),
                _ => doomed.push((v.id.clone(), running.as_secs())),
            }
        }
        // Wake when the next unproven task reaches its deadline.
        if let Some(left) = next {
            self.wake_in(left + Duration::from_millis(10));
        }
        for (id, secs) in doomed {
            let why = match self.router.task_failure(&id) {
                Some(f) => format!("never passed its health checks in {secs}s (last: {f})"),
                None => format!("never passed its health checks in {secs}s"),
            };
            self.fail_task(&id, &why);
        }
    }

    /// The spec to run: the desired one, unless its revision's rollout
    /// failed, then the last stable one (ECS's circuit breaker with
    /// rollback).
    fn effective_spec(&mut self, name: &str, spec: ServiceSpec) -> ServiceSpec {
        let digest = spec.task_definition.digest();
        let rec = self.service_record(name);
        if rec.rollout_digest.as_deref() != Some(digest.as_str()) {
            rec.rollout_digest = Some(digest.clone());
            rec.rollout_failures = 0;
        }
        rec.runs(&spec).clone()
    }

    /// Counts one crash toward `service`'s backoff: the next start is
    /// allowed after [`super::backoff`] of the consecutive failures. The
    /// deadline is kept on the monotonic clock (a wall clock stepped back
    /// must not stall a service for an hour) and, for a restarted agent, in
    /// `state.json` as wall time.
    pub(super) fn count_crash(&mut self, service: &str, ran_for: Option<Duration>) {
        let now = self.now_ms();
        let rec = self.service_record(service);
        if ran_for.is_some_and(|d| d >= BACKOFF_RESET_AFTER) {
            rec.consecutive_failures = 0;
        }
        rec.consecutive_failures = rec.consecutive_failures.saturating_add(1);
        rec.total_failures = rec.total_failures.saturating_add(1);
        let delay = super::backoff(rec.consecutive_failures);
        rec.next_start_at_ms = now.saturating_add(delay.as_millis() as u64);
        self.next_start
            .insert(service.to_string(), Instant::now() + delay);
    }

    /// How long until `service` may start a task again, if it must wait.
    pub(super) fn backoff_left(&self, service: &str) -> Option<Duration> {
        if let Some(at) = self.next_start.get(service) {
            return Some(at.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero());
        }
        // Set by an earlier agent process: wall time, never trusted for
        // longer than the cap (the clock may have been stepped since).
        let rec = self.store.state.services.get(service)?;
        let left = rec.next_start_at_ms.checked_sub(self.now_ms())?;
        Some(Duration::from_millis(left).min(super::MAX_BACKOFF)).filter(|d| !d.is_zero())
    }

    /// Counts a failed task toward crash backoff and, when it belongs to a
    /// revision being rolled out, toward that rollout's circuit breaker.
    pub(super) fn record_failure(
        &mut self,
        service: &str,
        ran_for: Option<Duration>,
        task: &str,
        reason: &str,
    ) {
        let digest = self
            .store
            .state
            .tasks
            .get(task)
            .map(|t| t.digest.clone())
            .unwrap_or_default();
        let revisions = self.store.state.revisions.clone();
        self.count_crash(service, ran_for);
        let rec = self.service_record(service);
        rec.last_failure = Some(reason.to_string());

        let Some(stable) = rec.stable.clone() else {
            return; // A first deployment has nothing to go back to.
        };
        let stable_digest = stable.task_definition.digest();
        if rec.rollout_digest.as_deref() != Some(digest.as_str()) || digest == stable_digest {
            return;
        }
        rec.rollout_failures = rec.rollout_failures.saturating_add(1);
        // ECS's deployment circuit breaker threshold: half the desired
        // count, at least 3, at most 200.
        let wanted = rec.last_good.as_ref().map_or(1, ServiceSpec::wanted_tasks);
        let threshold = wanted.div_ceil(2).clamp(3, 200);
        if rec.rollout_failures >= threshold
            && rec.failed_digest.as_deref() != Some(digest.as_str())
        {
            let rev = |d: &str| {
                revisions
                    .get(&stable.task_definition.family)
                    .and_then(|l| l.iter().position(|x| x == d))
                    .map_or(0, |i| i + 1)
            };
            let why = format!(
                "deployment of revision {} failed: {} task(s) failed (last: {reason}); rolled back to revision {}",
                rev(&digest),
                rec.rollout_failures,
                rev(&stable_digest)
            );
            rec.failed_digest = Some(digest);
            rec.failed_reason = Some(why.clone());
            rec.consecutive_failures = 0;
            rec.next_start_at_ms = 0;
            self.next_start.remove(service);
            self.event(service, why);
        }
    }

    /// Declares the service's routes and registers every running task's
    /// published ports on them.
    pub(super) fn route(&mut self, spec: &ServiceSpec, tasks: &BTreeMap<String, TaskObs>) {
        let name = &spec.service_name;
        self.router.set_routes(name, &spec.routes());
        if spec.load_balancers.is_empty() {
            return;
        }
        let host_network = spec.task_definition.network_mode == NetworkMode::Host;
        let ip = if self.cfg.port_bind_address.is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            self.cfg.port_bind_address
        };
        for (id, rec) in &self.store.state.tasks {
            if &rec.service != name || rec.desired != DesiredStatus::Running {
                continue;
            }
            let Some(t) = tasks.get(id) else { continue };
            if t.known_status() != KnownStatus::Running {
                continue;
            }
            for (i, lb) in spec.load_balancers.iter().enumerate() {
                let Some(c) = t
                    .containers
                    .iter()
                    .find(|c| c.label(label::CONTAINER) == Some(lb.container_name.as_str()))
                else {
                    continue;
                };
                let port = if host_network {
                    u16::try_from(lb.container_port).ok()
                } else {
                    c.ports
                        .iter()
                        .find(|(cp, proto, _)| {
                            i64::from(*cp) == lb.container_port && proto == "tcp"
                        })
                        .map(|p| p.2)
                };
                if let Some(port) = port {
                    let adopted = !self.launched_here.contains(id);
                    self.router.add_backend(
                        name,
                        i,
                        id,
                        std::net::SocketAddr::new(ip, port),
                        adopted,
                    );
                }
            }
        }
    }

    /// Fails a running task (counted like a crash) and stops it, keeping its
    /// containers for inspection.
    pub(super) fn fail_task(&mut self, id: &str, why: &str) {
        let Some(service) = self.store.state.tasks.get(id).map(|r| r.service.clone()) else {
            return;
        };
        self.record_failure(&service, None, id, why);
        if let Some(rec) = self.store.state.tasks.get_mut(id) {
            rec.crash_counted = true;
        }
        tracing::debug!(task = short(id), "failing task");
        self.request_stop(id, why, false);
    }
}
