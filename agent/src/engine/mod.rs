//! The container engine, as the supervisor sees it: one small interface
//! (observe, create, start, stop, remove, pull, events), like the ECS agent's
//! `DockerClient`, so the supervisor's rules are tested without an engine.
//!
//! - [`docker`]: the Docker Engine API through bollard, version-negotiated.
//! - `fake` (tests only): containers in memory, driven by the test.
//!
//! Engine answers are untrusted like any input: a missing or malformed field
//! becomes a default or an error, never a panic.

pub mod docker;
#[cfg(test)]
pub mod fake;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, SystemTime};

/// What the engine's event stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineEvent {
    /// Something about this agent's containers changed.
    Changed,
    /// The stream broke (the engine went away or restarted); it is being
    /// re-opened. Containers may have died with the engine.
    Lost,
}

/// What the host offers to tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    pub memory_mib: u64,
    pub cpu_units: u64,
}

/// An engine call that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to the container engine at {host}: {message}")]
    Connect { host: String, message: String },
    /// The engine answered with an HTTP error status.
    #[error("Docker: {message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// The engine did not answer in time.
    #[error("Docker did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// The connection failed mid-call, or the answer made no sense.
    #[error("Docker: {0}")]
    Other(String),
}

impl EngineError {
    /// The HTTP status the engine answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            EngineError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An engine's run state of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Created,
    Running,
    Exited {
        code: i64,
        finished_at: Option<SystemTime>,
    },
    /// Paused, restarting, removing, dead: not serving, not finished.
    Other(String),
}

/// A container's own health check status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No health check is configured.
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// One of this agent's containers, as inspected.
#[derive(Debug, Clone)]
pub struct Observed {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub image: String,
    pub state: RunState,
    pub health: Health,
    /// Last health check output, trimmed.
    pub health_output: Option<String>,
    pub started_at: Option<SystemTime>,
    /// `(containerPort, protocol, hostPort)` as published.
    pub ports: Vec<(u16, String, u16)>,
    pub restart_count: i64,
    pub oom_killed: bool,
}

/// A published port of a container to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortBinding {
    pub container_port: u16,
    pub protocol: &'static str,
    pub host_ip: String,
    pub host_port: u16,
}

/// A container health check, in the engine's units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckSpec {
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: i64,
    pub start_period: Option<Duration>,
}

/// A container to create: everything the engine needs, nothing
/// engine-specific. Built from a task definition by [`crate::containers`].
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `5000/tcp` entries.
    pub exposed_ports: Vec<String>,
    pub port_bindings: Vec<PortBinding>,
    pub healthcheck: Option<HealthcheckSpec>,
    pub stop_timeout: Duration,
    /// `bridge` or `host`.
    pub network_mode: &'static str,
    pub memory_bytes: Option<i64>,
    pub memory_reservation_bytes: Option<i64>,
    pub cpu_shares: Option<i64>,
    /// `(name, soft, hard)`.
    pub ulimits: Vec<(String, i64, i64)>,
    /// `source:target:mode` entries.
    pub binds: Vec<String>,
    /// `(driver, options)`.
    pub log_config: Option<(String, BTreeMap<String, String>)>,
}

/// Registry credentials for one pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub auth: Option<String>,
    pub identity_token: Option<String>,
    pub server_address: Option<String>,
}

/// An image in the engine's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub tags: Vec<String>,
    /// Unix seconds.
    pub created: i64,
}

/// The engine interface. Every call is a future that is `Send`, so the
/// supervisor can run calls as owned tasks; implementations are cheap to
/// clone (a shared client).
pub trait Engine: Clone + Send + Sync + 'static {
    /// Every container labelled `dockhand.instance=<instance>`, inspected.
    fn observe(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<Vec<Observed>, EngineError>> + Send;
    /// One container, inspected.
    fn inspect(&self, id: &str) -> impl Future<Output = Result<Observed, EngineError>> + Send;
    /// Creates a container and returns its id. A name already taken is
    /// [`EngineError::Api`] with status 409.
    fn create(
        &self,
        spec: ContainerSpec,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;
    /// Starts a container; one already running is fine.
    fn start(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Stops a container (SIGTERM, then SIGKILL after `timeout`); one
    /// already stopped or gone is fine.
    fn stop(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Removes a container and its anonymous volumes; gone is fine.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Whether `image` is in the local store.
    fn image_present(&self, image: &str) -> impl Future<Output = Result<bool, EngineError>> + Send;
    /// Pulls `image`; the error is a sentence naming the image (and saying
    /// "unauthorized" for a credentials problem).
    fn pull(
        &self,
        image: &str,
        timeout: Duration,
        credentials: Option<Credentials>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Memory and CPU of the host.
    fn capacity(&self) -> impl Future<Output = Result<HostCapacity, EngineError>> + Send;
    /// The engine's version, for registration.
    fn version(&self) -> impl Future<Output = Result<String, EngineError>> + Send;
    /// Container events of `instance` from `since` on: [`EngineEvent::Changed`]
    /// per event (or burst), and [`EngineEvent::Lost`] whenever the stream
    /// broke and is being re-opened. Runs until the receiver is dropped.
    fn events(&self, instance: &str, since: SystemTime)
        -> tokio::sync::mpsc::Receiver<EngineEvent>;
    /// Tagged images (for cleanup).
    fn images(&self) -> impl Future<Output = Result<Vec<ImageInfo>, EngineError>> + Send;
    /// Images any container (of any owner) uses, by the reference it was
    /// created from.
    fn images_in_use(&self) -> impl Future<Output = Result<BTreeSet<String>, EngineError>> + Send;
    /// Removes an image unless a container uses it; gone is fine.
    fn remove_image(&self, image: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
}
