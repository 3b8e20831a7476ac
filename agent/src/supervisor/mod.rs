//! The reconcile loop: desired state against what the engine says runs.
//!
//! ```text
//!  engine events ──┐   (subscribed before the first reconcile; the engine
//!  desired state ──┤    re-opens its stream; a periodic pass is the safety net)
//!  ops finished ───┤
//!  proxy health ───┤
//!  timers ─────────┴──► reconcile ──► observe (list + inspect by label)
//!                            │        adopt unknown tasks; fail dead ones
//!                            │        (or, desired state unknown: restart
//!                            │        them in place and decide nothing)
//!                            │        per service: rollout::plan
//!                            ├──► launch ops (launch.rs: create, start in dependsOn order)
//!                            ├──► stop ops   (stop.rs: drain, SIGTERM, timeout, SIGKILL, remove)
//!                            └──► publish    (publish.rs: status snapshot, state changes)
//! ```
//!
//! Files by job: this one is the loop and its inputs; `service.rs` moves one
//! service a step (rollout, crash backoff, circuit breaker, routes);
//! `launch.rs` places and starts tasks; `stop.rs` adopts, fails, restarts in
//! place, drains and stops; `publish.rs` tells the world; `housekeeping.rs`
//! cleans images.
//!
//! Actual state is always read from the engine, never only from memory, so
//! a restarted agent adopts what runs instead of duplicating it. Launches
//! and stops run as separate tasks owned by the loop, so a 30 s stop timeout
//! never holds up reacting to a crash elsewhere. Nothing here stops
//! containers on shutdown: dropping the loop leaves them running.

mod housekeeping;
mod launch;
mod managed;
mod pacing;
mod publish;
mod service;
mod stop;
#[cfg(test)]
mod tests;

use crate::changes::Changes;
use crate::clock::Clock;
use crate::config::Config;
use crate::desired::{Desired, DesiredState};
use crate::engine::{Engine, EngineEvent, HostCapacity};
use crate::ports::PortAllocator;
use crate::router::Router;
use crate::status::{Event, Snapshot};
use crate::store::{ServiceRecord, Store};
use crate::task;
use dockhand_proxy::HealthEvent;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A full reconcile runs at least this often, for events the engine lost.
const SAFETY_NET_INTERVAL: Duration = Duration::from_secs(30);
/// A pass that cannot list containers within this gives up and retries,
/// so a hung engine cannot wedge the loop (and starve the watchdog).
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(20);
/// First crash replacement is immediate, then 1 s doubling to this cap.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A task that ran this long resets its service's crash backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// How many events each service keeps for status.
const EVENTS_PER_SERVICE: usize = 50;
/// Passes run at most this often: a burst of events (200 tasks turning
/// healthy) is one pass, not 200, each listing the engine.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(100);
/// After the engine comes back from an outage, tasks found dead that died
/// during it are the outage's, not their own, for this long.
const OUTAGE_GRACE: Duration = Duration::from_secs(60);
/// How long the agent waits at start for first health checks before it
/// serves anyway.
const READY_WAIT: Duration = Duration::from_secs(5);

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

/// What a supervisor is made of; each part is owned by it from then on.
pub struct Parts<E, R> {
    pub cfg: Arc<Config>,
    pub engine: E,
    pub router: R,
    pub clock: Clock,
    pub store: Store,
    /// Where desired state arrives.
    pub desired: watch::Receiver<DesiredState>,
    pub capacity: HostCapacity,
    /// Where the latest snapshot is published (the local API reads it).
    pub status: Arc<RwLock<Snapshot>>,
    pub changes: Arc<Changes>,
    /// The proxy's health transitions.
    pub health_events: mpsc::UnboundedReceiver<HealthEvent>,
    /// Fired once the first reconcile is done and every backend has been
    /// checked once, so listeners open onto a table with healthy backends.
    pub ready: tokio::sync::oneshot::Sender<()>,
}

pub struct Supervisor<E, R> {
    cfg: Arc<Config>,
    engine: E,
    router: R,
    clock: Clock,
    store: Store,
    desired_rx: watch::Receiver<DesiredState>,
    /// The last known desired state (from the source, or from the data
    /// directory after a restart).
    desired: Desired,
    /// Whether the source has answered: while not, the loop holds.
    known: bool,
    capacity: HostCapacity,
    ports: PortAllocator,
    ops: JoinSet<OpDone>,
    inflight: HashMap<String, OpKind>,
    /// Stops decided in this pass (task → remove its containers): started
    /// once the pass has saved them, so that no container gets its signal
    /// before the state file says the task is stopping.
    stops_due: BTreeMap<String, bool>,
    /// Host ports granted to launches that have not shown up yet.
    granted: HashMap<String, BTreeSet<u16>>,
    pending_reason: BTreeMap<String, String>,
    events: BTreeMap<String, VecDeque<Event>>,
    status: Arc<RwLock<Snapshot>>,
    changes: Arc<Changes>,
    /// What was last published of each task, to publish only changes.
    published: HashMap<String, publish::Published>,
    wake_at: Option<Instant>,
    health_events: mpsc::UnboundedReceiver<HealthEvent>,
    /// Tasks this agent process launched; the others were adopted, and
    /// their backends need one passing check instead of the threshold.
    launched_here: HashSet<String>,
    /// Tasks seen healthy at least once; the others may be failed for
    /// never passing their checks.
    ever_healthy: HashSet<String>,
    /// When each task's health deadline started: when this process first
    /// saw it running (an adopted task's deadline runs from here, not from
    /// when it started).
    running_since: HashMap<String, Instant>,
    /// Images of this agent's containers at the last pass.
    images_seen: BTreeSet<String>,
    /// The last STATUS= line sent to systemd.
    last_status_line: String,
    /// One pull per image at a time, shared by launch ops.
    pulls: Arc<pacing::Pulls>,
    /// How many container creates and starts run at once.
    pacer: Arc<pacing::Pacer>,
    /// The last engine outage: when it began (wall time, compared with
    /// containers' exit times) and when the engine answered again.
    outage: Option<(SystemTime, Option<Instant>)>,
    /// Why the state cannot be saved, while it cannot (logged once).
    save_error: Option<String>,
    /// How the state was rebuilt at start, if it was.
    recovered: Option<String>,
    /// When each service may start a task again after a crash (monotonic;
    /// `state.json` keeps the wall-clock copy for the next agent).
    next_start: HashMap<String, Instant>,
    ready: Option<(tokio::sync::oneshot::Sender<()>, Instant)>,
    /// Managed mode: tasks this process saw end (never started again under
    /// the same id).
    ended: HashSet<String>,
}

impl<E: Engine, R: Router> Supervisor<E, R> {
    pub fn new(p: Parts<E, R>) -> Self {
        let ports = PortAllocator::new(
            p.cfg.dynamic_port_range,
            &p.cfg.reserved_ports,
            p.cfg.port_bind_address,
        );
        // Resume the last known desired state, held until the source
        // answers (static stability).
        let desired = crate::desired::load_last(&p.cfg.data_dir).unwrap_or_default();
        let recovered = p.store.recovered.clone();
        Supervisor {
            cfg: p.cfg,
            engine: p.engine,
            router: p.router,
            clock: p.clock,
            store: p.store,
            desired_rx: p.desired,
            desired,
            known: false,
            capacity: p.capacity,
            ports,
            ops: JoinSet::new(),
            inflight: HashMap::new(),
            stops_due: BTreeMap::new(),
            granted: HashMap::new(),
            pending_reason: BTreeMap::new(),
            events: BTreeMap::new(),
            status: p.status,
            changes: p.changes,
            published: HashMap::new(),
            wake_at: None,
            health_events: p.health_events,
            launched_here: HashSet::new(),
            ever_healthy: HashSet::new(),
            running_since: HashMap::new(),
            images_seen: BTreeSet::new(),
            last_status_line: String::new(),
            pulls: Arc::default(),
            pacer: Arc::default(),
            next_start: HashMap::new(),
            save_error: None,
            outage: None,
            recovered,
            ready: Some((p.ready, Instant::now() + READY_WAIT)),
            ended: HashSet::new(),
        }
    }

    /// Runs until `shutdown` is signaled. Containers are left running.
    pub async fn run(mut self, shutdown: drain::Watch) {
        let signaled = shutdown.signaled();
        tokio::pin!(signaled);
        // Subscribe first: events from now on are delivered even if they
        // happen during the first reconcile.
        let mut engine_events = self
            .engine
            .events(&self.store.state.instance_id, self.clock.now());
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
        let mut desired_open = true;
        self.take_desired();
        let mut dirty = true;

        let mut last_pass: Option<Instant> = None;
        let release = loop {
            let due = last_pass.map_or(Instant::now(), |t| t + MIN_PASS_INTERVAL);
            if dirty && Instant::now() >= due {
                dirty = false;
                safety_net = Instant::now() + SAFETY_NET_INTERVAL;
                self.reconcile().await;
                last_pass = Some(Instant::now());
            } else if dirty {
                self.wake_at = Some(self.wake_at.map_or(due, |w| w.min(due)));
            }
            let wake = self.wake_at.map_or(safety_net, |w| w.min(safety_net));
            tokio::select! {
                release = &mut signaled => break release,
                changed = self.desired_rx.changed(), if desired_open => {
                    match changed {
                        Ok(()) => {
                            self.take_desired();
                            dirty = true;
                        }
                        // The source is gone: keep the last state.
                        Err(_) => desired_open = false,
                    }
                }
                Some(ev) = engine_events.recv() => {
                    // Coalesce a burst of events into one pass.
                    let mut lost = ev == EngineEvent::Lost;
                    while let Ok(ev) = engine_events.try_recv() {
                        lost |= ev == EngineEvent::Lost;
                    }
                    if lost {
                        self.engine_lost();
                    }
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
        };
        // Dropping the JoinSet aborts in-flight ops; what they left half
        // done is seen and finished by the next agent.
        self.ops.abort_all();
        if let Err(e) = self.store.save() {
            tracing::error!(cause = %e, "saving state at shutdown failed");
        }
        tracing::info!("supervisor stopped; containers left running");
        drop(release);
    }

    /// Takes the source's current state. A known state becomes the last
    /// known one and is persisted, so a restart resumes it.
    fn take_desired(&mut self) {
        let state = self.desired_rx.borrow_and_update().clone();
        match state {
            DesiredState::Unknown => {
                if self.known {
                    tracing::warn!("desired state unknown: holding every task as it is");
                }
                self.known = false;
            }
            DesiredState::Known(d) => {
                if !self.known {
                    tracing::info!(services = d.services.len(), "desired state known");
                }
                self.known = true;
                if d != self.desired {
                    if let Err(e) = crate::desired::save_last(&self.cfg.data_dir, &d) {
                        tracing::error!(cause = %e, "cannot persist the desired state");
                    }
                    self.desired = d;
                }
            }
        }
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
                rec.desired = crate::store::DesiredStatus::Stopped;
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
        if self.router.all_checked_once() || Instant::now() >= *deadline {
            if let Some((tx, _)) = self.ready.take() {
                let _ = tx.send(());
                // Routed services plan from now on (service.rs): at once.
                self.wake_in(Duration::ZERO);
            }
        } else {
            self.wake_in(Duration::from_millis(50));
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

    /// Saves the state. A failure (a full disk) is logged once and shown
    /// in the status until a save succeeds again; the agent keeps serving
    /// what runs meanwhile.
    fn save(&mut self) {
        match self.store.save() {
            Ok(()) => {
                if self.save_error.take().is_some() {
                    tracing::info!("agent state saved again");
                }
            }
            Err(e) => {
                let why = e.to_string();
                if self.save_error.as_deref() != Some(why.as_str()) {
                    tracing::error!(cause = %why, "cannot persist agent state; tasks keep running, and changes are saved once it works again");
                    self.save_error = Some(why);
                }
            }
        }
    }

    fn event(&mut self, service: &str, message: String) {
        tracing::info!(service, "{message}");
        let list = self.events.entry(service.to_string()).or_default();
        if list.len() == EVENTS_PER_SERVICE {
            list.pop_front();
        }
        list.push_back(Event {
            at: self.clock.now(),
            message,
        });
    }

    fn wake_in(&mut self, d: Duration) {
        let at = Instant::now() + d;
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// How long ago `t` was (zero if in the future).
    fn age(&self, t: SystemTime) -> Duration {
        self.clock.now().duration_since(t).unwrap_or_default()
    }

    /// One pass: observe, then move every service one step.
    async fn reconcile(&mut self) {
        let started = Instant::now();
        let observing = self.engine.observe(&self.store.state.instance_id);
        let observed = match tokio::time::timeout(OBSERVE_TIMEOUT, observing).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return self.observe_failed(&e.to_string()),
            Err(_) => {
                return self
                    .observe_failed(&format!("no answer within {}s", OBSERVE_TIMEOUT.as_secs()))
            }
        };
        self.track_images(observed.iter().map(|c| c.image.as_str()));
        self.images_seen = observed.iter().map(|c| c.image.clone()).collect();
        if let Some((since, None)) = self.outage {
            tracing::info!(
                down_for_ms = self.age(since).as_millis() as u64,
                "the container engine answers again"
            );
            self.outage = Some((since, Some(Instant::now())));
        }
        let tasks = task::group(observed);
        self.adopt_and_forget(&tasks);
        if self.known {
            self.fail_dead_tasks(&tasks);
        } else {
            self.restart_crashed_in_place(&tasks);
        }
        self.drive_stops(&tasks);
        if let Some(m) = self.desired.managed.clone() {
            if self.known {
                self.reconcile_managed(&m, &tasks);
            } else {
                self.hold_managed(&m, &tasks);
            }
        } else {
            let services: BTreeSet<String> = self
                .desired
                .services
                .keys()
                .chain(self.desired.broken.keys())
                .chain(self.store.state.tasks.values().map(|t| &t.service))
                .cloned()
                .collect();
            for name in services {
                if self.known {
                    self.reconcile_service(&name, &tasks);
                } else {
                    self.hold_service(&name, &tasks);
                }
            }
        }
        if self.known {
            self.forget_removed_services();
        }
        self.save();
        self.spawn_due_stops(&tasks);
        self.publish(&tasks);
        self.check_ready();
        crate::metrics::reconciled(started.elapsed());
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            tasks = tasks.len(),
            known = self.known,
            "reconciled"
        );
    }

    /// The engine went away (its event stream broke, or it did not
    /// answer): containers that die from now on until it is back died with
    /// it.
    fn engine_lost(&mut self) {
        if !matches!(self.outage, Some((_, None))) {
            tracing::warn!("the container engine went away; tasks that die with it are replaced without counting against them");
            self.outage = Some((self.clock.now(), None));
        }
    }

    /// Whether a container that exited at `finished` died with the engine
    /// (during the last outage), rather than of its own accord.
    fn died_with_engine(&self, finished: Option<SystemTime>) -> bool {
        let Some((since, back)) = self.outage else {
            return false;
        };
        let recent = back.is_none_or(|b| b.elapsed() < OUTAGE_GRACE);
        // The engine stops its containers as it goes; a few seconds of
        // slack for clocks and the stream noticing late.
        let slack = Duration::from_secs(5);
        recent && finished.is_some_and(|f| f + slack >= since)
    }

    fn observe_failed(&mut self, why: &str) {
        self.engine_lost();
        crate::metrics::docker_error();
        tracing::warn!(cause = %why, "cannot observe containers; retrying");
        self.wake_in(Duration::from_secs(1));
    }

    /// Forgets services that are gone from the desired state and hold no
    /// task.
    fn forget_removed_services(&mut self) {
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
                || desired.broken.contains_key(name)
                || live.contains(name)
        });
    }
}

/// A task id's first 12 characters, for names and messages.
pub(crate) fn short(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i])
}
