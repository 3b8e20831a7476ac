//! ECS task definitions (the `RegisterTaskDefinition` request shape) and
//! service files (the `CreateService` shape plus routing fields).
//!
//! Input is untrusted. Parsing runs in three passes so every message names a
//! JSON path:
//! 1. [`screen`] walks the raw JSON: AWS-only fields that mean nothing on one
//!    host are removed with a warning; fields Dockhand knows but does not
//!    support yet are errors that say so.
//! 2. serde, with `deny_unknown_fields`, turns what is left into types; a
//!    wrong type or unknown field is reported with its path.
//! 3. [`ServiceSpec::validate`] checks values and cross-references (ports in
//!    range, `dependsOn` names, volumes), collecting every problem.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One problem in a service file, at a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// `taskDefinition.containerDefinitions[0].portMappings[1].containerPort`,
    /// or empty for the whole document.
    pub path: String,
    pub why: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.why)
        } else {
            write!(f, "{}: {}", self.path, self.why)
        }
    }
}

/// A parsed, valid service file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub service_name: String,
    #[serde(default)]
    pub desired_count: Option<i64>,
    #[serde(default)]
    pub scheduling_strategy: SchedulingStrategy,
    #[serde(default)]
    pub deployment_configuration: DeploymentConfiguration,
    #[serde(default)]
    pub health_check_grace_period_seconds: i64,
    pub task_definition: TaskDefinition,
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancer>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchedulingStrategy {
    #[default]
    Replica,
    /// One task per instance: on one host, one task.
    Daemon,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentConfiguration {
    #[serde(default = "default_min_healthy")]
    pub minimum_healthy_percent: i64,
    #[serde(default = "default_max_percent")]
    pub maximum_percent: i64,
    #[serde(default)]
    pub deployment_circuit_breaker: Option<CircuitBreaker>,
}

fn default_min_healthy() -> i64 {
    100
}
fn default_max_percent() -> i64 {
    200
}

impl Default for DeploymentConfiguration {
    fn default() -> Self {
        DeploymentConfiguration {
            minimum_healthy_percent: default_min_healthy(),
            maximum_percent: default_max_percent(),
            deployment_circuit_breaker: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    pub enable: bool,
    pub rollback: bool,
}

/// A route and its target-group health check (what ECS keeps in an ALB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    pub container_name: String,
    pub container_port: i64,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub health_check: Option<TargetHealthCheck>,
    #[serde(default)]
    pub deregistration_delay_seconds: Option<i64>,
    /// ALB's `load_balancing.algorithm.type`: `least_outstanding_requests`
    /// (the default) or `round_robin`.
    #[serde(default)]
    pub load_balancing_algorithm: Option<String>,
}

impl LoadBalancer {
    /// The proxy route this entry describes. `validate()` has checked every
    /// value, so the conversions here only apply defaults.
    pub fn route_spec(&self, grace_seconds: i64) -> dockhand_proxy::route::RouteSpec {
        use dockhand_proxy::health::{HealthCheck, Matcher};
        use std::time::Duration;
        let d = HealthCheck::default();
        let secs = |v: Option<i64>, default: Duration| {
            v.map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(default)
        };
        let hc = self.health_check.as_ref();
        let check = HealthCheck {
            path: hc.and_then(|h| h.path.clone()).unwrap_or(d.path),
            interval: secs(hc.and_then(|h| h.interval_seconds), d.interval),
            timeout: secs(hc.and_then(|h| h.timeout_seconds), d.timeout),
            healthy_threshold: hc
                .and_then(|h| h.healthy_threshold_count)
                .map_or(d.healthy_threshold, |n| n.clamp(1, 10) as u32),
            unhealthy_threshold: hc
                .and_then(|h| h.unhealthy_threshold_count)
                .map_or(d.unhealthy_threshold, |n| n.clamp(1, 10) as u32),
            matcher: hc
                .and_then(|h| h.matcher.as_deref())
                .and_then(|m| Matcher::parse(m).ok())
                .unwrap_or(d.matcher),
        };
        dockhand_proxy::route::RouteSpec {
            hosts: self.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            path_prefix: self.path_prefix.clone().unwrap_or_else(|| "/".into()),
            check,
            deregistration_delay: Duration::from_secs(
                self.deregistration_delay_seconds
                    .unwrap_or(DEFAULT_DEREGISTRATION_DELAY)
                    .max(0) as u64,
            ),
            algorithm: match self.load_balancing_algorithm.as_deref() {
                Some("round_robin") => dockhand_proxy::Algorithm::RoundRobin,
                _ => dockhand_proxy::Algorithm::LeastOutstanding,
            },
            grace: Duration::from_secs(grace_seconds.max(0) as u64),
        }
    }
}

/// Seconds a stopping task keeps finishing its requests, at most. ALB's
/// default is 300 s; 30 s is the example in DESIGN.md and what most
/// services need, and a drain ends early when nothing is in flight.
pub const DEFAULT_DEREGISTRATION_DELAY: i64 = 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetHealthCheck {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub interval_seconds: Option<i64>,
    #[serde(default)]
    pub timeout_seconds: Option<i64>,
    #[serde(default)]
    pub healthy_threshold_count: Option<i64>,
    #[serde(default)]
    pub unhealthy_threshold_count: Option<i64>,
    #[serde(default)]
    pub matcher: Option<String>,
}

/// An ECS task definition, as `RegisterTaskDefinition` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskDefinition {
    pub family: String,
    #[serde(default)]
    pub network_mode: NetworkMode,
    pub container_definitions: Vec<ContainerDefinition>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Task-level CPU units, as ECS writes it: a string (`"256"`).
    #[serde(default)]
    pub cpu: Option<NumberOrString>,
    /// Task-level memory in MiB, as ECS writes it: a string (`"512"`).
    #[serde(default)]
    pub memory: Option<NumberOrString>,
}

/// ECS takes task-level `cpu` and `memory` as strings; numbers are accepted too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumberOrString {
    Number(i64),
    String(String),
}

impl NumberOrString {
    fn as_i64(&self) -> Option<i64> {
        match self {
            NumberOrString::Number(n) => Some(*n),
            NumberOrString::String(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Bridge,
    Host,
    /// Accepted by the parser so the error can say "not supported".
    Awsvpc,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerDefinition {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub entry_point: Option<Vec<String>>,
    #[serde(default)]
    pub environment: Vec<KeyValue>,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub cpu: i64,
    #[serde(default)]
    pub memory: Option<i64>,
    #[serde(default)]
    pub memory_reservation: Option<i64>,
    #[serde(default)]
    pub essential: Option<bool>,
    #[serde(default)]
    pub stop_timeout: Option<i64>,
    #[serde(default)]
    pub docker_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub working_directory: Option<String>,
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    #[serde(default)]
    pub mount_points: Vec<MountPoint>,
    #[serde(default)]
    pub log_configuration: Option<LogConfiguration>,
    #[serde(default)]
    pub health_check: Option<ContainerHealthCheck>,
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    #[serde(default)]
    pub restart_policy: Option<RestartPolicy>,
}

/// ECS's container restart policy: restart the container in place when it
/// exits, unless its exit code is ignored or it ran less than
/// `restartAttemptPeriod` seconds since it last started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestartPolicy {
    pub enabled: bool,
    #[serde(default)]
    pub ignored_exit_codes: Vec<i64>,
    #[serde(default)]
    pub restart_attempt_period: Option<i64>,
}

/// ECS's default `restartAttemptPeriod`, seconds.
pub const DEFAULT_RESTART_ATTEMPT_PERIOD: i64 = 300;

impl ContainerDefinition {
    /// ECS: a container is essential unless it says otherwise.
    pub fn is_essential(&self) -> bool {
        self.essential.unwrap_or(true)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortMapping {
    pub container_port: i64,
    #[serde(default)]
    pub host_port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// ECS names mappings for Service Connect; kept for reference only.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ulimit {
    pub name: String,
    pub soft_limit: i64,
    pub hard_limit: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MountPoint {
    pub source_volume: String,
    pub container_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default)]
    pub host: Option<HostVolume>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostVolume {
    #[serde(default)]
    pub source_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfiguration {
    pub log_driver: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// A container health check; becomes the container's Docker HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerHealthCheck {
    pub command: Vec<String>,
    #[serde(default)]
    pub interval: Option<i64>,
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub retries: Option<i64>,
    #[serde(default)]
    pub start_period: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Dependency {
    pub container_name: String,
    pub condition: DependencyCondition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DependencyCondition {
    /// The dependency has started.
    Start,
    /// The dependency has exited, with any code.
    Complete,
    /// The dependency has exited with code 0.
    Success,
    /// The dependency's Docker health check reports healthy.
    Healthy,
}

/// Fields AWS uses that mean nothing on one host: accepted, warned, ignored.
const IGNORED_SERVICE: &[&str] = &[
    "cluster",
    "launchType",
    "capacityProviderStrategy",
    "platformVersion",
    "role",
    "placementConstraints",
    "placementStrategy",
    "tags",
    "enableECSManagedTags",
    "propagateTags",
    "enableExecuteCommand",
    "clientToken",
    "deploymentController",
    "availabilityZoneRebalancing",
];
const IGNORED_TASKDEF: &[&str] = &[
    "executionRoleArn",
    "taskRoleArn",
    "requiresCompatibilities",
    "tags",
    "placementConstraints",
    "runtimePlatform",
    "ephemeralStorage",
    "enableFaultInjection",
];
const IGNORED_CONTAINER: &[&str] = &["credentialSpecs", "versionConsistency"];
const IGNORED_LOAD_BALANCER: &[&str] = &["targetGroupArn", "loadBalancerName"];

/// Fields Dockhand knows and does not support yet: an error that says so.
const UNSUPPORTED_SERVICE: &[&str] = &[
    "networkConfiguration",
    "serviceRegistries",
    "serviceConnectConfiguration",
    "volumeConfigurations",
    "taskDefinitionArn",
];
const UNSUPPORTED_TASKDEF: &[&str] = &[
    "proxyConfiguration",
    "inferenceAccelerators",
    "pidMode",
    "ipcMode",
];
const UNSUPPORTED_CONTAINER: &[&str] = &[
    "secrets",
    "environmentFiles",
    "repositoryCredentials",
    "links",
    "volumesFrom",
    "linuxParameters",
    "systemControls",
    "extraHosts",
    "dnsServers",
    "dnsSearchDomains",
    "hostname",
    "privileged",
    "readonlyRootFilesystem",
    "interactive",
    "pseudoTerminal",
    "disableNetworking",
    "dockerSecurityOptions",
    "startTimeout",
    "firelensConfiguration",
    "resourceRequirements",
    "links",
    "gpu",
];
const UNSUPPORTED_VOLUME: &[&str] = &[
    "dockerVolumeConfiguration",
    "efsVolumeConfiguration",
    "fsxWindowsFileServerVolumeConfiguration",
    "configuredAtLaunch",
];
const UNSUPPORTED_PORT_MAPPING: &[&str] = &["containerPortRange", "appProtocol"];

/// Removes ignored fields (returning a warning for each) and reports
/// unsupported ones, at the object found by `path` in `value`.
fn screen_object(
    value: &mut serde_json::Value,
    path: &str,
    ignored: &[&str],
    unsupported: &[&str],
    warnings: &mut Vec<SpecError>,
    errors: &mut Vec<SpecError>,
) {
    let Some(object) = value.as_object_mut() else {
        return; // serde reports the type error with its path.
    };
    let join = |field: &str| {
        if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    for field in ignored {
        if object.remove(*field).is_some() {
            warnings.push(SpecError {
                path: join(field),
                why: "AWS-only field, means nothing on a Dockhand host; ignored".into(),
            });
        }
    }
    for field in unsupported {
        if object.contains_key(*field) {
            errors.push(SpecError {
                path: join(field),
                why: "not supported by Dockhand yet".into(),
            });
        }
    }
}

/// Pass 1 over a whole service file: see the module docs.
fn screen(doc: &mut serde_json::Value, warnings: &mut Vec<SpecError>, errors: &mut Vec<SpecError>) {
    screen_object(
        doc,
        "",
        IGNORED_SERVICE,
        UNSUPPORTED_SERVICE,
        warnings,
        errors,
    );
    if let Some(lbs) = doc.get_mut("loadBalancers").and_then(|v| v.as_array_mut()) {
        for (i, lb) in lbs.iter_mut().enumerate() {
            let path = format!("loadBalancers[{i}]");
            screen_object(lb, &path, IGNORED_LOAD_BALANCER, &[], warnings, errors);
        }
    }
    let Some(td) = doc.get_mut("taskDefinition") else {
        return;
    };
    screen_object(
        td,
        "taskDefinition",
        IGNORED_TASKDEF,
        UNSUPPORTED_TASKDEF,
        warnings,
        errors,
    );
    if let Some(volumes) = td.get_mut("volumes").and_then(|v| v.as_array_mut()) {
        for (i, v) in volumes.iter_mut().enumerate() {
            let path = format!("taskDefinition.volumes[{i}]");
            screen_object(v, &path, &[], UNSUPPORTED_VOLUME, warnings, errors);
        }
    }
    if let Some(containers) = td
        .get_mut("containerDefinitions")
        .and_then(|v| v.as_array_mut())
    {
        for (i, c) in containers.iter_mut().enumerate() {
            let path = format!("taskDefinition.containerDefinitions[{i}]");
            screen_object(
                c,
                &path,
                IGNORED_CONTAINER,
                UNSUPPORTED_CONTAINER,
                warnings,
                errors,
            );
            if let Some(pms) = c.get_mut("portMappings").and_then(|v| v.as_array_mut()) {
                for (j, pm) in pms.iter_mut().enumerate() {
                    let path = format!("{path}.portMappings[{j}]");
                    screen_object(pm, &path, &[], UNSUPPORTED_PORT_MAPPING, warnings, errors);
                }
            }
        }
    }
}

/// The result of parsing one service file.
#[derive(Debug)]
pub struct Parsed {
    pub spec: ServiceSpec,
    pub warnings: Vec<SpecError>,
}

impl ServiceSpec {
    /// Parses and validates a service file's text. Every error is returned,
    /// each with its JSON path; the warnings list ignored AWS-only fields.
    pub fn parse(text: &str) -> Result<Parsed, Vec<SpecError>> {
        let mut doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            vec![SpecError {
                path: String::new(),
                why: format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            }]
        })?;
        if !doc.is_object() {
            return Err(vec![SpecError {
                path: String::new(),
                why: "expected a JSON object (an ECS CreateService request)".into(),
            }]);
        }
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        screen(&mut doc, &mut warnings, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let spec: ServiceSpec = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            vec![SpecError {
                path: if path == "." { String::new() } else { path },
                why: e.into_inner().to_string(),
            }]
        })?;
        spec.validate()?;
        Ok(Parsed { spec, warnings })
    }

    /// Pass 3: values and cross-references.
    pub fn validate(&self) -> Result<(), Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut err = |path: String, why: String| errors.push(SpecError { path, why });

        if !valid_name(&self.service_name, 255) {
            err(
                "serviceName".into(),
                "must be 1-255 letters, digits, hyphens or underscores".into(),
            );
        }
        match (self.scheduling_strategy, self.desired_count) {
            (SchedulingStrategy::Replica, None) => err(
                "desiredCount".into(),
                "required for schedulingStrategy REPLICA".into(),
            ),
            (_, Some(n)) if !(0..=10_000).contains(&n) => {
                err("desiredCount".into(), "must be 0-10000".into())
            }
            _ => {}
        }
        let dc = &self.deployment_configuration;
        if !(0..=100).contains(&dc.minimum_healthy_percent) {
            err(
                "deploymentConfiguration.minimumHealthyPercent".into(),
                "must be 0-100".into(),
            );
        }
        if !(100..=1000).contains(&dc.maximum_percent) {
            err(
                "deploymentConfiguration.maximumPercent".into(),
                "must be 100-1000".into(),
            );
        }
        if !(0..=2_147_483_647).contains(&self.health_check_grace_period_seconds) {
            err(
                "healthCheckGracePeriodSeconds".into(),
                "must not be negative".into(),
            );
        }

        let td = &self.task_definition;
        if !valid_name(&td.family, 255) {
            err(
                "taskDefinition.family".into(),
                "must be 1-255 letters, digits, hyphens or underscores".into(),
            );
        }
        match td.network_mode {
            NetworkMode::Bridge | NetworkMode::Host => {}
            NetworkMode::Awsvpc => err(
                "taskDefinition.networkMode".into(),
                "awsvpc is not supported by Dockhand yet; use bridge or host".into(),
            ),
            NetworkMode::None => err(
                "taskDefinition.networkMode".into(),
                "none is not supported by Dockhand yet; use bridge or host".into(),
            ),
        }
        for (field, value) in [("cpu", &td.cpu), ("memory", &td.memory)] {
            if let Some(v) = value {
                if !matches!(v.as_i64(), Some(n) if n > 0) {
                    err(
                        format!("taskDefinition.{field}"),
                        "must be a positive whole number (CPU units or MiB)".into(),
                    );
                }
            }
        }
        if td.container_definitions.is_empty() {
            err(
                "taskDefinition.containerDefinitions".into(),
                "must list at least one container".into(),
            );
        } else if !td.container_definitions.iter().any(|c| c.is_essential()) {
            err(
                "taskDefinition.containerDefinitions".into(),
                "at least one container must be essential".into(),
            );
        }

        let mut volume_names = BTreeSet::new();
        for (i, v) in td.volumes.iter().enumerate() {
            let path = format!("taskDefinition.volumes[{i}]");
            if !volume_names.insert(v.name.as_str()) {
                err(
                    format!("{path}.name"),
                    format!("duplicate volume {:?}", v.name),
                );
            }
            match v.host.as_ref().and_then(|h| h.source_path.as_deref()) {
                Some(p) if p.starts_with('/') => {}
                Some(_) => err(
                    format!("{path}.host.sourcePath"),
                    "must be an absolute path".into(),
                ),
                None => err(
                    format!("{path}.host.sourcePath"),
                    "required: Dockhand supports host-path volumes only".into(),
                ),
            }
        }

        let names: BTreeSet<&str> = td
            .container_definitions
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let mut seen = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        let task_memory_set = td.memory.is_some();
        for (i, c) in td.container_definitions.iter().enumerate() {
            let path = format!("taskDefinition.containerDefinitions[{i}]");
            if !valid_name(&c.name, 255) {
                err(
                    format!("{path}.name"),
                    "must be 1-255 letters, digits, hyphens or underscores".into(),
                );
            }
            if !seen.insert(c.name.as_str()) {
                err(
                    format!("{path}.name"),
                    format!("duplicate container name {:?}", c.name),
                );
            }
            if c.image.trim().is_empty() || c.image.chars().any(char::is_whitespace) {
                err(format!("{path}.image"), "must be an image reference".into());
            }
            if !(0..=10_240 * 1024).contains(&c.cpu) {
                err(format!("{path}.cpu"), "must be 0 or more CPU units".into());
            }
            for (field, v) in [
                ("memory", c.memory),
                ("memoryReservation", c.memory_reservation),
            ] {
                if let Some(v) = v {
                    if v < 6 {
                        err(
                            format!("{path}.{field}"),
                            "must be at least 6 MiB (Docker's minimum)".into(),
                        );
                    }
                }
            }
            if let (Some(hard), Some(soft)) = (c.memory, c.memory_reservation) {
                if soft > hard {
                    err(
                        format!("{path}.memoryReservation"),
                        format!("must not exceed memory ({soft} > {hard})"),
                    );
                }
            }
            if !task_memory_set && c.memory.is_none() && c.memory_reservation.is_none() {
                err(
                    path.clone(),
                    "at least one of memory or memoryReservation must be set (or the task-level memory)".into(),
                );
            }
            if let Some(t) = c.stop_timeout {
                if !(0..=86_400).contains(&t) {
                    err(
                        format!("{path}.stopTimeout"),
                        "must be 0-86400 seconds".into(),
                    );
                }
            }
            for (j, pm) in c.port_mappings.iter().enumerate() {
                let pp = format!("{path}.portMappings[{j}]");
                if !(1..=65535).contains(&pm.container_port) {
                    err(format!("{pp}.containerPort"), "must be 1-65535".into());
                }
                match pm.host_port {
                    Some(hp) if !(0..=65535).contains(&hp) => err(
                        format!("{pp}.hostPort"),
                        "must be 0-65535 (0: dynamic)".into(),
                    ),
                    Some(hp) if td.network_mode == NetworkMode::Host && hp != pm.container_port => {
                        err(
                            format!("{pp}.hostPort"),
                            "must equal containerPort (or be omitted) in host network mode".into(),
                        )
                    }
                    Some(hp) if hp > 0 => {
                        let proto = pm.protocol.unwrap_or_default();
                        if !host_ports.insert((hp, proto)) {
                            err(
                                format!("{pp}.hostPort"),
                                format!("host port {hp}/{} is mapped twice", proto.as_str()),
                            );
                        }
                    }
                    _ => {}
                }
            }
            for (j, u) in c.ulimits.iter().enumerate() {
                if u.soft_limit < 0 || u.hard_limit < 0 || u.soft_limit > u.hard_limit {
                    err(
                        format!("{path}.ulimits[{j}]"),
                        "softLimit and hardLimit must be >= 0 with softLimit <= hardLimit".into(),
                    );
                }
            }
            for (j, m) in c.mount_points.iter().enumerate() {
                if !volume_names.contains(m.source_volume.as_str()) {
                    err(
                        format!("{path}.mountPoints[{j}].sourceVolume"),
                        format!(
                            "no volume named {:?} in taskDefinition.volumes",
                            m.source_volume
                        ),
                    );
                }
                if !m.container_path.starts_with('/') {
                    err(
                        format!("{path}.mountPoints[{j}].containerPath"),
                        "must be an absolute path".into(),
                    );
                }
            }
            if let Some(hc) = &c.health_check {
                let hp = format!("{path}.healthCheck");
                match hc.command.first().map(String::as_str) {
                    Some("CMD") | Some("CMD-SHELL") if hc.command.len() > 1 => {}
                    _ => err(
                        format!("{hp}.command"),
                        "must start with \"CMD\" or \"CMD-SHELL\" followed by the command".into(),
                    ),
                }
                // ECS's ranges for container health checks.
                for (field, v, lo, hi) in [
                    ("interval", hc.interval, 5, 300),
                    ("timeout", hc.timeout, 2, 60),
                    ("retries", hc.retries, 1, 10),
                    ("startPeriod", hc.start_period, 0, 300),
                ] {
                    if let Some(v) = v {
                        if !(lo..=hi).contains(&v) {
                            err(format!("{hp}.{field}"), format!("must be {lo}-{hi}"));
                        }
                    }
                }
            }
            if let Some(rp) = &c.restart_policy {
                let rpp = format!("{path}.restartPolicy");
                if let Some(p) = rp.restart_attempt_period {
                    // ECS requires 60-1800; shorter periods are allowed here
                    // (tests, fast-crashing sidecars).
                    if !(0..=1800).contains(&p) {
                        err(
                            format!("{rpp}.restartAttemptPeriod"),
                            "must be 0-1800 seconds".into(),
                        );
                    }
                }
                if rp.ignored_exit_codes.len() > 50 {
                    err(format!("{rpp}.ignoredExitCodes"), "at most 50 codes".into());
                }
            }
            for (j, d) in c.depends_on.iter().enumerate() {
                let dp = format!("{path}.dependsOn[{j}].containerName");
                if d.container_name == c.name {
                    err(dp, "a container cannot depend on itself".into());
                } else if !names.contains(d.container_name.as_str()) {
                    err(
                        dp,
                        format!("no container named {:?} in this task", d.container_name),
                    );
                } else if matches!(
                    d.condition,
                    DependencyCondition::Complete | DependencyCondition::Success
                ) && td
                    .container_definitions
                    .iter()
                    .any(|o| o.name == d.container_name && o.is_essential())
                {
                    err(
                        dp,
                        format!(
                            "{:?} is essential, so it cannot be waited on to COMPLETE or SUCCESS",
                            d.container_name
                        ),
                    );
                }
            }
        }
        if td.start_order().is_none() {
            err(
                "taskDefinition.containerDefinitions".into(),
                "dependsOn forms a cycle".into(),
            );
        }

        for (i, lb) in self.load_balancers.iter().enumerate() {
            let path = format!("loadBalancers[{i}]");
            match td
                .container_definitions
                .iter()
                .find(|c| c.name == lb.container_name)
            {
                None => err(
                    format!("{path}.containerName"),
                    format!(
                        "no container named {:?} in the task definition",
                        lb.container_name
                    ),
                ),
                Some(c) => {
                    if !c
                        .port_mappings
                        .iter()
                        .any(|p| p.container_port == lb.container_port)
                    {
                        err(
                            format!("{path}.containerPort"),
                            format!(
                                "container {:?} has no portMapping for containerPort {}",
                                c.name, lb.container_port
                            ),
                        );
                    }
                }
            }
            if let Some(p) = &lb.path_prefix {
                if !p.starts_with('/') {
                    err(format!("{path}.pathPrefix"), "must start with /".into());
                }
            }
            if let Some(d) = lb.deregistration_delay_seconds {
                if !(0..=3600).contains(&d) {
                    err(
                        format!("{path}.deregistrationDelaySeconds"),
                        "must be 0-3600".into(),
                    );
                }
            }
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// How many tasks this service wants on this host.
    pub fn wanted_tasks(&self) -> u32 {
        match self.scheduling_strategy {
            SchedulingStrategy::Daemon => 1,
            // validate() bounds it to 0-10000.
            SchedulingStrategy::Replica => self.desired_count.unwrap_or(0).clamp(0, 10_000) as u32,
        }
    }
}

impl TaskDefinition {
    /// A stable digest of this task definition: equal definitions give equal
    /// digests across agent restarts and versions, so a revision is
    /// recognised by content.
    pub fn digest(&self) -> String {
        // Serializing a plain struct with BTreeMaps cannot fail.
        let canonical = serde_json::to_vec(self).expect("task definition serializes");
        let hash = Sha256::digest(&canonical);
        hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Container indexes in an order where every dependency comes first, or
    /// `None` if `dependsOn` has a cycle.
    pub fn start_order(&self) -> Option<Vec<usize>> {
        let n = self.container_definitions.len();
        let index: BTreeMap<&str, usize> = self
            .container_definitions
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let mut order = Vec::with_capacity(n);
        let mut placed = vec![false; n];
        while order.len() < n {
            let before = order.len();
            for (i, c) in self.container_definitions.iter().enumerate() {
                if placed[i] {
                    continue;
                }
                let ready = c.depends_on.iter().all(|d| {
                    index
                        .get(d.container_name.as_str())
                        .is_none_or(|&j| placed[j])
                });
                if ready {
                    placed[i] = true;
                    order.push(i);
                }
            }
            if order.len() == before {
                return None;
            }
        }
        Some(order)
    }

    /// MiB this task reserves on the host: the task-level `memory`, else the
    /// sum of each container's `memoryReservation` or `memory` (ECS's rule).
    pub fn memory_mib(&self) -> u64 {
        if let Some(m) = self.memory.as_ref().and_then(NumberOrString::as_i64) {
            return m.max(0) as u64;
        }
        self.container_definitions
            .iter()
            .map(|c| c.memory_reservation.or(c.memory).unwrap_or(0).max(0) as u64)
            .sum()
    }

    /// CPU units this task reserves: task-level `cpu`, else the containers' sum.
    pub fn cpu_units(&self) -> u64 {
        if let Some(c) = self.cpu.as_ref().and_then(NumberOrString::as_i64) {
            return c.max(0) as u64;
        }
        self.container_definitions
            .iter()
            .map(|c| c.cpu.max(0) as u64)
            .sum()
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn article_service() -> serde_json::Value {
        json!({
            "serviceName": "hello-world-service",
            "desiredCount": 4,
            "schedulingStrategy": "REPLICA",
            "deploymentConfiguration": {"minimumHealthyPercent": 100, "maximumPercent": 200},
            "healthCheckGracePeriodSeconds": 0,
            "taskDefinition": {
                "family": "hello-world-task",
                "networkMode": "bridge",
                "containerDefinitions": [{
                    "name": "hello-world-container",
                    "image": "training/webapp:latest",
                    "command": ["python", "app.py"],
                    "memory": 128,
                    "essential": true,
                    "portMappings": [{"containerPort": 5000, "hostPort": 0, "protocol": "tcp"}],
                    "environment": [{"name": "PROVIDER", "value": "ECS"}]
                }]
            },
            "loadBalancers": [{
                "containerName": "hello-world-container",
                "containerPort": 5000,
                "hosts": ["example.com"],
                "pathPrefix": "/",
                "healthCheck": {"path": "/", "intervalSeconds": 5, "timeoutSeconds": 2,
                                "healthyThresholdCount": 2, "unhealthyThresholdCount": 3,
                                "matcher": "200-399"},
                "deregistrationDelaySeconds": 30
            }]
        })
    }

    fn errors_of(doc: serde_json::Value) -> Vec<String> {
        ServiceSpec::parse(&doc.to_string())
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_design_example_parses() {
        let p = ServiceSpec::parse(&article_service().to_string()).unwrap();
        assert_eq!(p.spec.wanted_tasks(), 4);
        assert_eq!(p.spec.task_definition.memory_mib(), 128);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn bad_port_is_reported_at_its_path() {
        let mut doc = article_service();
        doc["taskDefinition"]["containerDefinitions"][0]["portMappings"]
            .as_array_mut()
            .unwrap()
            .push(json!({"containerPort": 70000}));
        assert_eq!(
            errors_of(doc),
            vec!["taskDefinition.containerDefinitions[0].portMappings[1].containerPort: must be 1-65535"]
        );
    }

    #[test]
    fn unknown_field_and_wrong_type_name_their_path() {
        let mut doc = article_service();
        doc["taskDefinition"]["containerDefinitions"][0]["imagee"] = json!("x");
        let errs = errors_of(doc);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with(
                "taskDefinition.containerDefinitions[0].imagee: unknown field `imagee`"
            ),
            "{errs:?}"
        );

        let mut doc = article_service();
        doc["desiredCount"] = json!("four");
        let errs = errors_of(doc);
        assert!(
            errs[0].starts_with("desiredCount: invalid type"),
            "{errs:?}"
        );
    }

    #[test]
    fn aws_only_fields_warn_and_unsupported_ones_fail() {
        let mut doc = article_service();
        doc["taskDefinition"]["executionRoleArn"] = json!("arn:aws:iam::1:role/x");
        doc["taskDefinition"]["requiresCompatibilities"] = json!(["EC2"]);
        let p = ServiceSpec::parse(&doc.to_string()).unwrap();
        let w: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2);
        assert!(w[0].starts_with("taskDefinition.executionRoleArn: AWS-only field"));

        let mut doc = article_service();
        doc["taskDefinition"]["containerDefinitions"][0]["secrets"] = json!([]);
        doc["taskDefinition"]["networkMode"] = json!("awsvpc");
        assert_eq!(
            errors_of(doc.clone()),
            vec!["taskDefinition.containerDefinitions[0].secrets: not supported by Dockhand yet"]
        );
        doc["taskDefinition"]["containerDefinitions"][0]
            .as_object_mut()
            .unwrap()
            .remove("secrets");
        assert_eq!(
            errors_of(doc),
            vec!["taskDefinition.networkMode: awsvpc is not supported by Dockhand yet; use bridge or host"]
        );
    }

    #[test]
    fn all_value_errors_are_collected() {
        let mut doc = article_service();
        doc["desiredCount"] = json!(-1);
        let c = &mut doc["taskDefinition"]["containerDefinitions"][0];
        c.as_object_mut().unwrap().remove("memory");
        c["dependsOn"] = json!([{"containerName": "ghost", "condition": "START"}]);
        doc["loadBalancers"][0]["containerPort"] = json!(8080);
        let errs = errors_of(doc);
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs.contains(&"desiredCount: must be 0-10000".to_string()));
        assert!(errs.contains(&"taskDefinition.containerDefinitions[0].dependsOn[0].containerName: no container named \"ghost\" in this task".to_string()));
    }

    #[test]
    fn start_order_follows_depends_on_and_finds_cycles() {
        let mut doc = article_service();
        let base = doc["taskDefinition"]["containerDefinitions"][0].clone();
        let mut init = base.clone();
        init["name"] = json!("init");
        init["essential"] = json!(false);
        init.as_object_mut().unwrap().remove("portMappings");
        let mut app = base.clone();
        app["dependsOn"] = json!([{"containerName": "init", "condition": "SUCCESS"}]);
        doc["taskDefinition"]["containerDefinitions"] = json!([app, init]);
        let spec = ServiceSpec::parse(&doc.to_string()).unwrap().spec;
        assert_eq!(spec.task_definition.start_order(), Some(vec![1, 0]));

        doc["taskDefinition"]["containerDefinitions"][1]["dependsOn"] =
            json!([{"containerName": "hello-world-container", "condition": "START"}]);
        assert!(errors_of(doc)
            .contains(&"taskDefinition.containerDefinitions: dependsOn forms a cycle".to_string()));
    }

    #[test]
    fn digest_changes_with_the_definition_only() {
        let a = ServiceSpec::parse(&article_service().to_string())
            .unwrap()
            .spec;
        let mut doc = article_service();
        doc["desiredCount"] = json!(1);
        let b = ServiceSpec::parse(&doc.to_string()).unwrap().spec;
        assert_eq!(a.task_definition.digest(), b.task_definition.digest());
        doc["taskDefinition"]["containerDefinitions"][0]["environment"][0]["value"] =
            json!("world");
        let c = ServiceSpec::parse(&doc.to_string()).unwrap().spec;
        assert_ne!(a.task_definition.digest(), c.task_definition.digest());
        assert_eq!(a.task_definition.digest().len(), 16);
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            "null",
            "[]",
            "{",
            "{\"serviceName\": 1}",
            "{\"taskDefinition\": []}",
        ] {
            assert!(ServiceSpec::parse(text).is_err(), "{text:?}");
        }
    }
}
