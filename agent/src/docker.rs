//! The Docker Engine, as the supervisor sees it: connect, observe this
//! agent's containers by label, and turn a task definition into containers.
//!
//! Docker responses are untrusted like any input: a missing or malformed
//! field becomes a default or an error, never a panic.

use crate::taskdef::{ContainerDefinition, NetworkMode, TaskDefinition};
use bollard::models::{
    ContainerCreateBody, HealthConfig, HealthStatusEnum, HostConfig, HostConfigLogConfig,
    PortBinding, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Labels Dockhand puts on every container it creates.
pub mod label {
    pub const INSTANCE: &str = "dockhand.instance";
    pub const SERVICE: &str = "dockhand.service";
    pub const TASK: &str = "dockhand.task";
    pub const REVISION: &str = "dockhand.revision";
    pub const DIGEST: &str = "dockhand.digest";
    pub const CONTAINER: &str = "dockhand.container";
    /// `true` or `false`: whether the container's exit stops its task.
    pub const ESSENTIAL: &str = "dockhand.essential";
    /// Seconds between SIGTERM and SIGKILL when stopping.
    pub const STOP_TIMEOUT: &str = "dockhand.stop-timeout";
    /// Position in the task's start order; stops go in reverse.
    pub const START_ORDER: &str = "dockhand.start-order";
    /// MiB and CPU units the task reserves (on its first container only).
    pub const TASK_MEMORY: &str = "dockhand.task-memory";
    pub const TASK_CPU: &str = "dockhand.task-cpu";
    /// `period=SECONDS;ignore=CODE,CODE` when the restart policy is enabled.
    pub const RESTART_POLICY: &str = "dockhand.restart-policy";
    pub const ECS_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
    pub const ECS_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
    pub const ECS_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
    pub const ECS_VERSION: &str = "com.amazonaws.ecs.task-definition-version";
    pub const ECS_CLUSTER: &str = "com.amazonaws.ecs.cluster";
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to Docker at {host}: {source}")]
    Connect {
        host: String,
        source: bollard::errors::Error,
    },
    #[error("Docker: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error("Docker did not answer within {}s", .0.as_secs())]
    Timeout(std::time::Duration),
}

impl DockerError {
    /// The HTTP status Docker answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            DockerError::Api(bollard::errors::Error::DockerResponseServerError {
                status_code,
                ..
            }) => Some(*status_code),
            _ => None,
        }
    }
}

/// Connects to `host` (`unix:///path` or `tcp://host:port`) and agrees on an
/// API version, so an older engine (Debian's 20.10) is spoken to in its own.
pub async fn connect(host: &str) -> Result<Docker, DockerError> {
    let docker = Docker::connect_with_host(host).map_err(|source| DockerError::Connect {
        host: host.to_string(),
        source,
    })?;
    docker
        .negotiate_version()
        .await
        .map_err(|source| DockerError::Connect {
            host: host.to_string(),
            source,
        })
}

/// What the host offers to tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    pub memory_mib: u64,
    pub cpu_units: u64,
}

pub async fn capacity(docker: &Docker) -> Result<HostCapacity, DockerError> {
    let info = docker.info().await?;
    Ok(HostCapacity {
        memory_mib: info.mem_total.unwrap_or(0).max(0) as u64 / (1024 * 1024),
        cpu_units: info.ncpu.unwrap_or(1).max(1) as u64 * 1024,
    })
}

/// Docker's run state of one container.
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

/// Docker's health check status of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No HEALTHCHECK is configured.
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

impl Observed {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
    pub fn is_essential(&self) -> bool {
        self.label(label::ESSENTIAL) != Some("false")
    }
    pub fn start_order(&self) -> u32 {
        self.label(label::START_ORDER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    pub fn is_running(&self) -> bool {
        self.state == RunState::Running
    }

    /// Whether the restart policy (from the container's label) restarts it
    /// now: `Ok(())` if so, else why not.
    pub fn restart_decision(&self) -> Option<Result<(), String>> {
        let policy = self.label(label::RESTART_POLICY)?;
        let RunState::Exited { code, finished_at } = self.state else {
            return None;
        };
        let mut period = 0u64;
        let mut ignored: Vec<i64> = Vec::new();
        for part in policy.split(';') {
            match part.split_once('=') {
                Some(("period", v)) => period = v.parse().unwrap_or(0),
                Some(("ignore", v)) => {
                    ignored = v.split(',').filter_map(|c| c.parse().ok()).collect()
                }
                _ => {}
            }
        }
        if ignored.contains(&code) {
            return Some(Err(format!("exit code {code} is in ignoredExitCodes")));
        }
        let ran = match (self.started_at, finished_at) {
            (Some(s), Some(f)) => f.duration_since(s).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        if ran.as_secs() < period {
            return Some(Err(format!(
                "it ran {:.1}s, less than restartAttemptPeriod {period}s",
                ran.as_secs_f64()
            )));
        }
        Some(Ok(()))
    }
}

fn parse_time(s: Option<&str>) -> Option<SystemTime> {
    let s = s?;
    // Docker writes 0001-01-01T00:00:00Z for "never".
    if s.starts_with("0001-") {
        return None;
    }
    humantime::parse_rfc3339_weak(s).ok()
}

/// Lists and inspects every container labelled with this agent's instance id.
pub async fn observe(docker: &Docker, instance: &str) -> Result<Vec<Observed>, DockerError> {
    let filters: HashMap<&str, Vec<String>> =
        HashMap::from([("label", vec![format!("{}={instance}", label::INSTANCE)])]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    let mut out = Vec::with_capacity(list.len());
    for summary in list {
        let Some(id) = summary.id else { continue };
        match docker.inspect_container(&id, None).await {
            Ok(c) => out.push(from_inspect(id, c)),
            // Removed between list and inspect: it is simply gone.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn from_inspect(id: String, c: bollard::models::ContainerInspectResponse) -> Observed {
    use bollard::models::ContainerStateStatusEnum as S;
    let state = c.state.unwrap_or_default();
    let run = match state.status {
        Some(S::CREATED) => RunState::Created,
        Some(S::RUNNING) => RunState::Running,
        Some(S::EXITED) => RunState::Exited {
            code: state.exit_code.unwrap_or(-1),
            finished_at: parse_time(state.finished_at.as_deref()),
        },
        Some(other) => RunState::Other(other.to_string()),
        None => RunState::Other("unknown".into()),
    };
    let (health, health_output) = match &state.health {
        None => (Health::None, None),
        Some(h) => {
            let status = match h.status {
                Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
                Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
                Some(HealthStatusEnum::STARTING) => Health::Starting,
                _ => Health::None,
            };
            let output = h
                .log
                .as_ref()
                .and_then(|l| l.last())
                .and_then(|r| r.output.as_deref())
                .map(|o| o.trim().chars().take(512).collect());
            (status, output)
        }
    };
    let mut ports = Vec::new();
    if let Some(bindings) = c
        .host_config
        .as_ref()
        .and_then(|h| h.port_bindings.as_ref())
    {
        for (key, list) in bindings {
            let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
            let Ok(container_port) = port.parse::<u16>() else {
                continue;
            };
            for b in list.iter().flatten() {
                if let Some(hp) = b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()) {
                    ports.push((container_port, proto.to_string(), hp));
                }
            }
        }
    }
    ports.sort();
    let config = c.config.unwrap_or_default();
    Observed {
        id,
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        labels: config.labels.unwrap_or_default(),
        image: config.image.unwrap_or_default(),
        state: run,
        health,
        health_output,
        started_at: parse_time(state.started_at.as_deref()),
        ports,
        restart_count: c.restart_count.unwrap_or(0),
        oom_killed: state.oom_killed.unwrap_or(false),
    }
}

/// Everything needed to create one task's containers.
pub struct TaskLaunch<'a> {
    pub instance: &'a str,
    pub cluster: &'a str,
    pub service: &'a str,
    pub task_id: &'a str,
    pub task_arn: &'a str,
    pub revision: u32,
    pub digest: &'a str,
    pub def: &'a TaskDefinition,
    pub bind_address: IpAddr,
    pub default_stop_timeout: Duration,
    /// Host port for each `(container index, mapping index)` whose
    /// `hostPort` is 0 or absent.
    pub dynamic_ports: &'a BTreeMap<(usize, usize), u16>,
}

impl TaskLaunch<'_> {
    /// Docker's name for a container: ECS's `ecs-family-rev-name-id` shape.
    pub fn container_name(&self, c: &ContainerDefinition) -> String {
        format!(
            "dockhand-{}-{}-{}-{}",
            self.def.family,
            self.revision,
            c.name,
            &self.task_id[..self.task_id.len().min(12)]
        )
    }

    /// The create request for container `index`, placed `order`-th in the
    /// start order.
    pub fn container_body(&self, index: usize, order: usize) -> ContainerCreateBody {
        let c = &self.def.container_definitions[index];
        let mut labels: HashMap<String, String> = c
            .docker_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let stop_timeout = c
            .stop_timeout
            .map(|s| s.max(0) as u64)
            .unwrap_or(self.default_stop_timeout.as_secs());
        if let Some(rp) = c.restart_policy.as_ref().filter(|rp| rp.enabled) {
            let ignore: Vec<String> = rp.ignored_exit_codes.iter().map(i64::to_string).collect();
            let period = rp
                .restart_attempt_period
                .unwrap_or(crate::taskdef::DEFAULT_RESTART_ATTEMPT_PERIOD);
            labels.insert(
                label::RESTART_POLICY.to_string(),
                format!("period={period};ignore={}", ignore.join(",")),
            );
        }
        for (k, v) in [
            (label::INSTANCE, self.instance.to_string()),
            (label::SERVICE, self.service.to_string()),
            (label::TASK, self.task_id.to_string()),
            (label::REVISION, self.revision.to_string()),
            (label::DIGEST, self.digest.to_string()),
            (label::CONTAINER, c.name.clone()),
            (label::ESSENTIAL, c.is_essential().to_string()),
            (label::STOP_TIMEOUT, stop_timeout.to_string()),
            (label::START_ORDER, order.to_string()),
            (label::TASK_MEMORY, self.def.memory_mib().to_string()),
            (label::TASK_CPU, self.def.cpu_units().to_string()),
            (label::ECS_TASK_ARN, self.task_arn.to_string()),
            (label::ECS_CONTAINER_NAME, c.name.clone()),
            (label::ECS_FAMILY, self.def.family.clone()),
            (label::ECS_VERSION, self.revision.to_string()),
            (label::ECS_CLUSTER, self.cluster.to_string()),
        ] {
            labels.insert(k.to_string(), v);
        }

        let bridge = self.def.network_mode == NetworkMode::Bridge;
        let mut exposed = Vec::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for (j, pm) in c.port_mappings.iter().enumerate() {
            let key = format!(
                "{}/{}",
                pm.container_port,
                pm.protocol.unwrap_or_default().as_str()
            );
            exposed.push(key.clone());
            if !bridge {
                continue;
            }
            let host_port = match pm.host_port {
                Some(p) if p > 0 => p as u16,
                _ => self.dynamic_ports.get(&(index, j)).copied().unwrap_or(0),
            };
            bindings
                .entry(key)
                .or_default()
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(self.bind_address.to_string()),
                    host_port: Some(host_port.to_string()),
                });
        }

        let binds: Vec<String> = c
            .mount_points
            .iter()
            .filter_map(|m| {
                let v = self
                    .def
                    .volumes
                    .iter()
                    .find(|v| v.name == m.source_volume)?;
                let src = v.host.as_ref()?.source_path.as_ref()?;
                let mode = if m.read_only { "ro" } else { "rw" };
                Some(format!("{src}:{}:{mode}", m.container_path))
            })
            .collect();

        let secs = |s: Option<i64>| s.map(|v| v * 1_000_000_000);
        let healthcheck = c.health_check.as_ref().map(|h| HealthConfig {
            test: Some(h.command.clone()),
            // ECS defaults: interval 30 s, timeout 5 s, retries 3.
            interval: secs(h.interval.or(Some(30))),
            timeout: secs(h.timeout.or(Some(5))),
            retries: h.retries.or(Some(3)),
            start_period: secs(h.start_period),
            start_interval: None,
        });

        ContainerCreateBody {
            image: Some(c.image.clone()),
            cmd: c.command.clone(),
            entrypoint: c.entry_point.clone(),
            env: Some(
                c.environment
                    .iter()
                    .map(|kv| format!("{}={}", kv.name, kv.value))
                    .collect(),
            ),
            user: c.user.clone(),
            working_dir: c.working_directory.clone(),
            labels: Some(labels),
            exposed_ports: if exposed.is_empty() {
                None
            } else {
                Some(exposed)
            },
            healthcheck,
            stop_timeout: Some(stop_timeout as i64),
            host_config: Some(HostConfig {
                network_mode: Some(match self.def.network_mode {
                    NetworkMode::Host => "host".into(),
                    _ => "bridge".into(),
                }),
                port_bindings: if bindings.is_empty() {
                    None
                } else {
                    Some(bindings)
                },
                memory: c.memory.map(|m| m * 1024 * 1024),
                memory_reservation: c.memory_reservation.map(|m| m * 1024 * 1024),
                cpu_shares: if c.cpu > 0 { Some(c.cpu.max(2)) } else { None },
                ulimits: if c.ulimits.is_empty() {
                    None
                } else {
                    Some(
                        c.ulimits
                            .iter()
                            .map(|u| ResourcesUlimits {
                                name: Some(u.name.clone()),
                                soft: Some(u.soft_limit),
                                hard: Some(u.hard_limit),
                            })
                            .collect(),
                    )
                },
                binds: if binds.is_empty() { None } else { Some(binds) },
                log_config: c.log_configuration.as_ref().map(|l| HostConfigLogConfig {
                    typ: Some(l.log_driver.clone()),
                    config: Some(
                        l.options
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

pub async fn create(
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
) -> Result<String, DockerError> {
    let r = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(name).build()),
            body,
        )
        .await?;
    Ok(r.id)
}

/// Starts a container; one already running is fine.
pub async fn start(docker: &Docker, id: &str) -> Result<(), DockerError> {
    match docker.start_container(id, None).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `docker stop -t timeout`; a container already stopped or gone is fine.
pub async fn stop(docker: &Docker, id: &str, timeout: Duration) -> Result<(), DockerError> {
    let t = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
    match docker
        .stop_container(
            id,
            Some(StopContainerOptionsBuilder::default().t(t).build()),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304 | 404,
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes a stopped container (and its anonymous volumes); gone is fine.
pub async fn remove(docker: &Docker, id: &str) -> Result<(), DockerError> {
    match docker
        .remove_container(
            id,
            Some(
                RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // 409: removal already in progress.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `image` is in the local image store.
pub async fn image_present(docker: &Docker, image: &str) -> Result<bool, DockerError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Pulls `image`, logging progress, until done or `timeout`.
pub async fn pull(
    docker: &Docker,
    image: &str,
    timeout: Duration,
    credentials: Option<bollard::auth::DockerCredentials>,
) -> Result<(), String> {
    let (repo, tag) = split_image(image);
    let options = CreateImageOptionsBuilder::default()
        .from_image(repo)
        .tag(tag)
        .build();
    let mut stream = docker.create_image(Some(options), None, credentials);
    let run = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(e);
                    }
                    let layer = info.id.as_deref().unwrap_or("");
                    match info.status.as_deref() {
                        // One line per layer and per image: progress an
                        // operator can follow without a line per chunk.
                        Some(s @ ("Pull complete" | "Already exists")) => {
                            tracing::info!(image, layer, "pull: {s}")
                        }
                        Some(s) if s.starts_with("Status:") || s.starts_with("Digest:") => {
                            tracing::info!(image, "pull: {s}")
                        }
                        Some(s) => tracing::debug!(image, layer, "pull: {s}"),
                        None => {}
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r.map_err(|e| pull_error(image, &e)),
        Err(_) => Err(format!(
            "pull {image}: timed out after {}s",
            timeout.as_secs()
        )),
    }
}

/// A pull failure as an operator should read it: an authentication failure
/// says "unauthorized" (Docker words it several ways), and the image is named.
fn pull_error(image: &str, docker_message: &str) -> String {
    let m = docker_message.to_ascii_lowercase();
    let unauthorized = [
        "unauthorized",
        "no basic auth credentials",
        "authentication required",
        "denied",
    ]
    .iter()
    .any(|w| m.contains(w));
    if unauthorized {
        format!("pull {image}: unauthorized (check the registry credentials in Docker's config.json): {docker_message}")
    } else {
        format!("pull {image}: {docker_message}")
    }
}

/// `registry/repo:tag` into (`registry/repo`, `tag`); digests stay whole.
fn split_image(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last_slash = image.rfind('/').unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_at_the_tag_not_the_registry_port() {
        assert_eq!(split_image("nginx"), ("nginx", "latest"));
        assert_eq!(split_image("training/webapp:v2"), ("training/webapp", "v2"));
        assert_eq!(
            split_image("127.0.0.1:5000/app"),
            ("127.0.0.1:5000/app", "latest")
        );
        assert_eq!(
            split_image("127.0.0.1:5000/app:1"),
            ("127.0.0.1:5000/app", "1")
        );
        assert_eq!(split_image("app@sha256:abc"), ("app@sha256:abc", ""));
    }

    #[test]
    fn auth_failures_say_unauthorized_and_name_the_image() {
        let e = pull_error(
            "127.0.0.1:5000/app:1",
            "Head \"http://127.0.0.1:5000/v2/app/manifests/1\": no basic auth credentials",
        );
        assert!(
            e.starts_with("pull 127.0.0.1:5000/app:1: unauthorized"),
            "{e}"
        );
        assert_eq!(
            pull_error("x:1", "manifest unknown"),
            "pull x:1: manifest unknown"
        );
    }

    #[test]
    fn docker_times() {
        assert!(parse_time(Some("0001-01-01T00:00:00Z")).is_none());
        let t = parse_time(Some("2026-11-26T07:01:02.123456789Z")).unwrap();
        let nanos = t
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        assert_eq!(
            nanos, 123_456_789,
            "sub-second precision orders tasks started together"
        );
        assert!(parse_time(Some("garbage")).is_none());
    }
}
