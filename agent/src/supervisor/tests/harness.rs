//! The rig for the supervisor's rule tests: a real [`Supervisor`] on the
//! fake engine and a fake router, with tokio's clock paused, so a scenario
//! of minutes runs in milliseconds.

use super::super::{Parts, Supervisor};
use crate::changes::{Change, Changes};
use crate::clock::Clock;
use crate::config::Config;
use crate::desired::{Desired, DesiredState};
use crate::engine::fake::{FakeContainer, FakeEngine};
use crate::engine::HostCapacity;
use crate::router::{Drain, Router};
use crate::status::Snapshot;
use crate::store::Store;
use dockhand_model::route::RouteSettings;
use dockhand_model::ServiceSpec;
use dockhand_proxy::HealthEvent;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Default)]
struct RouterState {
    routes: BTreeMap<String, Vec<RouteSettings>>,
    /// task → (service, addr, adopted)
    backends: BTreeMap<String, (String, SocketAddr, bool)>,
    health: BTreeMap<String, bool>,
    /// Whether a new backend passes its checks at once.
    new_ones_fail: bool,
    /// New backends stay unchecked (no health yet) until
    /// [`FakeRouter::finish_checks`].
    hold_checks: bool,
    drained: Vec<String>,
    events: Option<mpsc::UnboundedSender<HealthEvent>>,
    /// Drains are written into the engine's call log, so the order of
    /// drains and stops shows in one list.
    log: Option<FakeEngine>,
}

/// A router whose health the test decides: a new backend is healthy at
/// once unless [`FakeRouter::fail_new_backends`] was called.
#[derive(Clone, Default)]
pub struct FakeRouter {
    state: Arc<Mutex<RouterState>>,
}

impl FakeRouter {
    fn lock(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn fail_new_backends(&self, fail: bool) {
        self.lock().new_ones_fail = fail;
    }

    pub fn set_health(&self, task: &str, healthy: bool) {
        let mut s = self.lock();
        if let Some((service, addr, _)) = s.backends.get(task).cloned() {
            s.health.insert(task.to_string(), healthy);
            if let Some(tx) = &s.events {
                let _ = tx.send(HealthEvent {
                    service,
                    task: task.to_string(),
                    addr,
                    healthy,
                    reason: "set by the test".into(),
                });
            }
        }
    }

    /// Backends registered from now on are not checked until
    /// [`FakeRouter::finish_checks`] (a restarted agent's first checks).
    pub fn hold_checks(&self) {
        self.lock().hold_checks = true;
    }

    /// Every unchecked backend passes its first check.
    pub fn finish_checks(&self) {
        let pending: Vec<String> = {
            let mut s = self.lock();
            s.hold_checks = false;
            let s = &*s;
            s.backends
                .keys()
                .filter(|t| !s.health.contains_key(*t))
                .cloned()
                .collect()
        };
        for t in pending {
            self.set_health(&t, true);
        }
    }

    pub fn drained(&self) -> Vec<String> {
        self.lock().drained.clone()
    }

    pub fn backends(&self) -> BTreeMap<String, (String, SocketAddr, bool)> {
        self.lock().backends.clone()
    }

    pub fn routes(&self, service: &str) -> Vec<RouteSettings> {
        self.lock().routes.get(service).cloned().unwrap_or_default()
    }
}

impl Router for FakeRouter {
    fn set_routes(&self, service: &str, routes: &[RouteSettings]) {
        self.lock()
            .routes
            .insert(service.to_string(), routes.to_vec());
    }
    fn add_backend(
        &self,
        service: &str,
        _index: usize,
        task: &str,
        addr: SocketAddr,
        adopted: bool,
    ) {
        let mut s = self.lock();
        if s.backends.contains_key(task) {
            return;
        }
        s.backends
            .insert(task.to_string(), (service.to_string(), addr, adopted));
        if s.hold_checks {
            return;
        }
        let healthy = !s.new_ones_fail;
        s.health.insert(task.to_string(), healthy);
        if let Some(tx) = &s.events {
            let _ = tx.send(HealthEvent {
                service: service.to_string(),
                task: task.to_string(),
                addr,
                healthy,
                reason: "registered".into(),
            });
        }
    }
    fn task_health(&self, task: &str) -> Option<bool> {
        self.lock().health.get(task).copied()
    }
    fn task_failure(&self, task: &str) -> Option<String> {
        (self.task_health(task) == Some(false)).then(|| "/health returned 500 (fake)".into())
    }
    fn all_checked_once(&self) -> bool {
        let s = self.lock();
        s.backends.keys().all(|t| s.health.contains_key(t))
    }
    fn drain(&self, task: &str) -> Drain {
        let mut s = self.lock();
        if s.backends.remove(task).is_some() {
            s.health.remove(task);
            s.drained.push(task.to_string());
            if let Some(engine) = &s.log {
                engine.log_call(format!("drain {task}"));
            }
        }
        Box::pin(async { 0 })
    }
    fn remove_task(&self, task: &str) {
        let mut s = self.lock();
        s.backends.remove(task);
        s.health.remove(task);
    }
}

/// A supervisor running on fakes.
pub struct Harness {
    pub engine: FakeEngine,
    pub router: FakeRouter,
    pub dir: PathBuf,
    pub status: Arc<RwLock<Snapshot>>,
    pub changes: Arc<Changes>,
    desired: watch::Sender<DesiredState>,
    shutdown: Option<drain::Signal>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A host of 2 cores and 4 GiB.
pub const CAPACITY: HostCapacity = HostCapacity {
    memory_mib: 4096,
    cpu_units: 2048,
};

pub const IMAGE: &str = "app:1";

impl Harness {
    /// A supervisor with nothing desired yet (unknown) and an empty engine.
    pub async fn start() -> Harness {
        let dir =
            std::env::temp_dir().join(format!("dockhand-sup-{}", crate::store::random_hex(6)));
        let clock = Clock::paused();
        let engine = FakeEngine::new(clock, CAPACITY);
        engine.add_image(IMAGE);
        Harness::start_on(engine, dir, DesiredState::Unknown).await
    }

    /// A supervisor on an existing engine and data directory (an agent
    /// restart), its source starting at `initial`.
    pub async fn start_on(engine: FakeEngine, dir: PathBuf, initial: DesiredState) -> Harness {
        let mut cfg = Config::defaults();
        cfg.data_dir = dir.clone();
        cfg.cluster = "test".into();
        cfg.dynamic_port_range = (42000, 42999);
        cfg.container_stop_timeout = Duration::from_secs(5);
        cfg.image_pull_behavior = crate::config::PullBehavior::PreferCached;
        cfg.image_cleanup.disabled = true;
        let cfg = Arc::new(cfg);
        let store = Store::open(&dir).expect("open store");
        let (desired, desired_rx) = watch::channel(initial);
        let (health_tx, health_rx) = mpsc::unbounded_channel();
        let router = FakeRouter::default();
        router.lock().events = Some(health_tx);
        router.lock().log = Some(engine.clone());
        let status = Arc::new(RwLock::new(Snapshot::default()));
        let changes = Arc::new(Changes::default());
        let (ready, _) = tokio::sync::oneshot::channel();
        let sup = Supervisor::new(Parts {
            cfg: Arc::clone(&cfg),
            engine: engine.clone(),
            router: router.clone(),
            clock: engine_clock(&engine),
            store,
            desired: desired_rx,
            capacity: CAPACITY,
            status: Arc::clone(&status),
            changes: Arc::clone(&changes),
            health_events: health_rx,
            ready,
        });
        let (signal, watch) = drain::channel();
        let task = tokio::spawn(sup.run(watch));
        Harness {
            engine,
            router,
            dir,
            status,
            changes,
            desired,
            shutdown: Some(signal),
            task: Some(task),
        }
    }

    /// Stops this supervisor (containers stay) and starts another on the
    /// same engine and data directory, as an agent restart does.
    pub async fn restart(mut self, initial: DesiredState) -> Harness {
        self.stop().await;
        let engine = self.engine.clone();
        let dir = self.dir.clone();
        Harness::start_on(engine, dir, initial).await
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            s.drain().await;
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Managed mode: `tasks` (id, running, definition) are the control
    /// endpoint's desired set, all of service `web`.
    pub fn set_managed(&self, tasks: &[(&str, bool, dockhand_model::TaskDefinition)]) {
        let mut m = crate::desired::Managed {
            sequence: 1,
            tasks: std::collections::BTreeMap::new(),
            services: std::collections::BTreeMap::new(),
        };
        for (id, running, td) in tasks {
            m.tasks.insert(
                id.to_string(),
                crate::desired::ManagedTask {
                    arn: format!("arn:aws:ecs:us-east-1:000000000000:task/test/{id}"),
                    service: "web".into(),
                    revision: 1,
                    task_definition: td.clone(),
                    running: *running,
                    stop_reason: None,
                },
            );
        }
        self.desired.send_replace(DesiredState::Known(Desired {
            managed: Some(m),
            ..Desired::default()
        }));
    }

    pub fn set(&self, services: Vec<ServiceSpec>) {
        let mut d = Desired::default();
        for s in services {
            d.services.insert(s.service_name.clone(), s);
        }
        self.desired.send_replace(DesiredState::Known(d));
    }

    /// Makes `spec` the only desired service and waits until `n` of its
    /// tasks run (and, for a routed service, are registered healthy).
    pub async fn deploy(&self, spec: ServiceSpec, n: usize) {
        let name = spec.service_name.clone();
        let routed = !spec.load_balancers.is_empty();
        self.set(vec![spec]);
        self.wait(
            Duration::from_secs(120),
            &format!("{n} tasks of {name}"),
            |h| h.running(&name).len() == n && (!routed || h.router.backends().len() == n),
        )
        .await;
    }

    pub fn set_state(&self, state: DesiredState) {
        self.desired.send_replace(state);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn service_status(&self, name: &str) -> Option<crate::status::ServiceStatus> {
        self.snapshot()
            .services
            .into_iter()
            .find(|s| s.name == name)
    }

    pub fn changes(&self) -> Vec<Change> {
        self.changes.since(0, usize::MAX).0
    }

    pub fn running(&self, service: &str) -> Vec<FakeContainer> {
        self.engine.running(service)
    }

    /// Distinct task ids of running containers of `service`.
    pub fn running_tasks(&self, service: &str) -> BTreeSet<String> {
        self.running(service)
            .iter()
            .filter_map(|c| c.label(crate::containers::label::TASK).map(str::to_string))
            .collect()
    }

    /// Advances (virtual) time in small steps until `cond` holds; panics
    /// with `what` after `limit`.
    pub async fn wait(&self, limit: Duration, what: &str, mut cond: impl FnMut(&Harness) -> bool) {
        let start = tokio::time::Instant::now();
        loop {
            if cond(self) {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "not reached within {limit:?}: {what}\nengine calls: {:#?}\nstatus: {:#?}",
                    self.engine.calls(),
                    self.snapshot().services
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lets (virtual) time pass.
    pub async fn idle(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The engine's clock (the supervisor and its engine share it).
fn engine_clock(_e: &FakeEngine) -> Clock {
    // Both follow tokio's paused clock; their bases differ by microseconds.
    Clock::paused()
}

/// A service of `count` tasks of one container answering on port 5000.
pub fn service(name: &str, count: u32) -> ServiceSpec {
    spec(json!({
        "serviceName": name,
        "desiredCount": count,
        "taskDefinition": {
            "family": name,
            "containerDefinitions": [{
                "name": "web", "image": IMAGE, "memory": 64,
                "portMappings": [{"containerPort": 5000, "hostPort": 0}],
            }]
        }
    }))
}

/// The same service behind the proxy, checked every second.
pub fn routed(name: &str, count: u32) -> ServiceSpec {
    let mut v = serde_json::to_value(service(name, count)).expect("serializes");
    v["loadBalancers"] = json!([{
        "containerName": "web", "containerPort": 5000,
        "healthCheck": {"path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1,
                        "healthyThresholdCount": 2, "unhealthyThresholdCount": 2},
        "deregistrationDelaySeconds": 1,
    }]);
    spec(v)
}

/// Parses a service from JSON, panicking on an invalid one (a test bug).
pub fn spec(v: Value) -> ServiceSpec {
    ServiceSpec::parse(&v.to_string())
        .unwrap_or_else(|e| panic!("test service is invalid: {e:?}"))
        .spec
}

/// `spec` with an environment variable set on its first container (a new
/// revision, and a way to give the fake container a behaviour).
pub fn with_env(mut s: ServiceSpec, name: &str, value: &str) -> ServiceSpec {
    s.task_definition.container_definitions[0].environment.push(
        dockhand_model::taskdef::KeyValue {
            name: name.into(),
            value: value.into(),
        },
    );
    s
}

/// `spec` with its deployment configuration set.
pub fn with_deployment(mut s: ServiceSpec, min: i64, max: i64) -> ServiceSpec {
    s.deployment_configuration.minimum_healthy_percent = min;
    s.deployment_configuration.maximum_percent = max;
    s
}

pub const MINUTE: Duration = Duration::from_secs(60);
