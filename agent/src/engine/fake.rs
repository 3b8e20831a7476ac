//! An engine in memory, for the supervisor's rule tests: containers are
//! records a test can crash, make healthy or unhealthy, and inspect; every
//! call is logged so a test can check order (drain before stop, dependency
//! before dependent).
//!
//! A container's behaviour comes from its environment, so a task
//! definition in a test says what its containers do:
//! - `FAKE_EXIT=<code>`: exits with that code as soon as it starts;
//! - `FAKE_HEALTH=healthy|unhealthy|starting`: its health check status
//!   once started (default healthy, when it has a health check);
//! - `FAKE_START_FAIL=1`: the engine refuses to start it.
//!
//! Times come from the supervisor's [`Clock`], so tests run with tokio's
//! clock paused and minutes pass in milliseconds.

use super::{
    ContainerSpec, Credentials, Engine, EngineError, EngineEvent, Health, HostCapacity, ImageInfo,
    Observed, RunState,
};
use crate::clock::Clock;
use crate::containers::label;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub id: String,
    pub spec: ContainerSpec,
    pub state: RunState,
    pub health: Health,
    pub started_at: Option<SystemTime>,
    pub restart_count: i64,
}

impl FakeContainer {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.spec.labels.get(key).map(String::as_str)
    }

    fn env(&self, key: &str) -> Option<&str> {
        self.spec
            .env
            .iter()
            .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
    }
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, FakeContainer>,
    next_id: u64,
    images: BTreeSet<String>,
    /// Images whose pull fails.
    unpullable: BTreeSet<String>,
    /// How long a pull takes.
    pull_time: Duration,
    /// Engine calls, in order: `create NAME`, `start ID`, `stop ID`, …
    calls: Vec<String>,
    events: Vec<mpsc::Sender<EngineEvent>>,
    /// Every call fails while set (the engine is down).
    down: bool,
    /// Called with each container as it is stopped, before it exits.
    on_stop: Option<StopHook>,
}

type StopHook = Arc<dyn Fn(&FakeContainer) + Send + Sync>;

/// The fake engine; clones share one state.
#[derive(Clone)]
pub struct FakeEngine {
    state: Arc<Mutex<State>>,
    clock: Clock,
    capacity: HostCapacity,
}

impl FakeEngine {
    pub fn new(clock: Clock, capacity: HostCapacity) -> FakeEngine {
        FakeEngine {
            state: Arc::new(Mutex::new(State::default())),
            clock,
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every event subscriber.
    fn notify(s: &mut State) {
        s.events.retain(|tx| !tx.is_closed());
        for tx in &s.events {
            let _ = tx.try_send(EngineEvent::Changed);
        }
    }

    fn check_up(s: &State) -> Result<(), EngineError> {
        if s.down {
            Err(EngineError::Other("engine is down (test)".into()))
        } else {
            Ok(())
        }
    }

    /// Makes the engine fail every call (or answer again).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Calls `hook` with each container the moment it is asked to stop
    /// (what the container would see as its SIGTERM).
    pub fn on_stop(&self, hook: impl Fn(&FakeContainer) + Send + Sync + 'static) {
        self.lock().on_stop = Some(Arc::new(hook));
    }

    /// An image present in the local store.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(image.to_string());
    }

    /// Pulls of `image` fail.
    pub fn fail_pulls_of(&self, image: &str) {
        self.lock().unpullable.insert(image.to_string());
    }

    pub fn set_pull_time(&self, d: Duration) {
        self.lock().pull_time = d;
    }

    /// Every container, as the engine has it.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.lock().containers.values().cloned().collect()
    }

    /// Running containers of `service`.
    pub fn running(&self, service: &str) -> Vec<FakeContainer> {
        self.containers()
            .into_iter()
            .filter(|c| c.state == RunState::Running && c.label(label::SERVICE) == Some(service))
            .collect()
    }

    /// Adds a line to the call log (for what happens beside the engine).
    pub fn log_call(&self, line: String) {
        self.lock().calls.push(line);
    }

    /// The engine calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// A running container exits with `code` (a crash, or `docker kill`).
    pub fn exit(&self, id: &str, code: i64) {
        let now = self.clock.now();
        let mut s = self.lock();
        if let Some(c) = s.containers.get_mut(id) {
            c.state = RunState::Exited {
                code,
                finished_at: Some(now),
            };
        }
        s.calls.push(format!("exit {id} {code}"));
        Self::notify(&mut s);
    }

    /// Sets a container's health check status.
    pub fn set_health(&self, id: &str, health: Health) {
        let mut s = self.lock();
        if let Some(c) = s.containers.get_mut(id) {
            c.health = health;
        }
        Self::notify(&mut s);
    }

    /// The engine restarts: every running container stops (code 0, as
    /// dockerd stops them), and the event stream breaks.
    pub fn restart(&self) {
        let now = self.clock.now();
        let mut s = self.lock();
        for c in s.containers.values_mut() {
            if c.state == RunState::Running {
                c.state = RunState::Exited {
                    code: 0,
                    finished_at: Some(now),
                };
            }
        }
        s.calls.push("engine restart".into());
        s.events.retain(|tx| !tx.is_closed());
        for tx in &s.events {
            let _ = tx.try_send(EngineEvent::Lost);
        }
    }

    /// Puts a container back to created-never-started: what an agent
    /// stopped between its create and start calls leaves.
    pub fn unstart(&self, id: &str) {
        let mut s = self.lock();
        if let Some(c) = s.containers.get_mut(id) {
            c.state = RunState::Created;
        }
        Self::notify(&mut s);
    }

    /// Removes a container behind the agent's back.
    pub fn vanish(&self, id: &str) {
        let mut s = self.lock();
        s.containers.remove(id);
        Self::notify(&mut s);
    }

    fn observed(c: &FakeContainer) -> Observed {
        Observed {
            id: c.id.clone(),
            name: c.spec.name.clone(),
            labels: c.spec.labels.clone().into_iter().collect(),
            image: c.spec.image.clone(),
            state: c.state.clone(),
            health: c.health,
            health_output: None,
            started_at: c.started_at,
            ports: c
                .spec
                .port_bindings
                .iter()
                .map(|b| (b.container_port, b.protocol.to_string(), b.host_port))
                .collect(),
            restart_count: c.restart_count,
            oom_killed: false,
        }
    }

    fn find<'a>(s: &'a mut State, id: &str) -> Option<&'a mut FakeContainer> {
        if s.containers.contains_key(id) {
            return s.containers.get_mut(id);
        }
        // Docker also accepts a container's name.
        s.containers.values_mut().find(|c| c.spec.name == id)
    }

    fn not_found(id: &str) -> EngineError {
        EngineError::Api {
            status: 404,
            message: format!("No such container: {id}"),
        }
    }
}

impl Engine for FakeEngine {
    async fn observe(&self, instance: &str) -> Result<Vec<Observed>, EngineError> {
        let s = self.lock();
        Self::check_up(&s)?;
        Ok(s.containers
            .values()
            .filter(|c| c.label(label::INSTANCE) == Some(instance))
            .map(Self::observed)
            .collect())
    }

    async fn inspect(&self, id: &str) -> Result<Observed, EngineError> {
        let mut s = self.lock();
        Self::check_up(&s)?;
        Self::find(&mut s, id)
            .map(|c| Self::observed(c))
            .ok_or_else(|| Self::not_found(id))
    }

    async fn create(&self, spec: ContainerSpec) -> Result<String, EngineError> {
        let mut s = self.lock();
        Self::check_up(&s)?;
        if s.containers.values().any(|c| c.spec.name == spec.name) {
            return Err(EngineError::Api {
                status: 409,
                message: format!("name {} is in use", spec.name),
            });
        }
        s.next_id += 1;
        let id = format!("c{:04}", s.next_id);
        s.calls.push(format!("create {}", spec.name));
        s.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                spec,
                state: RunState::Created,
                health: Health::None,
                started_at: None,
                restart_count: 0,
            },
        );
        Self::notify(&mut s);
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        let now = self.clock.now();
        let mut s = self.lock();
        Self::check_up(&s)?;
        s.calls.push(format!("start {id}"));
        let c = Self::find(&mut s, id).ok_or_else(|| Self::not_found(id))?;
        if c.env("FAKE_START_FAIL").is_some() {
            return Err(EngineError::Api {
                status: 500,
                message: "cannot start container (test)".into(),
            });
        }
        if c.state == RunState::Running {
            return Ok(());
        }
        if matches!(c.state, RunState::Exited { .. }) {
            c.restart_count += 1;
        }
        c.started_at = Some(now);
        c.state = match c.env("FAKE_EXIT").and_then(|v| v.parse().ok()) {
            Some(code) => RunState::Exited {
                code,
                finished_at: Some(now),
            },
            None => RunState::Running,
        };
        c.health = match (c.spec.healthcheck.is_some(), c.env("FAKE_HEALTH")) {
            (false, _) => Health::None,
            (true, Some("unhealthy")) => Health::Unhealthy,
            (true, Some("starting")) => Health::Starting,
            (true, _) => Health::Healthy,
        };
        Self::notify(&mut s);
        Ok(())
    }

    async fn stop(&self, id: &str, _timeout: Duration) -> Result<(), EngineError> {
        let now = self.clock.now();
        let mut s = self.lock();
        Self::check_up(&s)?;
        s.calls.push(format!("stop {id}"));
        let hook = s.on_stop.clone();
        if let Some(c) = Self::find(&mut s, id) {
            if let Some(hook) = hook {
                hook(c);
            }
            if c.state == RunState::Running {
                c.state = RunState::Exited {
                    code: 143,
                    finished_at: Some(now),
                };
            }
        }
        Self::notify(&mut s);
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let mut s = self.lock();
        Self::check_up(&s)?;
        s.calls.push(format!("remove {id}"));
        let key = Self::find(&mut s, id).map(|c| c.id.clone());
        if let Some(k) = key {
            s.containers.remove(&k);
        }
        Self::notify(&mut s);
        Ok(())
    }

    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        let s = self.lock();
        Self::check_up(&s)?;
        Ok(s.images.contains(image))
    }

    async fn pull(
        &self,
        image: &str,
        _timeout: Duration,
        _credentials: Option<Credentials>,
    ) -> Result<(), String> {
        let wait = {
            let mut s = self.lock();
            s.calls.push(format!("pull {image}"));
            s.pull_time
        };
        tokio::time::sleep(wait).await;
        let mut s = self.lock();
        if s.unpullable.contains(image) {
            return Err(format!("pull {image}: registry unreachable (test)"));
        }
        s.images.insert(image.to_string());
        Ok(())
    }

    async fn capacity(&self) -> Result<HostCapacity, EngineError> {
        Ok(self.capacity)
    }

    async fn version(&self) -> Result<String, EngineError> {
        Ok("fake".into())
    }

    fn events(&self, _instance: &str, _since: SystemTime) -> mpsc::Receiver<EngineEvent> {
        let (tx, rx) = mpsc::channel(64);
        self.lock().events.push(tx);
        rx
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        Ok(self
            .lock()
            .images
            .iter()
            .map(|i| ImageInfo {
                tags: vec![i.clone()],
                created: 0,
            })
            .collect())
    }

    async fn images_in_use(&self) -> Result<BTreeSet<String>, EngineError> {
        Ok(self
            .lock()
            .containers
            .values()
            .map(|c| c.spec.image.clone())
            .collect())
    }

    async fn remove_image(&self, image: &str) -> Result<(), EngineError> {
        let mut s = self.lock();
        if s.containers.values().any(|c| c.spec.image == image) {
            return Err(EngineError::Api {
                status: 409,
                message: "image is in use".into(),
            });
        }
        s.images.remove(image);
        Ok(())
    }
}
