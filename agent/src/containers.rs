//! What a task becomes in the engine: its containers, named and labelled so
//! that a restarted agent finds its own and knows how to stop them without
//! the task definition.
//!
//! Labels are the agent's memory in Docker: [`label`] lists them, and the
//! methods on [`Observed`] read them back.

use crate::engine::{ContainerSpec, HealthcheckSpec, Observed, PortBinding, RunState};
use dockhand_model::taskdef::{
    ContainerDefinition, NetworkMode, TaskDefinition, DEFAULT_RESTART_ATTEMPT_PERIOD,
};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

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
    /// `8080,9090`: the host ports a host-network container listens on (its
    /// container ports). Docker publishes no ports for those, so without
    /// it a running task's ports would look free.
    pub const HOST_PORTS: &str = "dockhand.host-ports";
    pub const ECS_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
    pub const ECS_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
    pub const ECS_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
    pub const ECS_VERSION: &str = "com.amazonaws.ecs.task-definition-version";
    pub const ECS_CLUSTER: &str = "com.amazonaws.ecs.cluster";
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

    /// The container's name in its task definition.
    pub fn name_in_task(&self) -> &str {
        self.label(label::CONTAINER).unwrap_or(&self.name)
    }

    /// SIGTERM to SIGKILL for this container, from its label.
    pub fn stop_timeout(&self, default: Duration) -> Duration {
        self.label(label::STOP_TIMEOUT)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(default)
    }

    /// Whether the restart policy (from the container's label) restarts it
    /// now: `Ok(())` if so, else why not. `None` without a policy.
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

/// Bytes in a MiB; task definitions count memory in MiB.
const MIB: i64 = 1024 * 1024;

impl TaskLaunch<'_> {
    /// The engine's name for a container: ECS's `ecs-family-rev-name-id`
    /// shape.
    pub fn container_name(&self, c: &ContainerDefinition) -> String {
        format!(
            "dockhand-{}-{}-{}-{}",
            self.def.family,
            self.revision,
            c.name,
            crate::supervisor::short(self.task_id)
        )
    }

    /// The create request for container `index`, placed `order`-th in the
    /// start order.
    pub fn container_spec(&self, index: usize, order: usize) -> ContainerSpec {
        let c = &self.def.container_definitions[index];
        let mut labels = c.docker_labels.clone();
        let stop_timeout = c
            .stop_timeout
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.default_stop_timeout);
        if let Some(rp) = c.restart_policy.as_ref().filter(|rp| rp.enabled) {
            let ignore: Vec<String> = rp.ignored_exit_codes.iter().map(i64::to_string).collect();
            let period = rp
                .restart_attempt_period
                .unwrap_or(DEFAULT_RESTART_ATTEMPT_PERIOD);
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
            (label::STOP_TIMEOUT, stop_timeout.as_secs().to_string()),
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

        if self.def.network_mode == NetworkMode::Host && !c.port_mappings.is_empty() {
            let ports: Vec<String> = c
                .port_mappings
                .iter()
                .map(|pm| pm.container_port.clamp(0, 65535).to_string())
                .collect();
            labels.insert(label::HOST_PORTS.to_string(), ports.join(","));
        }

        let bridge = self.def.network_mode == NetworkMode::Bridge;
        let mut exposed_ports = Vec::new();
        let mut port_bindings = Vec::new();
        for (j, pm) in c.port_mappings.iter().enumerate() {
            // validate() bounds ports to 1-65535.
            let container_port = pm.container_port.clamp(0, 65535) as u16;
            let protocol = pm.protocol.unwrap_or_default().as_str();
            exposed_ports.push(format!("{container_port}/{protocol}"));
            if !bridge {
                continue;
            }
            let host_port = match pm.host_port {
                Some(p) if p > 0 => p.clamp(0, 65535) as u16,
                _ => self.dynamic_ports.get(&(index, j)).copied().unwrap_or(0),
            };
            port_bindings.push(PortBinding {
                container_port,
                protocol,
                host_ip: self.bind_address.to_string(),
                host_port,
            });
        }

        let binds = c
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

        // ECS defaults: interval 30 s, timeout 5 s, retries 3; validate()
        // bounds each to ECS's ranges.
        let secs =
            |v: Option<i64>, default: i64| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let healthcheck = c.health_check.as_ref().map(|h| HealthcheckSpec {
            test: h.command.clone(),
            interval: secs(h.interval, 30),
            timeout: secs(h.timeout, 5),
            retries: h.retries.unwrap_or(3),
            start_period: h.start_period.map(|s| secs(Some(s), 0)),
        });

        ContainerSpec {
            name: self.container_name(c),
            image: c.image.clone(),
            cmd: c.command.clone(),
            entrypoint: c.entry_point.clone(),
            env: c
                .environment
                .iter()
                .map(|kv| format!("{}={}", kv.name, kv.value))
                .collect(),
            user: c.user.clone(),
            working_dir: c.working_directory.clone(),
            labels,
            exposed_ports,
            port_bindings,
            healthcheck,
            stop_timeout,
            network_mode: match self.def.network_mode {
                NetworkMode::Host => "host",
                _ => "bridge",
            },
            // validate() bounds memory to 16 TiB, so bytes fit; checked
            // all the same, so a value that slipped through is refused by
            // the engine rather than wrapped into "no limit".
            memory_bytes: c.memory.map(|m| m.checked_mul(MIB).unwrap_or(i64::MAX)),
            memory_reservation_bytes: c
                .memory_reservation
                .map(|m| m.checked_mul(MIB).unwrap_or(i64::MAX)),
            // Docker's minimum CPU share is 2.
            cpu_shares: (c.cpu > 0).then(|| c.cpu.max(2)),
            ulimits: c
                .ulimits
                .iter()
                .map(|u| (u.name.clone(), u.soft_limit, u.hard_limit))
                .collect(),
            binds,
            log_config: c
                .log_configuration
                .as_ref()
                .map(|l| (l.log_driver.clone(), l.options.clone())),
        }
    }
}
