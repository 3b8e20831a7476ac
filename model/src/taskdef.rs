//! ECS task definitions, in `RegisterTaskDefinition`'s shape.
//!
//! Parsing runs in three passes so every message names a JSON path:
//! 1. [`screen`] walks the raw JSON: AWS-only fields that mean nothing on a
//!    Dockhand host are removed with a warning; fields Dockhand knows but
//!    does not support yet are errors that say so.
//! 2. serde, with `deny_unknown_fields`, turns what is left into types; a
//!    wrong type or an unknown field is reported with its path.
//! 3. [`TaskDefinition::validate`] checks values against documented ranges
//!    and cross-references (`dependsOn` names, volumes), collecting every
//!    problem.
//!
//! Serialization is part of the contract: a task definition's digest is the
//! hash of its JSON, so fields added later serialize only when set, and a
//! definition written by an older version keeps its digest (and its tasks
//! are not replaced by an upgrade).

use crate::error::{join, Errors, SpecError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// ECS allows at most 10 containers in a task definition.
pub const MAX_CONTAINERS: usize = 10;
/// Container and task memory, MiB: Docker's minimum, and 16 TiB, so that
/// bytes (× 1 MiB) and a task's sum fit in 64 bits with room to spare.
pub const MIN_MEMORY_MIB: i64 = 6;
pub const MAX_MEMORY_MIB: i64 = 16 * 1024 * 1024;
/// CPU units: 1024 per core; 10,240 cores is far beyond any host.
pub const MAX_CPU_UNITS: i64 = 10_240 * 1024;
/// `stopTimeout`, seconds (a day; ECS does not cap it on EC2).
pub const MAX_STOP_TIMEOUT: i64 = 86_400;
/// ECS's default `restartAttemptPeriod`, seconds.
pub const DEFAULT_RESTART_ATTEMPT_PERIOD: i64 = 300;

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
    /// Task-level CPU units, as ECS writes it: a string (`"256"`, `"1 vCPU"`).
    #[serde(default)]
    pub cpu: Option<NumberOrString>,
    /// Task-level memory in MiB, as ECS writes it: a string (`"512"`, `"2 GB"`).
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
    /// The value in base units, reading ECS's `"1 vCPU"` / `"2 GB"` forms
    /// with `unit` (1024 for both: CPU units per vCPU, MiB per GB).
    fn value(&self, unit_word: &str, unit: i64) -> Option<i64> {
        match self {
            NumberOrString::Number(n) => Some(*n),
            NumberOrString::String(s) => {
                let s = s.trim();
                if let Ok(n) = s.parse() {
                    return Some(n);
                }
                let lower = s.to_ascii_lowercase();
                let number = lower.strip_suffix(unit_word)?.trim();
                let n: f64 = number.parse().ok()?;
                let v = (n * unit as f64).round();
                (v.is_finite() && v >= 0.0 && v <= i64::MAX as f64 / 2.0).then_some(v as i64)
            }
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

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::Awsvpc => "awsvpc",
            NetworkMode::None => "none",
        }
    }
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

impl ContainerDefinition {
    /// ECS: a container is essential unless it says otherwise.
    pub fn is_essential(&self) -> bool {
        self.essential.unwrap_or(true)
    }
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

/// The ulimit names ECS (and Docker) accept.
pub const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

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

/// Fields AWS uses that mean nothing on a Dockhand host: accepted, warned,
/// ignored.
pub const IGNORED_TASKDEF: &[&str] = &[
    "executionRoleArn",
    "taskRoleArn",
    "requiresCompatibilities",
    "tags",
    "placementConstraints",
    "runtimePlatform",
    "ephemeralStorage",
    "enableFaultInjection",
];
pub const IGNORED_CONTAINER: &[&str] = &["credentialSpecs", "versionConsistency"];

/// Fields Dockhand knows and does not support yet: an error that says so.
pub const UNSUPPORTED_TASKDEF: &[&str] = &[
    "proxyConfiguration",
    "inferenceAccelerators",
    "pidMode",
    "ipcMode",
];
pub const UNSUPPORTED_CONTAINER: &[&str] = &[
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
    "gpu",
];
pub const UNSUPPORTED_VOLUME: &[&str] = &[
    "dockerVolumeConfiguration",
    "efsVolumeConfiguration",
    "fsxWindowsFileServerVolumeConfiguration",
    "configuredAtLaunch",
];
pub const UNSUPPORTED_PORT_MAPPING: &[&str] = &["containerPortRange", "appProtocol"];

/// Removes `ignored` fields (a warning each) and reports `unsupported` ones
/// in the object `value`, found at `path`.
pub fn screen_object(
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
    for field in ignored {
        if object.remove(*field).is_some() {
            warnings.push(SpecError::new(
                join(path, field),
                "AWS-only field, means nothing on a Dockhand host; ignored",
            ));
        }
    }
    for field in unsupported {
        if object.contains_key(*field) {
            errors.push(SpecError::new(
                join(path, field),
                "not supported by Dockhand yet",
            ));
        }
    }
}

/// Pass 1 over a task definition at `path`: see the module docs.
pub fn screen(
    td: &mut serde_json::Value,
    path: &str,
    warnings: &mut Vec<SpecError>,
    errors: &mut Vec<SpecError>,
) {
    screen_object(
        td,
        path,
        IGNORED_TASKDEF,
        UNSUPPORTED_TASKDEF,
        warnings,
        errors,
    );
    if let Some(volumes) = td.get_mut("volumes").and_then(|v| v.as_array_mut()) {
        for (i, v) in volumes.iter_mut().enumerate() {
            let vp = join(path, &format!("volumes[{i}]"));
            screen_object(v, &vp, &[], UNSUPPORTED_VOLUME, warnings, errors);
        }
    }
    let Some(containers) = td
        .get_mut("containerDefinitions")
        .and_then(|v| v.as_array_mut())
    else {
        return;
    };
    for (i, c) in containers.iter_mut().enumerate() {
        let cp = join(path, &format!("containerDefinitions[{i}]"));
        screen_object(
            c,
            &cp,
            IGNORED_CONTAINER,
            UNSUPPORTED_CONTAINER,
            warnings,
            errors,
        );
        if let Some(pms) = c.get_mut("portMappings").and_then(|v| v.as_array_mut()) {
            for (j, pm) in pms.iter_mut().enumerate() {
                let pp = format!("{cp}.portMappings[{j}]");
                screen_object(pm, &pp, &[], UNSUPPORTED_PORT_MAPPING, warnings, errors);
            }
        }
    }
}

/// A parsed, valid task definition and the warnings met on the way.
#[derive(Debug)]
pub struct ParsedTaskDefinition {
    pub task_definition: TaskDefinition,
    pub warnings: Vec<SpecError>,
}

impl TaskDefinition {
    /// Parses and validates a `RegisterTaskDefinition`-shaped JSON value
    /// (paths are relative to it).
    pub fn from_json(mut doc: serde_json::Value) -> Result<ParsedTaskDefinition, Vec<SpecError>> {
        if !doc.is_object() {
            return Err(vec![SpecError::new(
                "",
                "expected a JSON object (an ECS task definition)",
            )]);
        }
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        screen(&mut doc, "", &mut warnings, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let td: TaskDefinition = crate::service::typed(doc)?;
        td.validate("")?;
        Ok(ParsedTaskDefinition {
            task_definition: td,
            warnings,
        })
    }

    /// Pass 3: values and cross-references, with paths under `prefix`.
    pub fn validate(&self, prefix: &str) -> Result<(), Vec<SpecError>> {
        let mut errors = Errors::default();
        self.check(prefix, &mut errors);
        errors.into_result()
    }

    pub(crate) fn check(&self, prefix: &str, e: &mut Errors) {
        if !valid_name(&self.family, 255) {
            e.at(
                prefix,
                "family",
                "must be 1-255 letters, digits, hyphens or underscores",
            );
        }
        match self.network_mode {
            NetworkMode::Bridge | NetworkMode::Host => {}
            other => e.at(
                prefix,
                "networkMode",
                format!(
                    "{} is not supported by Dockhand yet; use bridge or host",
                    other.as_str()
                ),
            ),
        }
        if let Some(v) = &self.cpu {
            if !matches!(v.value(" vcpu", 1024), Some(n) if (1..=MAX_CPU_UNITS).contains(&n)) {
                e.at(
                    prefix,
                    "cpu",
                    format!("must be 1-{MAX_CPU_UNITS} CPU units (\"256\", or \"1 vCPU\")"),
                );
            }
        }
        if let Some(v) = &self.memory {
            if !matches!(v.value(" gb", 1024), Some(n) if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&n))
            {
                e.at(
                    prefix,
                    "memory",
                    format!("must be {MIN_MEMORY_MIB}-{MAX_MEMORY_MIB} MiB (\"512\", or \"2 GB\")"),
                );
            }
        }
        let containers = &self.container_definitions;
        if containers.is_empty() {
            e.at(
                prefix,
                "containerDefinitions",
                "must list at least one container",
            );
        } else if containers.len() > MAX_CONTAINERS {
            e.at(
                prefix,
                "containerDefinitions",
                format!(
                    "has {} containers; a task has at most {MAX_CONTAINERS}",
                    containers.len()
                ),
            );
        } else if !containers.iter().any(ContainerDefinition::is_essential) {
            e.at(
                prefix,
                "containerDefinitions",
                "at least one container must be essential",
            );
        }
        let volume_names = self.check_volumes(prefix, e);
        let mut seen = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for (i, c) in containers.iter().enumerate() {
            let path = join(prefix, &format!("containerDefinitions[{i}]"));
            if !seen.insert(c.name.as_str()) {
                e.at(
                    &path,
                    "name",
                    format!("duplicate container name {:?}", c.name),
                );
            }
            c.check(&path, self, &volume_names, &mut host_ports, e);
        }
        if self.start_order().is_none() {
            e.at(prefix, "containerDefinitions", "dependsOn forms a cycle");
        }
    }

    fn check_volumes<'a>(&'a self, prefix: &str, e: &mut Errors) -> BTreeSet<&'a str> {
        let mut names = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let path = join(prefix, &format!("volumes[{i}]"));
            if !valid_name(&v.name, 255) {
                e.at(
                    &path,
                    "name",
                    "must be 1-255 letters, digits, hyphens or underscores",
                );
            }
            if !names.insert(v.name.as_str()) {
                e.at(&path, "name", format!("duplicate volume {:?}", v.name));
            }
            match v.host.as_ref().and_then(|h| h.source_path.as_deref()) {
                Some(p) => {
                    if let Err(why) = bind_path(p) {
                        e.at(&path, "host.sourcePath", why);
                    }
                }
                None => e.at(
                    &path,
                    "host.sourcePath",
                    "required: Dockhand supports host-path volumes only",
                ),
            }
        }
        names
    }

    /// A stable digest of this task definition: equal definitions give equal
    /// digests across agent restarts and versions, so a revision is
    /// recognised by content.
    pub fn digest(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        let canonical = serde_json::to_vec(self).unwrap_or_default();
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

    /// MiB this task reserves on a host: the task-level `memory`, else the
    /// sum of each container's `memoryReservation` or `memory` (ECS's rule).
    /// Validation bounds every term, so the sum cannot overflow; it
    /// saturates all the same.
    pub fn memory_mib(&self) -> u64 {
        if let Some(m) = self.memory.as_ref().and_then(|m| m.value(" gb", 1024)) {
            return m.max(0) as u64;
        }
        self.container_definitions
            .iter()
            .map(|c| c.memory_reservation.or(c.memory).unwrap_or(0).max(0) as u64)
            .fold(0u64, u64::saturating_add)
    }

    /// CPU units this task reserves: task-level `cpu`, else the containers' sum.
    pub fn cpu_units(&self) -> u64 {
        if let Some(c) = self.cpu.as_ref().and_then(|c| c.value(" vcpu", 1024)) {
            return c.max(0) as u64;
        }
        self.container_definitions
            .iter()
            .map(|c| c.cpu.max(0) as u64)
            .fold(0u64, u64::saturating_add)
    }
}

impl ContainerDefinition {
    fn check(
        &self,
        path: &str,
        td: &TaskDefinition,
        volume_names: &BTreeSet<&str>,
        host_ports: &mut BTreeSet<(i64, Protocol)>,
        e: &mut Errors,
    ) {
        if !valid_name(&self.name, 255) {
            e.at(
                path,
                "name",
                "must be 1-255 letters, digits, hyphens or underscores",
            );
        }
        if self.image.is_empty()
            || self.image.len() > 1024
            || self
                .image
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            e.at(
                path,
                "image",
                "must be an image reference (1-1024 characters, no spaces or control characters)",
            );
        }
        for (field, list) in [
            ("command", &self.command),
            ("entryPoint", &self.entry_point),
        ] {
            for (j, arg) in list.iter().flatten().enumerate() {
                if arg.contains('\0') {
                    e.at(
                        path,
                        &format!("{field}[{j}]"),
                        "must not contain a NUL byte",
                    );
                }
            }
        }
        self.check_environment(path, e);
        if !(0..=MAX_CPU_UNITS).contains(&self.cpu) {
            e.at(path, "cpu", format!("must be 0-{MAX_CPU_UNITS} CPU units"));
        }
        for (field, v) in [
            ("memory", self.memory),
            ("memoryReservation", self.memory_reservation),
        ] {
            if let Some(v) = v {
                if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&v) {
                    e.at(
                        path,
                        field,
                        format!("must be {MIN_MEMORY_MIB}-{MAX_MEMORY_MIB} MiB ({MIN_MEMORY_MIB} MiB is Docker's minimum)"),
                    );
                }
            }
        }
        if let (Some(hard), Some(soft)) = (self.memory, self.memory_reservation) {
            if soft > hard {
                e.at(
                    path,
                    "memoryReservation",
                    format!("must not exceed memory ({soft} > {hard})"),
                );
            }
        }
        if td.memory.is_none() && self.memory.is_none() && self.memory_reservation.is_none() {
            e.at(
                path,
                "",
                "at least one of memory or memoryReservation must be set (or the task-level memory)",
            );
        }
        if let Some(t) = self.stop_timeout {
            if !(0..=MAX_STOP_TIMEOUT).contains(&t) {
                e.at(
                    path,
                    "stopTimeout",
                    format!("must be 0-{MAX_STOP_TIMEOUT} seconds"),
                );
            }
        }
        for (k, v) in &self.docker_labels {
            if k.is_empty() || k.contains('\0') || v.contains('\0') {
                e.at(
                    path,
                    "dockerLabels",
                    format!(
                        "label {k:?}: names must not be empty, and neither may contain a NUL byte"
                    ),
                );
            } else if k.starts_with("dockhand.") && !k.starts_with("dockhand.lb.") {
                e.at(
                    path,
                    "dockerLabels",
                    format!("label {k:?}: the dockhand. prefix is Dockhand's own (dockhand.lb.* route settings excepted)"),
                );
            }
        }
        for (field, v) in [
            ("user", &self.user),
            ("workingDirectory", &self.working_directory),
        ] {
            if v.as_deref().is_some_and(|s| s.contains('\0')) {
                e.at(path, field, "must not contain a NUL byte");
            }
        }
        self.check_ports(path, td.network_mode, host_ports, e);
        for (j, u) in self.ulimits.iter().enumerate() {
            let up = format!("{path}.ulimits[{j}]");
            if !ULIMIT_NAMES.contains(&u.name.as_str()) {
                e.at(
                    &up,
                    "name",
                    format!(
                        "unknown ulimit {:?}; one of {}",
                        u.name,
                        ULIMIT_NAMES.join(", ")
                    ),
                );
            }
            if u.soft_limit < 0 || u.hard_limit < 0 || u.soft_limit > u.hard_limit {
                e.at(
                    &up,
                    "",
                    "softLimit and hardLimit must be >= 0 with softLimit <= hardLimit",
                );
            }
        }
        for (j, m) in self.mount_points.iter().enumerate() {
            let mp = format!("{path}.mountPoints[{j}]");
            if !volume_names.contains(m.source_volume.as_str()) {
                e.at(
                    &mp,
                    "sourceVolume",
                    format!(
                        "no volume named {:?} in the task's volumes",
                        m.source_volume
                    ),
                );
            }
            if let Err(why) = bind_path(&m.container_path) {
                e.at(&mp, "containerPath", why);
            }
        }
        if let Some(l) = &self.log_configuration {
            if l.log_driver.is_empty() || l.log_driver.contains('\0') {
                e.at(path, "logConfiguration.logDriver", "must be a driver name");
            }
        }
        self.check_health_check(path, e);
        self.check_restart_policy(path, e);
        self.check_depends_on(path, td, e);
    }

    fn check_environment(&self, path: &str, e: &mut Errors) {
        let mut names = BTreeSet::new();
        for (j, kv) in self.environment.iter().enumerate() {
            let ep = format!("{path}.environment[{j}]");
            if kv.name.is_empty() {
                e.at(&ep, "name", "must not be empty");
            } else if kv.name.contains('=') || kv.name.contains('\0') {
                e.at(&ep, "name", "must not contain '=' or a NUL byte");
            } else if !names.insert(kv.name.as_str()) {
                e.at(&ep, "name", format!("{:?} is set twice", kv.name));
            }
            if kv.value.contains('\0') {
                e.at(&ep, "value", "must not contain a NUL byte");
            }
        }
    }

    fn check_ports(
        &self,
        path: &str,
        mode: NetworkMode,
        host_ports: &mut BTreeSet<(i64, Protocol)>,
        e: &mut Errors,
    ) {
        let mut container_ports = BTreeSet::new();
        for (j, pm) in self.port_mappings.iter().enumerate() {
            let pp = format!("{path}.portMappings[{j}]");
            let proto = pm.protocol.unwrap_or_default();
            if !(1..=65535).contains(&pm.container_port) {
                e.at(&pp, "containerPort", "must be 1-65535");
            } else if !container_ports.insert((pm.container_port, proto)) {
                e.at(
                    &pp,
                    "containerPort",
                    format!("{}/{} is mapped twice", pm.container_port, proto.as_str()),
                );
            }
            let host_port = match (mode, pm.host_port) {
                (_, Some(hp)) if !(0..=65535).contains(&hp) => {
                    e.at(&pp, "hostPort", "must be 0-65535 (0: dynamic)");
                    continue;
                }
                (NetworkMode::Host, Some(hp)) if hp != pm.container_port => {
                    e.at(
                        &pp,
                        "hostPort",
                        "must equal containerPort (or be omitted) in host network mode",
                    );
                    continue;
                }
                (NetworkMode::Host, _) => pm.container_port,
                (_, Some(hp)) => hp,
                (_, None) => 0,
            };
            if host_port > 0 && !host_ports.insert((host_port, proto)) {
                e.at(
                    &pp,
                    "hostPort",
                    format!("host port {host_port}/{} is mapped twice", proto.as_str()),
                );
            }
        }
    }

    fn check_health_check(&self, path: &str, e: &mut Errors) {
        let Some(hc) = &self.health_check else { return };
        let hp = format!("{path}.healthCheck");
        match hc.command.first().map(String::as_str) {
            Some("CMD") | Some("CMD-SHELL") if hc.command.len() > 1 => {}
            Some("NONE") if hc.command.len() == 1 => {}
            _ => e.at(
                &hp,
                "command",
                "must start with \"CMD\" or \"CMD-SHELL\" followed by the command",
            ),
        }
        if hc.command.iter().any(|a| a.contains('\0')) {
            e.at(&hp, "command", "must not contain a NUL byte");
        }
        // ECS's ranges for container health checks.
        for (field, v, lo, hi) in [
            ("interval", hc.interval, 5, 300),
            ("timeout", hc.timeout, 2, 60),
            ("retries", hc.retries, 1, 10),
            ("startPeriod", hc.start_period, 0, 300),
        ] {
            if v.is_some_and(|v| !(lo..=hi).contains(&v)) {
                e.at(&hp, field, format!("must be {lo}-{hi}"));
            }
        }
    }

    fn check_restart_policy(&self, path: &str, e: &mut Errors) {
        let Some(rp) = &self.restart_policy else {
            return;
        };
        let rpp = format!("{path}.restartPolicy");
        // ECS requires 60-1800; shorter periods are allowed here (tests,
        // fast-crashing sidecars).
        if rp
            .restart_attempt_period
            .is_some_and(|p| !(0..=1800).contains(&p))
        {
            e.at(&rpp, "restartAttemptPeriod", "must be 0-1800 seconds");
        }
        if rp.ignored_exit_codes.len() > 50 {
            e.at(&rpp, "ignoredExitCodes", "at most 50 codes");
        }
        if rp
            .ignored_exit_codes
            .iter()
            .any(|c| i32::try_from(*c).is_err())
        {
            e.at(&rpp, "ignoredExitCodes", "exit codes are 32-bit integers");
        }
    }

    fn check_depends_on(&self, path: &str, td: &TaskDefinition, e: &mut Errors) {
        for (j, d) in self.depends_on.iter().enumerate() {
            let dp = format!("{path}.dependsOn[{j}]");
            let target = td
                .container_definitions
                .iter()
                .find(|o| o.name == d.container_name);
            match target {
                _ if d.container_name == self.name => {
                    e.at(&dp, "containerName", "a container cannot depend on itself")
                }
                None => e.at(
                    &dp,
                    "containerName",
                    format!("no container named {:?} in this task", d.container_name),
                ),
                Some(o)
                    if o.is_essential()
                        && matches!(
                            d.condition,
                            DependencyCondition::Complete | DependencyCondition::Success
                        ) =>
                {
                    e.at(
                        &dp,
                        "containerName",
                        format!(
                            "{:?} is essential, so it cannot be waited on to COMPLETE or SUCCESS",
                            d.container_name
                        ),
                    )
                }
                Some(_) => {}
            }
        }
    }
}

/// A path usable in a Docker bind (`source:target:mode`): absolute, and
/// free of the `:` that would split it and of NUL bytes.
fn bind_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        Err("must be an absolute path")
    } else if p.contains(':') || p.contains('\0') || p.len() > 4096 {
        Err("must not contain ':' or a NUL byte, and be at most 4096 bytes")
    } else {
        Ok(())
    }
}

/// Letters, digits, hyphens and underscores, 1 to `max` of them (ECS's rule
/// for families, container names and service names).
pub fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
