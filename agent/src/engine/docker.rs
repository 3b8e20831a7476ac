//! The Docker Engine through bollard: the production [`Engine`].
//!
//! Docker responses are untrusted like any input: a missing or malformed
//! field becomes a default or an error, never a panic.

use super::{
    ContainerSpec, Credentials, Engine, EngineError, EngineEvent, Health, HostCapacity, ImageInfo,
    Observed, RunState,
};
use crate::containers::label;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HealthStatusEnum, HostConfig, HostConfigLogConfig,
    ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A Docker engine, version-negotiated.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    /// The last inspection of each container, with the list entry's state
    /// and status text it was taken at: a container whose list entry is
    /// unchanged is not inspected again (Docker's status text carries the
    /// health, the exit code and the uptime, so any change shows in it).
    inspected: Arc<Mutex<HashMap<String, (String, Observed)>>>,
}

impl DockerEngine {
    /// Connects to `host` (`unix:///path` or `tcp://host:port`) and agrees on
    /// an API version, so an older engine (Debian's 20.10) is spoken to in
    /// its own.
    pub async fn connect(host: &str) -> Result<DockerEngine, EngineError> {
        let connect_err = |e: bollard::errors::Error| EngineError::Connect {
            host: host.to_string(),
            message: e.to_string(),
        };
        let docker = Docker::connect_with_host(host).map_err(connect_err)?;
        let docker = docker.negotiate_version().await.map_err(connect_err)?;
        Ok(DockerEngine {
            docker,
            inspected: Arc::default(),
        })
    }
}

/// A bollard error as an [`EngineError`], keeping Docker's HTTP status.
fn api(e: bollard::errors::Error) -> EngineError {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => EngineError::Api {
            status: status_code,
            message,
        },
        other => EngineError::Other(other.to_string()),
    }
}

/// Whether `e` is Docker answering `status`.
fn is(e: &bollard::errors::Error, status: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == status)
}

impl Engine for DockerEngine {
    async fn observe(&self, instance: &str) -> Result<Vec<Observed>, EngineError> {
        observe(&self.docker, instance, &self.inspected).await
    }

    async fn inspect(&self, id: &str) -> Result<Observed, EngineError> {
        let c = self.docker.inspect_container(id, None).await.map_err(api)?;
        Ok(from_inspect(id.to_string(), c))
    }

    async fn create(&self, spec: ContainerSpec) -> Result<String, EngineError> {
        let name = spec.name.clone();
        let r = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                create_body(spec),
            )
            .await
            .map_err(api)?;
        Ok(r.id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if is(&e, 304) => Ok(()),
            Err(e) => Err(api(e)),
        }
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<(), EngineError> {
        let t = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(t).build();
        // The engine answers once the container is gone: after up to the
        // stop timeout, then the kill. The client's own limit (120 s) would
        // give up first on a longer stop timeout, and the next pass would
        // send a second SIGTERM, which many programs take as "quit now".
        let docker = self.docker.clone();
        let longest = timeout.saturating_add(Duration::from_secs(30));
        let docker = if longest > docker.timeout() {
            docker.with_timeout(longest)
        } else {
            docker
        };
        match docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is(&e, 304) || is(&e, 404) => Ok(()),
            Err(e) => Err(api(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 409: removal already in progress.
            Err(e) if is(&e, 404) || is(&e, 409) => Ok(()),
            Err(e) => Err(api(e)),
        }
    }

    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is(&e, 404) => Ok(false),
            Err(e) => Err(api(e)),
        }
    }

    async fn pull(
        &self,
        image: &str,
        timeout: Duration,
        credentials: Option<Credentials>,
    ) -> Result<(), String> {
        let credentials = credentials.map(|c| bollard::auth::DockerCredentials {
            username: c.username,
            password: c.password,
            auth: c.auth,
            identitytoken: c.identity_token,
            serveraddress: c.server_address,
            ..Default::default()
        });
        pull(&self.docker, image, timeout, credentials).await
    }

    async fn capacity(&self) -> Result<HostCapacity, EngineError> {
        let info = self.docker.info().await.map_err(api)?;
        Ok(HostCapacity {
            memory_mib: info.mem_total.unwrap_or(0).max(0) as u64 / (1024 * 1024),
            cpu_units: (info.ncpu.unwrap_or(1).max(1) as u64).saturating_mul(1024),
        })
    }

    async fn version(&self) -> Result<String, EngineError> {
        let v = self.docker.version().await.map_err(api)?;
        Ok(v.version.unwrap_or_default())
    }

    fn events(
        &self,
        instance: &str,
        since: SystemTime,
    ) -> tokio::sync::mpsc::Receiver<EngineEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(forward_events(
            self.docker.clone(),
            instance.to_string(),
            since,
            tx,
            Arc::clone(&self.inspected),
        ));
        rx
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        let list = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::default().build()))
            .await
            .map_err(api)?;
        Ok(list
            .into_iter()
            .map(|i| ImageInfo {
                tags: i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                created: i.created,
            })
            .collect())
    }

    async fn images_in_use(&self) -> Result<BTreeSet<String>, EngineError> {
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default().all(true).build(),
            ))
            .await
            .map_err(api)?;
        Ok(list.into_iter().filter_map(|c| c.image).collect())
    }

    async fn remove_image(&self, image: &str) -> Result<(), EngineError> {
        let options = RemoveImageOptionsBuilder::default().force(false).build();
        match self.docker.remove_image(image, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if is(&e, 404) => Ok(()),
            Err(e) => Err(api(e)),
        }
    }
}

/// The engine-neutral spec as Docker's create request.
fn create_body(s: ContainerSpec) -> ContainerCreateBody {
    let mut bindings: HashMap<String, Option<Vec<bollard::models::PortBinding>>> = HashMap::new();
    for b in &s.port_bindings {
        bindings
            .entry(format!("{}/{}", b.container_port, b.protocol))
            .or_default()
            .get_or_insert_with(Vec::new)
            .push(bollard::models::PortBinding {
                host_ip: Some(b.host_ip.clone()),
                host_port: Some(b.host_port.to_string()),
            });
    }
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    let healthcheck = s.healthcheck.map(|h| HealthConfig {
        test: Some(h.test),
        interval: Some(nanos(h.interval)),
        timeout: Some(nanos(h.timeout)),
        retries: Some(h.retries),
        start_period: h.start_period.map(nanos),
        start_interval: None,
    });
    ContainerCreateBody {
        image: Some(s.image),
        cmd: s.cmd,
        entrypoint: s.entrypoint,
        env: Some(s.env),
        user: s.user,
        working_dir: s.working_dir,
        labels: Some(s.labels.into_iter().collect()),
        exposed_ports: (!s.exposed_ports.is_empty()).then_some(s.exposed_ports),
        healthcheck,
        stop_timeout: Some(i64::try_from(s.stop_timeout.as_secs()).unwrap_or(i64::MAX)),
        host_config: Some(HostConfig {
            network_mode: Some(s.network_mode.to_string()),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            memory: s.memory_bytes,
            memory_reservation: s.memory_reservation_bytes,
            cpu_shares: s.cpu_shares,
            ulimits: (!s.ulimits.is_empty()).then(|| {
                s.ulimits
                    .into_iter()
                    .map(|(name, soft, hard)| ResourcesUlimits {
                        name: Some(name),
                        soft: Some(soft),
                        hard: Some(hard),
                    })
                    .collect()
            }),
            binds: (!s.binds.is_empty()).then_some(s.binds),
            log_config: s.log_config.map(|(driver, options)| HostConfigLogConfig {
                typ: Some(driver),
                config: Some(options.into_iter().collect()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Forwards Docker's container events for this instance as wake-ups,
/// re-opening the stream with backoff when Docker goes away. Each stream
/// asks for events since the last one seen, so none fall in a gap. A
/// container named in an event is inspected again at the next pass: the
/// list can still say "running" just after a `die` event.
async fn forward_events(
    docker: Docker,
    instance: String,
    since: SystemTime,
    tx: tokio::sync::mpsc::Sender<EngineEvent>,
    inspected: Arc<Mutex<HashMap<String, (String, Observed)>>>,
) {
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
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = tx.closed() => return,
            };
            let Some(item) = item else { break };
            match item {
                Ok(ev) => {
                    delay = Duration::from_millis(100);
                    if let Some(t) = ev.time {
                        since_secs = since_secs.max(t.max(0) as u64);
                    }
                    tracing::debug!(action = ev.action.as_deref().unwrap_or(""), "docker event");
                    if let Some(id) = ev.actor.as_ref().and_then(|a| a.id.as_deref()) {
                        inspected
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(id);
                    }
                    // A full channel already holds a wake-up: nothing lost.
                    if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                        tx.try_send(EngineEvent::Changed)
                    {
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
        // have changed, so inspect everything again, then re-open.
        inspected.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if tx.send(EngineEvent::Lost).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
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

/// Lists every container labelled with this agent's instance id, and
/// inspects those whose list entry changed since they were last inspected.
async fn observe(
    docker: &Docker,
    instance: &str,
    cache: &Mutex<HashMap<String, (String, Observed)>>,
) -> Result<Vec<Observed>, EngineError> {
    let filters: HashMap<&str, Vec<String>> =
        HashMap::from([("label", vec![format!("{}={instance}", label::INSTANCE)])]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(api)?;
    let lock = || cache.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::with_capacity(list.len());
    let mut listed = BTreeSet::new();
    for summary in list {
        let Some(id) = summary.id else { continue };
        let key = format!(
            "{}|{}",
            summary.state.map(|s| s.to_string()).unwrap_or_default(),
            summary.status.unwrap_or_default()
        );
        listed.insert(id.clone());
        let cached = lock()
            .get(&id)
            .filter(|(k, _)| *k == key)
            .map(|(_, o)| o.clone());
        if let Some(o) = cached {
            out.push(o);
            continue;
        }
        match docker.inspect_container(&id, None).await {
            Ok(c) => {
                let o = from_inspect(id.clone(), c);
                lock().insert(id, (key, o.clone()));
                out.push(o);
            }
            // Removed between list and inspect: it is simply gone.
            Err(e) if is(&e, 404) => {}
            Err(e) => return Err(api(e)),
        }
    }
    lock().retain(|id, _| listed.contains(id));
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

/// Pulls `image`, logging progress, until done or `timeout`.
async fn pull(
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
