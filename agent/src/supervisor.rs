//! The reconcile loop: desired state against what Docker says runs.
//!
//! ```text
//!  Docker events ──┐   (subscribed before the first reconcile, re-opened
//!  service files ──┤    with backoff; a periodic pass is the safety net)
//!  ops finished ───┤
//!  timers ─────────┴──► reconcile ──► observe (list + inspect by label)
//!                            │        adopt unknown tasks, fail dead ones
//!                            │        per service: rollout::plan
//!                            ├──► launch ops (create, start in dependsOn order)
//!                            ├──► stop ops   (SIGTERM, timeout, SIGKILL, remove)
//!                            └──► status snapshot for the local API
//! ```
//!
//! Actual state is always read from Docker, never only from memory, so a
//! restarted agent adopts what runs instead of duplicating it. Launches and
//! stops run as separate tasks owned by the loop, so a 30 s stop timeout
//! never holds up reacting to a crash elsewhere. Nothing here stops
//! containers on shutdown: dropping the loop leaves them running.

use crate::config::{Config, PullBehavior};
use crate::desired::{Desired, DesiredSource};
use crate::docker::{self, label, HostCapacity};
use crate::ports::{check_fit, PortAllocator};
use crate::rollout::{self, TaskView};
use crate::status::{Event, ServiceStatus, Snapshot, TaskStatus};
use crate::store::{random_hex, DesiredStatus, ServiceRecord, Store, TaskRecord};
use crate::task::{self, TaskObs};
use crate::taskdef::{DependencyCondition, ServiceSpec};
use bollard::Docker;
use dockhand_proxy::{HealthEvent, Proxy};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A full reconcile runs at least this often, for events Docker lost.
const SAFETY_NET_INTERVAL: Duration = Duration::from_secs(30);
/// A pass that cannot list containers within this gives up and retries,
/// so a hung Docker cannot wedge the loop (and starve the watchdog).
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the desired-state source is asked for changes.
const SOURCE_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// First crash replacement is immediate, then 1 s doubling to this cap.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A task that ran this long resets its service's crash backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// How many events each service keeps for status.
const EVENTS_PER_SERVICE: usize = 50;
/// How often a launch polls a dependency's state while waiting on it.
const DEPENDENCY_POLL: Duration = Duration::from_millis(200);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The delay before replacing a task after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(20)).min(MAX_BACKOFF),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Launch,
    Stop,
}

struct OpDone {
    task: String,
    kind: OpKind,
    result: Result<(), String>,
}

/// One container ready to be created by a launch op.
struct Prepared {
    name_in_task: String,
    docker_name: String,
    image: String,
    body: bollard::models::ContainerCreateBody,
    depends_on: Vec<(String, DependencyCondition)>,
}

pub struct Supervisor<S> {
    cfg: Arc<Config>,
    docker: Docker,
    store: Store,
    source: S,
    desired: Desired,
    capacity: HostCapacity,
    ports: PortAllocator,
    ops: JoinSet<OpDone>,
    inflight: HashMap<String, OpKind>,
    /// Host ports granted to launches that have not shown up in Docker yet.
    granted: HashMap<String, BTreeSet<u16>>,
    pending_reason: BTreeMap<String, String>,
    events: BTreeMap<String, VecDeque<Event>>,
    status: Arc<RwLock<Snapshot>>,
    wake_at: Option<Instant>,
    proxy: Proxy,
    health_events: mpsc::UnboundedReceiver<HealthEvent>,
    /// Tasks this agent process launched; the others were adopted, and
    /// their backends need one passing check instead of the threshold.
    launched_here: HashSet<String>,
    /// Tasks seen healthy at least once; the others may be failed for
    /// never passing their checks.
    ever_healthy: HashSet<String>,
    /// When this agent process first saw each task: an adopted task's
    /// health deadline runs from here, not from when it started.
    first_seen: HashMap<String, Instant>,
    /// Images of this agent's containers at the last pass.
    images_seen: BTreeSet<String>,
    /// The last STATUS= line sent to systemd.
    last_status_line: String,
    /// Fired once the first reconcile is done and every backend has been
    /// checked once, so listeners open onto a table with healthy backends.
    ready: Option<(tokio::sync::oneshot::Sender<()>, Instant)>,
}

/// How long the agent waits at start for first health checks before it
/// serves anyway.
const READY_WAIT: Duration = Duration::from_secs(5);

impl<S: DesiredSource> Supervisor<S> {
    #[allow(clippy::too_many_arguments)] // each is a distinct owned part
    pub fn new(
        cfg: Arc<Config>,
        docker: Docker,
        store: Store,
        source: S,
        capacity: HostCapacity,
        status: Arc<RwLock<Snapshot>>,
        proxy: Proxy,
        health_events: mpsc::UnboundedReceiver<HealthEvent>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) -> Self {
        let ports = PortAllocator::new(
            cfg.dynamic_port_range,
            &cfg.reserved_ports,
            cfg.port_bind_address,
        );
        Supervisor {
            cfg,
            docker,
            store,
            source,
            desired: Desired::default(),
            capacity,
            ports,
            ops: JoinSet::new(),
            inflight: HashMap::new(),
            granted: HashMap::new(),
            pending_reason: BTreeMap::new(),
            events: BTreeMap::new(),
            status,
            wake_at: None,
            proxy,
            health_events,
            launched_here: HashSet::new(),
            ever_healthy: HashSet::new(),
            first_seen: HashMap::new(),
            last_status_line: String::new(),
            images_seen: BTreeSet::new(),
            ready: Some((ready, Instant::now() + READY_WAIT)),
        }
    }

    /// Runs until `shutdown` resolves. Containers are left running.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (event_tx, mut event_rx) = mpsc::channel::<()>(64);
        // Subscribe first: events from now on are delivered even if they
        // happen during the first reconcile.
        let since = SystemTime::now();
        let forwarder = tokio::spawn(forward_events(
            self.docker.clone(),
            self.store.state.instance_id.clone(),
            since,
            event_tx,
        ));
        let mut poll = tokio::time::interval(SOURCE_POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut safety_net = Instant::now() + SAFETY_NET_INTERVAL;
        let mut image_cleanup = (!self.cfg.image_cleanup.disabled).then(|| {
            let every = self.cfg.image_cleanup.interval;
            let mut i = tokio::time::interval_at(Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        // The watchdog is kicked from this loop, so a wedged loop (not just
        // a dead process) gets the agent restarted.
        let mut watchdog = crate::notify::watchdog_interval().map(|every| {
            let mut i = tokio::time::interval(every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut dirty = true;

        loop {
            if let Some(d) = self.source.poll() {
                if d != self.desired {
                    self.desired = d;
                    dirty = true;
                }
            }
            if dirty {
                dirty = false;
                safety_net = Instant::now() + SAFETY_NET_INTERVAL;
                self.reconcile().await;
            }
            let wake = self.wake_at.map_or(safety_net, |w| w.min(safety_net));
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = event_rx.recv() => {
                    // Coalesce a burst of events into one pass.
                    while event_rx.try_recv().is_ok() {}
                    dirty = true;
                }
                Some(done) = self.ops.join_next(), if !self.ops.is_empty() => {
                    match done {
                        Ok(done) => self.op_finished(done),
                        Err(e) => tracing::error!(cause = %e, "supervisor op panicked or was cancelled"),
                    }
                    dirty = true;
                }
                Some(ev) = self.health_events.recv() => {
                    self.health_event(ev);
                    while let Ok(ev) = self.health_events.try_recv() {
                        self.health_event(ev);
                    }
                    dirty = true;
                }
                _ = poll.tick() => {}
                _ = async { image_cleanup.as_mut()?.tick().await; Some(()) }, if image_cleanup.is_some() => {
                    self.clean_images().await;
                }
                _ = async { watchdog.as_mut()?.tick().await; Some(()) }, if watchdog.is_some() => {
                    crate::notify::watchdog();
                }
                _ = tokio::time::sleep_until(wake) => {
                    self.wake_at = None;
                    dirty = true;
                }
            }
        }
        forwarder.abort();
        // Dropping the JoinSet aborts in-flight ops; what they left half
        // done is seen and finished by the next agent.
        self.ops.abort_all();
        if let Err(e) = self.store.save() {
            tracing::error!(cause = %e, "saving state at shutdown failed");
        }
        tracing::info!("supervisor stopped; containers left running");
    }

    fn op_finished(&mut self, done: OpDone) {
        self.inflight.remove(&done.task);
        self.granted.remove(&done.task);
        let Err(why) = done.result else { return };
        let Some(rec) = self.store.state.tasks.get_mut(&done.task) else {
            return;
        };
        let service = rec.service.clone();
        match done.kind {
            OpKind::Launch => {
                rec.desired = DesiredStatus::Stopped;
                rec.stop_reason = Some(format!("failed to start: {why}"));
                rec.crash_counted = true;
                self.event(
                    &service,
                    format!("task {} failed to start: {why}", short(&done.task)),
                );
                self.pending_reason
                    .insert(service.clone(), format!("last task failed to start: {why}"));
                self.record_failure(&service, None, &done.task, &why);
            }
            OpKind::Stop => {
                crate::metrics::docker_error();
                tracing::warn!(task = %done.task, cause = %why, "stopping task failed; will retry");
            }
        }
        self.save();
    }

    fn health_event(&mut self, ev: HealthEvent) {
        let message = if ev.healthy {
            format!(
                "task {} healthy on {} ({})",
                short(&ev.task),
                ev.addr,
                ev.reason
            )
        } else {
            format!(
                "task {} unhealthy on {}: {}",
                short(&ev.task),
                ev.addr,
                ev.reason
            )
        };
        self.event(&ev.service, message);
    }

    /// Signals readiness once the first pass is done and backends have had
    /// their first check (or the wait is over).
    fn check_ready(&mut self) {
        let Some((_, deadline)) = &self.ready else {
            return;
        };
        if self.proxy.all_checked_once() || Instant::now() >= *deadline {
            if let Some((tx, _)) = self.ready.take() {
                let _ = tx.send(());
            }
        } else {
            self.wake_in(Duration::from_millis(50));
        }
    }

    /// Marks images as in use now. A timestamp less than a minute old is
    /// left alone, so the state file is not rewritten on every pass.
    fn track_images<'a>(&mut self, images: impl Iterator<Item = &'a str>) {
        let now = now_ms();
        for image in images {
            let used = self
                .store
                .state
                .images
                .entry(image.to_string())
                .or_insert(0);
            if now.saturating_sub(*used) > 60_000 {
                *used = now;
            }
        }
    }

    /// Every image some known spec of a service (current, last good,
    /// stable) or a container of this agent uses.
    fn referenced_images(&self) -> BTreeSet<String> {
        let specs = self.desired.services.values().chain(
            self.store
                .state
                .services
                .values()
                .flat_map(|r| r.last_good.iter().chain(r.stable.iter())),
        );
        specs
            .flat_map(|s| {
                s.task_definition
                    .container_definitions
                    .iter()
                    .map(|c| c.image.clone())
            })
            .collect()
    }

    async fn clean_images(&mut self) {
        // In use: what any known spec names, and what the last pass saw in
        // this agent's containers (no second listing of Docker here).
        let mut referenced = self.referenced_images();
        referenced.extend(self.images_seen.iter().cloned());
        let mut tracked = std::mem::take(&mut self.store.state.images);
        let removed = crate::images::cycle(
            &self.docker,
            &self.cfg.image_cleanup,
            &mut tracked,
            &referenced,
            now_ms(),
        )
        .await;
        self.store.state.images = tracked;
        if !removed.is_empty() {
            self.save();
        }
    }

    /// The durable record of `service`, created on first use.
    fn service_record(&mut self, service: &str) -> &mut ServiceRecord {
        self.store
            .state
            .services
            .entry(service.to_string())
            .or_default()
    }

    fn save(&mut self) {
        if let Err(e) = self.store.save() {
            tracing::error!(cause = %e, "cannot persist agent state");
        }
    }

    fn event(&mut self, service: &str, message: String) {
        tracing::info!(service, "{message}");
        let list = self.events.entry(service.to_string()).or_default();
        if list.len() == EVENTS_PER_SERVICE {
            list.pop_front();
        }
        list.push_back(Event {
            at: SystemTime::now(),
            message,
        });
    }

    /// Counts a failed task toward crash backoff and, when it belongs to a
    /// revision being rolled out, toward that rollout's circuit breaker.
    fn record_failure(
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
        let rec = self.service_record(service);
        if ran_for.is_some_and(|d| d >= BACKOFF_RESET_AFTER) {
            rec.consecutive_failures = 0;
        }
        rec.consecutive_failures = rec.consecutive_failures.saturating_add(1);
        rec.total_failures += 1;
        rec.last_failure = Some(reason.to_string());
        let delay = backoff(rec.consecutive_failures);
        rec.next_start_at_ms = now_ms() + delay.as_millis() as u64;

        let Some(stable) = rec.stable.clone() else {
            return; // A first deployment has nothing to go back to.
        };
        let stable_digest = stable.task_definition.digest();
        if rec.rollout_digest.as_deref() != Some(digest.as_str()) || digest == stable_digest {
            return;
        }
        rec.rollout_failures += 1;
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
            self.event(service, why);
        }
    }

    fn wake_in(&mut self, d: Duration) {
        let at = Instant::now() + d;
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// One pass: observe, then move every service one step.
    async fn reconcile(&mut self) {
        let started = Instant::now();
        let observing = docker::observe(&self.docker, &self.store.state.instance_id);
        let observed = match tokio::time::timeout(OBSERVE_TIMEOUT, observing)
            .await
            .unwrap_or(Err(docker::DockerError::Timeout(OBSERVE_TIMEOUT)))
        {
            Ok(o) => o,
            Err(e) => {
                crate::metrics::docker_error();
                tracing::warn!(cause = %e, "cannot observe containers; retrying");
                self.wake_in(Duration::from_secs(1));
                return;
            }
        };
        self.track_images(observed.iter().map(|c| c.image.as_str()));
        self.images_seen = observed.iter().map(|c| c.image.clone()).collect();
        let tasks = task::group(observed);
        self.adopt_and_forget(&tasks);
        self.fail_dead_tasks(&tasks);
        self.drive_stops(&tasks);
        let services: BTreeSet<String> = self
            .desired
            .services
            .keys()
            .chain(self.desired.broken.iter())
            .chain(self.store.state.tasks.values().map(|t| &t.service))
            .cloned()
            .collect();
        for name in services {
            self.reconcile_service(&name, &tasks);
        }
        // Forget services that are gone and hold nothing.
        let live: BTreeSet<String> = self
            .store
            .state
            .tasks
            .values()
            .map(|t| t.service.clone())
            .collect();
        let desired = &self.desired;
        self.store.state.services.retain(|name, _| {
            desired.services.contains_key(name)
                || desired.broken.contains(name)
                || live.contains(name)
        });
        self.save();
        self.publish(&tasks);
        self.check_ready();
        crate::metrics::reconciled(started.elapsed());
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            tasks = tasks.len(),
            "reconciled"
        );
    }

    /// Tasks Docker has that the store does not are adopted (a state file
    /// lost or from an older agent); records of tasks Docker no longer has
    /// are dropped.
    fn adopt_and_forget(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        for (id, t) in tasks {
            if self.store.state.tasks.contains_key(id) {
                continue;
            }
            let Some(service) = t.label(label::SERVICE) else {
                continue;
            };
            let dead = t.failed_essential().is_some();
            tracing::info!(task = %id, service, "adopting task found in Docker");
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
                    created_at_ms: t.started_at().map(ms_of).unwrap_or_else(now_ms),
                    restarts: BTreeMap::new(),
                },
            );
        }
        let inflight = &self.inflight;
        let proxy = &self.proxy;
        self.store.state.tasks.retain(|id, _| {
            let keep = tasks.contains_key(id) || inflight.contains_key(id);
            if !keep {
                proxy.remove_task(id);
            }
            keep
        });
    }

    /// A running task whose essential container exited is failed: counted
    /// toward crash backoff once, and its other containers stopped.
    fn fail_dead_tasks(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        self.restart_in_place(tasks);
        let mut failed = Vec::new();
        for (id, rec) in &self.store.state.tasks {
            if rec.desired != DesiredStatus::Running || self.inflight.contains_key(id) {
                continue;
            }
            let Some(t) = tasks.get(id) else { continue };
            if let Some(mut reason) = t.failure_reason() {
                if let Some(Err(why_not)) = t.failed_essential().and_then(|c| c.restart_decision())
                {
                    reason = format!("{reason}; not restarted in place: {why_not}");
                }
                let ran_for = t
                    .started_at()
                    .and_then(|s| SystemTime::now().duration_since(s).ok());
                failed.push((id.clone(), rec.service.clone(), reason, ran_for));
            }
        }
        for (id, service, reason, ran_for) in failed {
            // Nothing to drain: the task is dead. Out of rotation at once.
            self.proxy.remove_task(&id);
            if let Some(rec) = self.store.state.tasks.get_mut(&id) {
                rec.desired = DesiredStatus::Stopped;
                rec.stop_reason = Some(reason.clone());
                rec.crash_counted = true;
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
        for (id, rec) in &self.store.state.tasks {
            if rec.desired != DesiredStatus::Running || self.inflight.contains_key(id) {
                continue;
            }
            let Some(t) = tasks.get(id) else { continue };
            // An essential container exiting without a restart fails the
            // task; then nothing of it is restarted.
            let essential_fails = t.containers.iter().any(|c| {
                c.is_essential()
                    && matches!(c.state, crate::docker::RunState::Exited { .. })
                    && !matches!(c.restart_decision(), Some(Ok(())))
            });
            if essential_fails {
                continue;
            }
            for c in &t.containers {
                if let Some(Ok(())) = c.restart_decision() {
                    let name = c.label(label::CONTAINER).unwrap_or(&c.name).to_string();
                    let code = match c.state {
                        crate::docker::RunState::Exited { code, .. } => code,
                        _ => 0,
                    };
                    restarts.push((id.clone(), rec.service.clone(), c.id.clone(), name, code));
                }
            }
        }
        let mut by_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (task, service, container_id, name, code) in restarts {
            let n = self.store.state.tasks.get_mut(&task).map_or(0, |r| {
                let n = r.restarts.entry(name.clone()).or_default();
                *n += 1;
                *n
            });
            self.event(
                &service,
                format!("task {}: container {name} exited with code {code}; restarted in place (restart {n})", short(&task)),
            );
            by_task.entry(task).or_default().push(container_id);
        }
        for (task, ids) in by_task {
            let docker = self.docker.clone();
            self.inflight.insert(task.clone(), OpKind::Launch);
            self.ops.spawn(async move {
                let mut result = Ok(());
                for id in ids {
                    if let Err(e) = docker::start(&docker, &id).await {
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

    /// Tasks the agent wants stopped: stop what still runs, remove what
    /// should go, and clean up failed tasks after the cleanup wait.
    fn drive_stops(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        let cleanup_wait = self.cfg.task_cleanup_wait;
        let mut to_stop = Vec::new();
        let mut wake = None;
        for (id, rec) in &self.store.state.tasks {
            if rec.desired != DesiredStatus::Stopped || self.inflight.contains_key(id) {
                continue;
            }
            let Some(t) = tasks.get(id) else { continue };
            let alive = t.any_alive() || t.has_unstarted();
            if alive || rec.remove_when_stopped {
                to_stop.push((id.clone(), rec.remove_when_stopped));
            } else if let Some(finished) = t.finished_at() {
                let age = SystemTime::now()
                    .duration_since(finished)
                    .unwrap_or_default();
                if age >= cleanup_wait {
                    to_stop.push((id.clone(), true));
                } else {
                    wake = Some(
                        wake.map_or(cleanup_wait - age, |w: Duration| w.min(cleanup_wait - age)),
                    );
                }
            }
        }
        if let Some(w) = wake {
            self.wake_in(w);
        }
        for (id, remove) in to_stop {
            let t = &tasks[&id];
            self.spawn_stop(&id, t, remove);
        }
    }

    fn spawn_stop(&mut self, id: &str, t: &TaskObs, remove: bool) {
        let default_timeout = self.cfg.container_stop_timeout;
        let mut containers: Vec<(String, Duration, u32)> = t
            .containers
            .iter()
            .map(|c| {
                let timeout = c
                    .label(label::STOP_TIMEOUT)
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(default_timeout);
                (c.id.clone(), timeout, c.start_order())
            })
            .collect();
        // Dependents first: reverse start order.
        containers.sort_by_key(|c| std::cmp::Reverse(c.2));
        let docker = self.docker.clone();
        let task = id.to_string();
        // Out of rotation now; the op waits for in-flight requests before
        // SIGTERM (DESIGN.md's stop order).
        let drain: Pin<Box<dyn Future<Output = usize> + Send>> = Box::pin(self.proxy.drain(id));
        self.inflight.insert(task.clone(), OpKind::Stop);
        self.ops.spawn(async move {
            let started = Instant::now();
            let left = drain.await;
            let waited = started.elapsed();
            if waited > Duration::from_millis(5) || left > 0 {
                tracing::info!(task = %task, waited_ms = waited.as_millis() as u64, in_flight_left = left, "drained");
            }
            let result = stop_task(&docker, &containers, remove).await;
            OpDone {
                task,
                kind: OpKind::Stop,
                result,
            }
        });
    }

    fn reconcile_service(&mut self, name: &str, tasks: &BTreeMap<String, TaskObs>) {
        let spec = if let Some(spec) = self.desired.services.get(name).cloned() {
            let rec = self.service_record(name);
            if rec.last_good.as_ref() != Some(&spec) {
                rec.last_good = Some(spec.clone());
            }
            Some(spec)
        } else if self.desired.broken.contains(name) {
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
                return;
            }
            last
        } else {
            None
        };

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
                self.request_stop(&id, "service removed", tasks, true);
            }
            self.proxy.set_routes(name, Vec::new());
            self.pending_reason.remove(name);
            return;
        };
        let spec = self.effective_spec(name, spec);
        self.route(&spec, tasks);

        let digest = spec.task_definition.digest();
        let revision = self
            .store
            .state
            .revision_of(&spec.task_definition.family, &digest);
        let views: Vec<TaskView> = self
            .store
            .state
            .tasks
            .iter()
            .filter(|(_, r)| r.service == name)
            .filter_map(|(id, r)| {
                let obs = tasks.get(id);
                let stopping = r.desired == DesiredStatus::Stopped;
                if stopping && !obs.is_some_and(TaskObs::any_alive) {
                    return None;
                }
                let routed_ok =
                    spec.load_balancers.is_empty() || self.proxy.task_health(id) == Some(true);
                Some(TaskView {
                    id: id.clone(),
                    current: r.digest == digest,
                    healthy: !stopping && routed_ok && obs.is_some_and(TaskObs::healthy),
                    stopping,
                    // Docker's start time orders "longest running" best;
                    // the record's time covers tasks not started yet.
                    created_at_ms: obs
                        .and_then(TaskObs::started_at)
                        .map_or(r.created_at_ms, ms_of),
                })
            })
            .collect();
        let now_instant = Instant::now();
        for v in &views {
            if v.healthy {
                self.ever_healthy.insert(v.id.clone());
            }
            self.first_seen.entry(v.id.clone()).or_insert(now_instant);
        }
        if let Some(deadline) = health_deadline(&spec) {
            let doomed: Vec<(String, u64)> = views
                .iter()
                .filter(|v| !v.healthy && !v.stopping && !self.ever_healthy.contains(&v.id))
                .filter(|v| {
                    tasks
                        .get(&v.id)
                        .is_some_and(|t| t.known_status() == crate::task::KnownStatus::Running)
                })
                .filter_map(|v| {
                    let seen = self.first_seen.get(&v.id)?.elapsed();
                    (seen > deadline).then(|| (v.id.clone(), seen.as_secs()))
                })
                .collect();
            // Wake when the next unproven task reaches its deadline.
            let next = views
                .iter()
                .filter(|v| !v.healthy && !v.stopping && !self.ever_healthy.contains(&v.id))
                .filter_map(|v| deadline.checked_sub(self.first_seen.get(&v.id)?.elapsed()))
                .min();
            if let Some(left) = next {
                self.wake_in(left + Duration::from_millis(10));
            }
            for (id, secs) in doomed {
                let why = match self.proxy.task_failure(&id) {
                    Some(f) => format!("never passed its health checks in {secs}s (last: {f})"),
                    None => format!("never passed its health checks in {secs}s"),
                };
                self.fail_task(&id, &why, tasks);
            }
        }
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
            self.request_stop(id, why, tasks, true);
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
            let now = now_ms();
            if rec.next_start_at_ms > now {
                let wait = Duration::from_millis(rec.next_start_at_ms - now);
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

    /// The spec to run: the file's, unless its revision's rollout failed,
    /// then the last stable one (ECS's circuit breaker with rollback).
    fn effective_spec(&mut self, name: &str, spec: ServiceSpec) -> ServiceSpec {
        let digest = spec.task_definition.digest();
        let rec = self.service_record(name);
        if rec.rollout_digest.as_deref() != Some(digest.as_str()) {
            rec.rollout_digest = Some(digest.clone());
            rec.rollout_failures = 0;
        }
        rec.runs(&spec).clone()
    }

    /// Fails a running task (counted like a crash) and stops it, keeping its
    /// containers for inspection.
    fn fail_task(&mut self, id: &str, why: &str, tasks: &BTreeMap<String, TaskObs>) {
        let Some(service) = self.store.state.tasks.get(id).map(|r| r.service.clone()) else {
            return;
        };
        self.record_failure(&service, None, id, why);
        if let Some(rec) = self.store.state.tasks.get_mut(id) {
            rec.crash_counted = true;
        }
        self.request_stop(id, why, tasks, false);
    }

    /// Declares the service's routes and registers every running task's
    /// published ports on them.
    fn route(&mut self, spec: &ServiceSpec, tasks: &BTreeMap<String, TaskObs>) {
        let name = &spec.service_name;
        let specs = spec
            .load_balancers
            .iter()
            .map(|lb| lb.route_spec(spec.health_check_grace_period_seconds))
            .collect();
        self.proxy.set_routes(name, specs);
        if spec.load_balancers.is_empty() {
            return;
        }
        let host_network = spec.task_definition.network_mode == crate::taskdef::NetworkMode::Host;
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
            if t.known_status() != crate::task::KnownStatus::Running {
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
                    Some(lb.container_port as u16)
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
                    self.proxy.add_backend(
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

    fn request_stop(
        &mut self,
        id: &str,
        why: &str,
        tasks: &BTreeMap<String, TaskObs>,
        remove: bool,
    ) {
        let Some(rec) = self.store.state.tasks.get_mut(id) else {
            return;
        };
        rec.desired = DesiredStatus::Stopped;
        rec.remove_when_stopped = remove;
        rec.stop_reason = Some(why.to_string());
        let service = rec.service.clone();
        self.event(&service, format!("stopping task {}: {why}", short(id)));
        // A launch in flight is left to finish and the next pass stops it;
        // out of rotation it goes now either way.
        drop(self.proxy.drain(id));
        if !self.inflight.contains_key(id) {
            if let Some(t) = tasks.get(id) {
                self.spawn_stop(id, t, remove);
            }
        }
    }

    /// Host ports held by live tasks and by launches in flight.
    fn ports_in_use(&self, tasks: &BTreeMap<String, TaskObs>) -> BTreeSet<u16> {
        let mut used: BTreeSet<u16> = tasks.values().flat_map(|t| t.host_ports()).collect();
        used.extend(self.granted.values().flatten());
        used
    }

    /// Free (memory MiB, CPU units) after every task that is not stopped.
    fn free_resources(&self, tasks: &BTreeMap<String, TaskObs>) -> (i64, i64) {
        let mut mem = self.capacity.memory_mib as i64 - self.cfg.reserved_memory_mib as i64;
        let mut cpu = self.capacity.cpu_units as i64;
        for (id, rec) in &self.store.state.tasks {
            let counts = rec.desired == DesiredStatus::Running
                || tasks.get(id).is_some_and(TaskObs::any_alive);
            if !counts {
                continue;
            }
            let (m, c) = match tasks.get(id) {
                Some(t) => t.reservation(),
                None => self
                    .desired
                    .services
                    .get(&rec.service)
                    .map(|s| {
                        (
                            s.task_definition.memory_mib(),
                            s.task_definition.cpu_units(),
                        )
                    })
                    .unwrap_or((0, 0)),
            };
            mem -= m as i64;
            cpu -= c as i64;
        }
        (mem, cpu)
    }

    /// Places one new task of `spec` and spawns its launch.
    fn start_task(
        &mut self,
        spec: &ServiceSpec,
        revision: u32,
        digest: &str,
        tasks: &BTreeMap<String, TaskObs>,
    ) -> Result<(), String> {
        let def = &spec.task_definition;
        let (free_mem, free_cpu) = self.free_resources(tasks);
        let mut in_use = self.ports_in_use(tasks);
        let static_ports: Vec<(u16, &str)> = def
            .container_definitions
            .iter()
            .flat_map(|c| c.port_mappings.iter())
            .filter_map(|pm| {
                let proto = pm.protocol.unwrap_or_default().as_str();
                match (def.network_mode, pm.host_port) {
                    (crate::taskdef::NetworkMode::Host, _) => {
                        Some((pm.container_port as u16, proto))
                    }
                    (_, Some(p)) if p > 0 => Some((p as u16, proto)),
                    _ => None,
                }
            })
            .collect();
        check_fit(
            def.memory_mib(),
            free_mem,
            def.cpu_units(),
            free_cpu,
            &static_ports,
            &in_use,
            &self.cfg.reserved_ports,
        )?;

        let mut dynamic = BTreeMap::new();
        let mut granted: BTreeSet<u16> = static_ports.iter().map(|p| p.0).collect();
        if def.network_mode == crate::taskdef::NetworkMode::Bridge {
            for (i, c) in def.container_definitions.iter().enumerate() {
                for (j, pm) in c.port_mappings.iter().enumerate() {
                    if pm.host_port.unwrap_or(0) == 0 {
                        let proto = pm.protocol.unwrap_or_default().as_str();
                        let port = self.ports.allocate(proto, &in_use).ok_or_else(|| {
                            format!(
                                "no free host port in ECS_DYNAMIC_HOST_PORT_RANGE {}-{}",
                                self.cfg.dynamic_port_range.0, self.cfg.dynamic_port_range.1
                            )
                        })?;
                        in_use.insert(port);
                        granted.insert(port);
                        dynamic.insert((i, j), port);
                    }
                }
            }
        }

        let task_id = random_hex(16);
        let task_arn = format!(
            "arn:aws:ecs:local:000000000000:task/{}/{task_id}",
            self.cfg.cluster
        );
        let launch = docker::TaskLaunch {
            instance: &self.store.state.instance_id,
            cluster: &self.cfg.cluster,
            service: &spec.service_name,
            task_id: &task_id,
            task_arn: &task_arn,
            revision,
            digest,
            def,
            bind_address: self.cfg.port_bind_address,
            default_stop_timeout: self.cfg.container_stop_timeout,
            dynamic_ports: &dynamic,
        };
        // validate() rejected cycles, so an order exists.
        let order = def.start_order().unwrap_or_default();
        let prepared: Vec<Prepared> = order
            .iter()
            .enumerate()
            .map(|(pos, &i)| {
                let c = &def.container_definitions[i];
                Prepared {
                    name_in_task: c.name.clone(),
                    docker_name: launch.container_name(c),
                    image: c.image.clone(),
                    body: launch.container_body(i, pos),
                    depends_on: c
                        .depends_on
                        .iter()
                        .map(|d| (d.container_name.clone(), d.condition))
                        .collect(),
                }
            })
            .collect();

        self.store.state.tasks.insert(
            task_id.clone(),
            TaskRecord {
                service: spec.service_name.clone(),
                family: def.family.clone(),
                revision,
                digest: digest.to_string(),
                desired: DesiredStatus::Running,
                stop_reason: None,
                remove_when_stopped: false,
                crash_counted: false,
                created_at_ms: now_ms(),
                restarts: BTreeMap::new(),
            },
        );
        // The record is durable before any container carries the task id.
        self.save();
        let ports_text: Vec<String> = dynamic.values().map(u16::to_string).collect();
        self.event(
            &spec.service_name,
            format!(
                "starting task {} (revision {revision}{})",
                short(&task_id),
                if ports_text.is_empty() {
                    String::new()
                } else {
                    format!(", host ports {}", ports_text.join(","))
                }
            ),
        );
        let images: Vec<String> = def
            .container_definitions
            .iter()
            .map(|c| c.image.clone())
            .collect();
        self.track_images(images.iter().map(String::as_str));
        self.inflight.insert(task_id.clone(), OpKind::Launch);
        self.launched_here.insert(task_id.clone());
        self.granted.insert(task_id.clone(), granted);
        let docker = self.docker.clone();
        let pull = self.cfg.image_pull_behavior;
        let config_dir = self.cfg.docker_config_dir.clone();
        let start_timeout = self.cfg.container_start_timeout;
        let pull_timeout = self.cfg.image_pull_timeout;
        self.ops.spawn(async move {
            let result = launch_task(
                &docker,
                prepared,
                (pull, pull_timeout),
                start_timeout,
                &config_dir,
            )
            .await;
            OpDone {
                task: task_id,
                kind: OpKind::Launch,
                result,
            }
        });
        Ok(())
    }

    /// Publishes what the local API and `dockhand status` show.
    fn publish(&mut self, tasks: &BTreeMap<String, TaskObs>) {
        let mut snapshot = Snapshot {
            cluster: self.cfg.cluster.clone(),
            instance_id: self.store.state.instance_id.clone(),
            updated_at: Some(SystemTime::now()),
            ..Snapshot::default()
        };
        for (id, rec) in &self.store.state.tasks {
            let obs = tasks.get(id);
            let mut t = TaskStatus::new(&self.cfg.cluster, id, rec, obs);
            for c in &mut t.containers {
                if let Some(n) = rec.restarts.get(&c.name) {
                    c.restart_count += i64::from(*n);
                }
            }
            if let Some(h) = self.proxy.task_health(id) {
                t.healthy = t.healthy && h;
                t.health_reason = self.proxy.task_failure(id);
            }
            snapshot.tasks.push(t);
        }
        let names: BTreeSet<&String> = self
            .desired
            .services
            .keys()
            .chain(self.store.state.services.keys())
            .collect();
        for name in names {
            let spec = self.desired.services.get(name).or_else(|| {
                self.store
                    .state
                    .services
                    .get(name)
                    .and_then(|r| r.last_good.as_ref())
            });
            let rec = self
                .store
                .state
                .services
                .get(name)
                .cloned()
                .unwrap_or_else(ServiceRecord::default);
            // After a rollback the service runs its stable spec, not the file's.
            let spec = spec.map(|s| rec.runs(s));
            let mine = snapshot.tasks.iter().filter(|t| &t.service == name);
            let revision = spec.and_then(|s| {
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
                desired: spec.map_or(0, ServiceSpec::wanted_tasks),
                running,
                healthy,
                running_by_revision: by_revision,
                pending_reason: self.pending_reason.get(name).cloned(),
                broken_file: self.desired.broken.contains(name),
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
        let running: usize = snapshot.services.iter().map(|s| s.running as usize).sum();
        let healthy: usize = snapshot.services.iter().map(|s| s.healthy as usize).sum();
        let pending = snapshot
            .services
            .iter()
            .filter(|s| s.pending_reason.is_some())
            .count();
        let line = format!(
            "{} service(s), {running} task(s) running, {healthy} healthy{}",
            snapshot.services.len(),
            if pending > 0 {
                format!(", {pending} service(s) waiting (see dockhand status)")
            } else {
                String::new()
            }
        );
        if self.last_status_line != line {
            crate::notify::status(&line);
            self.last_status_line = line;
        }
        match self.status.write() {
            Ok(mut s) => *s = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }
}

/// How long a new task of a routed service may run without passing its
/// checks before it is failed: the grace period, then enough intervals for
/// the healthy threshold plus the unhealthy threshold, plus one timeout.
fn health_deadline(spec: &ServiceSpec) -> Option<Duration> {
    spec.load_balancers
        .iter()
        .map(|lb| {
            let r = lb.route_spec(spec.health_check_grace_period_seconds);
            let checks = r.check.healthy_threshold + r.check.unhealthy_threshold;
            r.grace + r.check.interval * checks + r.check.timeout
        })
        .max()
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Creates a task's containers, then starts them in `dependsOn` order.
/// Idempotent: a container that already exists (a launch resumed after an
/// agent restart) is used as it is.
async fn launch_task(
    docker: &Docker,
    prepared: Vec<Prepared>,
    (pull, pull_timeout): (PullBehavior, Duration),
    start_timeout: Duration,
    docker_config: &std::path::Path,
) -> Result<(), String> {
    let mut ids: HashMap<String, String> = HashMap::new();
    for p in &prepared {
        ensure_image(docker, &p.image, pull, pull_timeout, docker_config).await?;
        let id = match docker::create(docker, &p.docker_name, p.body.clone()).await {
            Ok(id) => id,
            Err(e) if e.status() == Some(409) => p.docker_name.clone(),
            Err(e) => return Err(format!("create container {}: {e}", p.name_in_task)),
        };
        ids.insert(p.name_in_task.clone(), id);
    }
    for p in &prepared {
        for (dep, condition) in &p.depends_on {
            let dep_id = ids.get(dep).cloned().unwrap_or_default();
            wait_for(docker, dep, &dep_id, *condition, start_timeout).await?;
        }
        let id = &ids[&p.name_in_task];
        docker::start(docker, id)
            .await
            .map_err(|e| format!("start container {}: {e}", p.name_in_task))?;
    }
    Ok(())
}

/// ECS pull semantics, so a host with a cached image keeps working when the
/// registry does not answer (`default`), or never asks it (`prefer-cached`).
async fn ensure_image(
    docker: &Docker,
    image: &str,
    pull: PullBehavior,
    timeout: Duration,
    docker_config: &std::path::Path,
) -> Result<(), String> {
    let present = docker::image_present(docker, image)
        .await
        .map_err(|e| format!("inspect image {image}: {e}"))?;
    let should_pull = match pull {
        PullBehavior::Always | PullBehavior::Default => true,
        PullBehavior::Once | PullBehavior::PreferCached => !present,
    };
    if !should_pull {
        return Ok(());
    }
    let started = Instant::now();
    let credentials = crate::registry::credentials_for(image, docker_config);
    tracing::info!(
        image,
        with_credentials = credentials.is_some(),
        "pulling image"
    );
    let pulled = docker::pull(docker, image, timeout, credentials).await;
    crate::metrics::pulled(pulled.is_ok(), started.elapsed());
    match pulled {
        Ok(()) => {
            tracing::info!(
                image,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "pulled image"
            );
            Ok(())
        }
        Err(e) if present && pull == PullBehavior::Default => {
            tracing::warn!(image, cause = %e, "pull failed; using the cached image");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Waits until container `name` meets `condition`, polling Docker.
async fn wait_for(
    docker: &Docker,
    name: &str,
    id: &str,
    condition: DependencyCondition,
    timeout: Duration,
) -> Result<(), String> {
    use bollard::models::{ContainerStateStatusEnum as S, HealthStatusEnum as H};
    let deadline = Instant::now() + timeout;
    loop {
        let c = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| format!("inspect dependency {name}: {e}"))?;
        let state = c.state.unwrap_or_default();
        let exited = state.status == Some(S::EXITED);
        let code = state.exit_code.unwrap_or(-1);
        let started = state.status == Some(S::RUNNING) || exited;
        let done = match condition {
            DependencyCondition::Start => started,
            DependencyCondition::Complete => exited,
            DependencyCondition::Success if exited && code != 0 => {
                return Err(format!(
                    "dependency {name} exited with code {code}, SUCCESS required"
                ))
            }
            DependencyCondition::Success => exited,
            DependencyCondition::Healthy => {
                if exited {
                    return Err(format!(
                        "dependency {name} exited with code {code} before becoming HEALTHY"
                    ));
                }
                state.health.and_then(|h| h.status) == Some(H::HEALTHY)
            }
        };
        if done {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "dependency {name} did not reach {condition:?} within {}s (ECS_CONTAINER_START_TIMEOUT)",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(DEPENDENCY_POLL).await;
    }
}

/// Stops containers in the order given, then removes them if asked.
async fn stop_task(
    docker: &Docker,
    containers: &[(String, Duration, u32)],
    remove: bool,
) -> Result<(), String> {
    for (id, timeout, _) in containers {
        docker::stop(docker, id, *timeout)
            .await
            .map_err(|e| format!("stop {id}: {e}"))?;
    }
    if remove {
        for (id, _, _) in containers {
            docker::remove(docker, id)
                .await
                .map_err(|e| format!("remove {id}: {e}"))?;
        }
    }
    Ok(())
}

/// Forwards Docker's container events for this instance as wake-ups,
/// re-opening the stream with backoff when Docker goes away. Each stream
/// asks for events since the last one seen, so none fall in a gap.
async fn forward_events(docker: Docker, instance: String, since: SystemTime, tx: mpsc::Sender<()>) {
    use bollard::query_parameters::EventsOptionsBuilder;
    use futures_util::StreamExt;
    let mut since_secs = since
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut delay = Duration::from_millis(100);
    loop {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", vec![format!("{}={instance}", label::INSTANCE)]),
        ]);
        let options = EventsOptionsBuilder::default()
            .since(&since_secs.to_string())
            .filters(&filters)
            .build();
        let mut stream = docker.events(Some(options));
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    delay = Duration::from_millis(100);
                    if let Some(t) = ev.time {
                        since_secs = since_secs.max(t.max(0) as u64);
                    }
                    tracing::debug!(action = ev.action.as_deref().unwrap_or(""), "docker event");
                    if tx.send(()).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "Docker event stream failed; re-opening");
                    break;
                }
            }
        }
        // The stream ended (Docker restarted or went away): anything may
        // have changed, so ask for a full pass, then re-open.
        if tx.send(()).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_backoff_is_immediate_then_doubles_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
