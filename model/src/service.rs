//! Services, in `CreateService`'s shape, plus the routing and health-check
//! fields ECS keeps in an ALB target group. A standalone service file is one
//! [`ServiceSpec`] with its task definition inline.

use crate::error::{join, Errors, SpecError};
use crate::route::{self, Algorithm, HealthCheckSettings, Matcher, RouteSettings};
use crate::taskdef::{self, valid_name, TaskDefinition};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The largest `desiredCount` accepted (per service; ECS's own quota is
/// 5,000 tasks per service by default).
pub const MAX_DESIRED_COUNT: i64 = 10_000;
/// `healthCheckGracePeriodSeconds` at most: a week (ECS allows 2^31-1 s,
/// 68 years, which no deployment means).
pub const MAX_GRACE_PERIOD_SECONDS: i64 = 7 * 86_400;

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

/// ECS's defaults for a REPLICA service.
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
    /// HTTPS for this route's hosts on the proxy's TLS listeners.
    #[serde(default)]
    pub tls: Option<RouteTls>,
    /// ALB's target group `ProtocolVersion`: `HTTP1` (the default), or
    /// `HTTP2` / `GRPC` for tasks reached over HTTP/2 (prior knowledge).
    #[serde(default)]
    pub protocol_version: Option<String>,
}

/// A route's HTTPS: its certificate (PEM files on the host, picked by SNI
/// for the route's `hosts`; else the proxy's default certificate serves),
/// and whether plain HTTP is redirected to HTTPS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTls {
    #[serde(default)]
    pub certificate_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub redirect_http: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

impl LoadBalancer {
    /// The route this entry describes, defaults applied. Call on validated
    /// entries: out-of-range values are clamped rather than trusted.
    pub fn route_settings(&self, grace_seconds: i64) -> RouteSettings {
        let hc = self.health_check.clone().unwrap_or_default();
        let secs = |v: Option<i64>, default: i64, (lo, hi): (i64, i64)| {
            Duration::from_secs(v.unwrap_or(default).clamp(lo, hi) as u64)
        };
        let count = |v: Option<i64>, default: i64| {
            v.unwrap_or(default)
                .clamp(route::THRESHOLD_RANGE.0, route::THRESHOLD_RANGE.1) as u32
        };
        RouteSettings {
            hosts: self.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            path_prefix: self.path_prefix.clone().unwrap_or_else(|| "/".into()),
            health_check: HealthCheckSettings {
                path: hc
                    .path
                    .filter(|p| route::check_origin_form(p).is_ok())
                    .unwrap_or_else(|| route::DEFAULT_HEALTH_PATH.into()),
                interval: secs(
                    hc.interval_seconds,
                    route::DEFAULT_INTERVAL_SECONDS,
                    route::INTERVAL_RANGE,
                ),
                timeout: secs(
                    hc.timeout_seconds,
                    route::DEFAULT_TIMEOUT_SECONDS,
                    route::TIMEOUT_RANGE,
                ),
                healthy_threshold: count(
                    hc.healthy_threshold_count,
                    route::DEFAULT_HEALTHY_THRESHOLD,
                ),
                unhealthy_threshold: count(
                    hc.unhealthy_threshold_count,
                    route::DEFAULT_UNHEALTHY_THRESHOLD,
                ),
                matcher: hc
                    .matcher
                    .as_deref()
                    .and_then(|m| Matcher::parse(m).ok())
                    .unwrap_or_default(),
            },
            deregistration_delay: secs(
                self.deregistration_delay_seconds,
                route::DEFAULT_DEREGISTRATION_DELAY,
                route::DEREGISTRATION_DELAY_RANGE,
            ),
            algorithm: self
                .load_balancing_algorithm
                .as_deref()
                .and_then(Algorithm::parse)
                .unwrap_or_default(),
            grace: Duration::from_secs(grace_seconds.clamp(0, MAX_GRACE_PERIOD_SECONDS) as u64),
            certificate: self
                .tls
                .as_ref()
                .and_then(|t| Some((t.certificate_file.clone()?, t.key_file.clone()?))),
            redirect_https: self.tls.as_ref().is_some_and(|t| t.redirect_http),
            http2_to_tasks: matches!(self.protocol_version.as_deref(), Some("HTTP2" | "GRPC")),
        }
    }

    /// Checks this entry against the task definition it routes to.
    pub(crate) fn check(&self, path: &str, td: &TaskDefinition, e: &mut Errors) {
        match td
            .container_definitions
            .iter()
            .find(|c| c.name == self.container_name)
        {
            None => e.at(
                path,
                "containerName",
                format!(
                    "no container named {:?} in the task definition",
                    self.container_name
                ),
            ),
            Some(c) => {
                if !c
                    .port_mappings
                    .iter()
                    .any(|p| p.container_port == self.container_port)
                {
                    e.at(
                        path,
                        "containerPort",
                        format!(
                            "container {:?} has no portMapping for containerPort {}",
                            c.name, self.container_port
                        ),
                    );
                }
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if let Err(why) = route::check_host(h) {
                e.at(path, &format!("hosts[{i}]"), why);
            }
        }
        if let Some(p) = &self.path_prefix {
            if let Err(why) = route::check_origin_form(p) {
                e.at(path, "pathPrefix", why);
            } else if p.contains('?') {
                e.at(path, "pathPrefix", "must not contain a query ('?')");
            }
        }
        if let Some(hc) = &self.health_check {
            let hp = join(path, "healthCheck");
            if let Some(p) = &hc.path {
                if let Err(why) = route::check_origin_form(p) {
                    e.at(&hp, "path", why);
                }
            }
            for (field, v, (lo, hi)) in [
                (
                    "intervalSeconds",
                    hc.interval_seconds,
                    route::INTERVAL_RANGE,
                ),
                ("timeoutSeconds", hc.timeout_seconds, route::TIMEOUT_RANGE),
                (
                    "healthyThresholdCount",
                    hc.healthy_threshold_count,
                    route::THRESHOLD_RANGE,
                ),
                (
                    "unhealthyThresholdCount",
                    hc.unhealthy_threshold_count,
                    route::THRESHOLD_RANGE,
                ),
            ] {
                if v.is_some_and(|v| !(lo..=hi).contains(&v)) {
                    e.at(&hp, field, format!("must be {lo}-{hi}"));
                }
            }
            if let Some(m) = &hc.matcher {
                if let Err(why) = Matcher::parse(m) {
                    e.at(&hp, "matcher", why);
                }
            }
        }
        if let Some(v) = &self.protocol_version {
            if !matches!(v.as_str(), "HTTP1" | "HTTP2" | "GRPC") {
                e.at(
                    path,
                    "protocolVersion",
                    format!("expected HTTP1, HTTP2 or GRPC, got {v:?}"),
                );
            }
        }
        if let Some(t) = &self.tls {
            let tp = join(path, "tls");
            match (&t.certificate_file, &t.key_file) {
                (Some(_), None) => e.at(&tp, "keyFile", "required with certificateFile"),
                (None, Some(_)) => e.at(&tp, "certificateFile", "required with keyFile"),
                (Some(_), Some(_)) if self.hosts.is_empty() => e.at(
                    path,
                    "hosts",
                    "a route with its own certificate must list the host names it serves (picked by SNI)",
                ),
                _ => {}
            }
            for (field, f) in [
                ("certificateFile", &t.certificate_file),
                ("keyFile", &t.key_file),
            ] {
                if let Some(f) = f {
                    if !f.starts_with('/') || f.contains('\0') || f.len() > 4096 {
                        e.at(
                            &tp,
                            field,
                            format!("expected an absolute file path, got {f:?}"),
                        );
                    }
                }
            }
        }
        let (lo, hi) = route::DEREGISTRATION_DELAY_RANGE;
        if self
            .deregistration_delay_seconds
            .is_some_and(|d| !(lo..=hi).contains(&d))
        {
            e.at(
                path,
                "deregistrationDelaySeconds",
                format!("must be {lo}-{hi}"),
            );
        }
        if let Some(a) = &self.load_balancing_algorithm {
            if Algorithm::parse(a).is_none() {
                e.at(
                    path,
                    "loadBalancingAlgorithm",
                    format!("expected least_outstanding_requests or round_robin, got {a:?}"),
                );
            }
        }
    }
}

/// The `dockerLabels` of a routed container that set its route when the
/// service comes through the ECS API (whose `loadBalancers` entries only
/// have `containerName` and `containerPort`): each is the service file's
/// field of the same meaning.
pub const LB_LABELS: &[&str] = &[
    "dockhand.lb.hosts",
    "dockhand.lb.path-prefix",
    "dockhand.lb.health-check.path",
    "dockhand.lb.health-check.interval-seconds",
    "dockhand.lb.health-check.timeout-seconds",
    "dockhand.lb.health-check.healthy-threshold",
    "dockhand.lb.health-check.unhealthy-threshold",
    "dockhand.lb.health-check.matcher",
    "dockhand.lb.deregistration-delay-seconds",
    "dockhand.lb.algorithm",
    "dockhand.lb.tls.certificate-file",
    "dockhand.lb.tls.key-file",
    "dockhand.lb.tls.redirect-http",
    "dockhand.lb.protocol-version",
];

impl LoadBalancer {
    /// The route of an ECS API `loadBalancers` entry for container
    /// `container_name`: defaults, overridden by that container's
    /// `dockhand.lb.*` labels; checked against the task definition. Errors
    /// name the label (`containerDefinitions[i].dockerLabels.<name>`).
    pub fn from_api(
        container_name: &str,
        container_port: i64,
        td: &TaskDefinition,
    ) -> Result<LoadBalancer, Vec<SpecError>> {
        let mut lb = LoadBalancer {
            container_name: container_name.to_string(),
            container_port,
            hosts: Vec::new(),
            path_prefix: None,
            health_check: None,
            deregistration_delay_seconds: None,
            load_balancing_algorithm: None,
            tls: None,
            protocol_version: None,
        };
        let mut e = Errors::default();
        let mut tls = RouteTls::default();
        if let Some((i, c)) = td
            .container_definitions
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == container_name)
        {
            let path = format!("containerDefinitions[{i}].dockerLabels");
            let mut hc = TargetHealthCheck::default();
            for (k, v) in c.docker_labels.range("dockhand.lb.".to_string()..) {
                if !k.starts_with("dockhand.lb.") {
                    break;
                }
                let mut int = |slot: &mut Option<i64>| match v.trim().parse::<i64>() {
                    Ok(n) => *slot = Some(n),
                    Err(_) => e.at(&path, k, format!("expected a whole number, got {v:?}")),
                };
                match k.as_str() {
                    "dockhand.lb.hosts" => {
                        lb.hosts = v
                            .split(',')
                            .map(str::trim)
                            .filter(|h| !h.is_empty())
                            .map(str::to_string)
                            .collect()
                    }
                    "dockhand.lb.path-prefix" => lb.path_prefix = Some(v.clone()),
                    "dockhand.lb.health-check.path" => hc.path = Some(v.clone()),
                    "dockhand.lb.health-check.interval-seconds" => int(&mut hc.interval_seconds),
                    "dockhand.lb.health-check.timeout-seconds" => int(&mut hc.timeout_seconds),
                    "dockhand.lb.health-check.healthy-threshold" => {
                        int(&mut hc.healthy_threshold_count)
                    }
                    "dockhand.lb.health-check.unhealthy-threshold" => {
                        int(&mut hc.unhealthy_threshold_count)
                    }
                    "dockhand.lb.health-check.matcher" => hc.matcher = Some(v.clone()),
                    "dockhand.lb.deregistration-delay-seconds" => {
                        int(&mut lb.deregistration_delay_seconds)
                    }
                    "dockhand.lb.algorithm" => lb.load_balancing_algorithm = Some(v.clone()),
                    "dockhand.lb.tls.certificate-file" => tls.certificate_file = Some(v.clone()),
                    "dockhand.lb.tls.key-file" => tls.key_file = Some(v.clone()),
                    "dockhand.lb.protocol-version" => lb.protocol_version = Some(v.clone()),
                    "dockhand.lb.tls.redirect-http" => match v.trim() {
                        "true" => tls.redirect_http = true,
                        "false" => tls.redirect_http = false,
                        _ => e.at(&path, k, format!("expected true or false, got {v:?}")),
                    },
                    _ => e.at(
                        &path,
                        k,
                        format!("unknown route label; one of {}", LB_LABELS.join(", ")),
                    ),
                }
            }
            if hc != TargetHealthCheck::default() {
                lb.health_check = Some(hc);
            }
            if tls != RouteTls::default() {
                lb.tls = Some(tls);
            }
        }
        lb.check("", td, &mut e);
        e.into_result().map(|()| lb)
    }
}

/// Fields AWS uses that mean nothing on one host: accepted, warned, ignored.
pub const IGNORED_SERVICE: &[&str] = &[
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
pub const IGNORED_LOAD_BALANCER: &[&str] = &["targetGroupArn", "loadBalancerName"];
/// Fields Dockhand knows and does not support yet: an error that says so.
pub const UNSUPPORTED_SERVICE: &[&str] = &[
    "networkConfiguration",
    "serviceRegistries",
    "serviceConnectConfiguration",
    "volumeConfigurations",
    "taskDefinitionArn",
];

/// The result of parsing one service file.
#[derive(Debug)]
pub struct Parsed {
    pub spec: ServiceSpec,
    pub warnings: Vec<SpecError>,
}

/// serde with `deny_unknown_fields`: a wrong type or unknown field, at its
/// path.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    doc: serde_json::Value,
) -> Result<T, Vec<SpecError>> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        vec![SpecError::new(
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )]
    })
}

impl ServiceSpec {
    /// Parses and validates a service file's text. Every error is returned,
    /// each with its JSON path; the warnings list ignored AWS-only fields.
    pub fn parse(text: &str) -> Result<Parsed, Vec<SpecError>> {
        let mut doc = crate::json::parse_strict(text).map_err(|e| vec![e])?;
        if !doc.is_object() {
            return Err(vec![SpecError::new(
                "",
                "expected a JSON object (an ECS CreateService request)",
            )]);
        }
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        taskdef::screen_object(
            &mut doc,
            "",
            IGNORED_SERVICE,
            UNSUPPORTED_SERVICE,
            &mut warnings,
            &mut errors,
        );
        if let Some(lbs) = doc.get_mut("loadBalancers").and_then(|v| v.as_array_mut()) {
            for (i, lb) in lbs.iter_mut().enumerate() {
                let path = format!("loadBalancers[{i}]");
                taskdef::screen_object(
                    lb,
                    &path,
                    IGNORED_LOAD_BALANCER,
                    &[],
                    &mut warnings,
                    &mut errors,
                );
            }
        }
        if let Some(td) = doc.get_mut("taskDefinition") {
            taskdef::screen(td, "taskDefinition", &mut warnings, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let spec: ServiceSpec = typed(doc)?;
        spec.validate()?;
        Ok(Parsed { spec, warnings })
    }

    /// Pass 3: values and cross-references.
    pub fn validate(&self) -> Result<(), Vec<SpecError>> {
        let mut e = Errors::default();
        if !valid_name(&self.service_name, 255) {
            e.at(
                "",
                "serviceName",
                "must be 1-255 letters, digits, hyphens or underscores",
            );
        }
        match (self.scheduling_strategy, self.desired_count) {
            (SchedulingStrategy::Replica, None) => e.at(
                "",
                "desiredCount",
                "required for schedulingStrategy REPLICA",
            ),
            (_, Some(n)) if !(0..=MAX_DESIRED_COUNT).contains(&n) => {
                e.at("", "desiredCount", format!("must be 0-{MAX_DESIRED_COUNT}"))
            }
            _ => {}
        }
        self.deployment_configuration
            .check("deploymentConfiguration", &mut e);
        if !(0..=MAX_GRACE_PERIOD_SECONDS).contains(&self.health_check_grace_period_seconds) {
            e.at(
                "",
                "healthCheckGracePeriodSeconds",
                format!("must be 0-{MAX_GRACE_PERIOD_SECONDS} seconds"),
            );
        }
        self.task_definition.check("taskDefinition", &mut e);
        for (i, lb) in self.load_balancers.iter().enumerate() {
            lb.check(
                &format!("loadBalancers[{i}]"),
                &self.task_definition,
                &mut e,
            );
        }
        e.into_result()
    }

    /// How many tasks this service wants on one host (standalone mode).
    pub fn wanted_tasks(&self) -> u32 {
        match self.scheduling_strategy {
            SchedulingStrategy::Daemon => 1,
            // validate() bounds it.
            SchedulingStrategy::Replica => {
                self.desired_count.unwrap_or(0).clamp(0, MAX_DESIRED_COUNT) as u32
            }
        }
    }

    /// The routes of this service, defaults applied.
    pub fn routes(&self) -> Vec<RouteSettings> {
        self.load_balancers
            .iter()
            .map(|lb| lb.route_settings(self.health_check_grace_period_seconds))
            .collect()
    }
}

impl DeploymentConfiguration {
    pub(crate) fn check(&self, path: &str, e: &mut Errors) {
        if !(0..=100).contains(&self.minimum_healthy_percent) {
            e.at(path, "minimumHealthyPercent", "must be 0-100");
        }
        if !(100..=1000).contains(&self.maximum_percent) {
            e.at(path, "maximumPercent", "must be 100-1000");
        }
    }

    /// Whether the circuit breaker rolls a failed deployment back.
    pub fn rolls_back(&self) -> bool {
        self.deployment_circuit_breaker
            .as_ref()
            .is_some_and(|c| c.enable && c.rollback)
    }
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
    fn a_routes_tls_is_checked_at_its_path() {
        let mut doc = article_service();
        doc["loadBalancers"][0]["tls"] = json!({"certificateFile": "/etc/tls/shop.pem", "keyFile": "/etc/tls/shop.key",
                   "redirectHttp": true});
        let p = ServiceSpec::parse(&doc.to_string()).unwrap();
        let r = p.spec.load_balancers[0].route_settings(0);
        assert_eq!(
            r.certificate,
            Some(("/etc/tls/shop.pem".into(), "/etc/tls/shop.key".into()))
        );
        assert!(r.redirect_https);
        assert!(!r.http2_to_tasks);
        doc["loadBalancers"][0]["protocolVersion"] = json!("GRPC");
        let p = ServiceSpec::parse(&doc.to_string()).unwrap();
        assert!(p.spec.load_balancers[0].route_settings(0).http2_to_tasks);
        doc["loadBalancers"][0]["protocolVersion"] = json!("HTTP3");
        assert_eq!(
            errors_of(doc.clone()),
            vec!["loadBalancers[0].protocolVersion: expected HTTP1, HTTP2 or GRPC, got \"HTTP3\""]
        );
        doc["loadBalancers"][0]["protocolVersion"] = json!("HTTP2");

        doc["loadBalancers"][0]["tls"] = json!({"certificateFile": "shop.pem"});
        doc["loadBalancers"][0]["hosts"] = json!([]);
        assert_eq!(
            errors_of(doc),
            vec![
                "loadBalancers[0].tls.keyFile: required with certificateFile",
                "loadBalancers[0].tls.certificateFile: expected an absolute file path, got \"shop.pem\"",
            ]
        );
        let mut doc = article_service();
        doc["loadBalancers"][0]["hosts"] = json!([]);
        doc["loadBalancers"][0]["tls"] = json!({"certificateFile": "/a.pem", "keyFile": "/a.key"});
        assert_eq!(
            errors_of(doc),
            vec!["loadBalancers[0].hosts: a route with its own certificate must list the host names it serves (picked by SNI)"]
        );
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

    #[test]
    fn digests_are_stable_across_versions() {
        // The digest of the example as the agent computed it before the
        // model crate existed: a change here would replace every running
        // task on upgrade.
        let text = include_str!("../../examples/hello-world-service.json");
        let p = ServiceSpec::parse(text).unwrap();
        assert_eq!(p.spec.task_definition.digest(), "9366fa115adb5755");
    }

    #[test]
    fn api_routes_take_their_settings_from_the_container_labels() {
        let mut doc = article_service()["taskDefinition"].clone();
        let td = TaskDefinition::from_json(doc.clone())
            .unwrap()
            .task_definition;
        let lb = LoadBalancer::from_api("hello-world-container", 5000, &td).unwrap();
        assert_eq!(lb.route_settings(0).health_check.path, "/");
        assert!(lb.hosts.is_empty());

        doc["containerDefinitions"][0]["dockerLabels"] = json!({
            "dockhand.lb.hosts": "a.example, b.example",
            "dockhand.lb.health-check.path": "/health",
            "dockhand.lb.health-check.interval-seconds": "5",
            "dockhand.lb.deregistration-delay-seconds": "3",
        });
        let td = TaskDefinition::from_json(doc.clone())
            .unwrap()
            .task_definition;
        let lb = LoadBalancer::from_api("hello-world-container", 5000, &td).unwrap();
        let r = lb.route_settings(0);
        assert_eq!(r.hosts, ["a.example", "b.example"]);
        assert_eq!(r.health_check.path, "/health");
        assert_eq!(r.health_check.interval, Duration::from_secs(5));
        assert_eq!(r.deregistration_delay, Duration::from_secs(3));

        doc["containerDefinitions"][0]["dockerLabels"] = json!({
            "dockhand.lb.health-check.interval-seconds": "often",
            "dockhand.lb.colour": "blue",
            "dockhand.lb.health-check.timeout-seconds": "999",
        });
        let td = TaskDefinition::from_json(doc).unwrap().task_definition;
        let errors: Vec<String> = LoadBalancer::from_api("hello-world-container", 5000, &td)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("dockerLabels.dockhand.lb.colour: unknown route label"),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("interval-seconds: expected a whole number")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("timeoutSeconds: must be")),
            "{errors:?}"
        );

        assert!(LoadBalancer::from_api("nope", 5000, &td).is_err());
        assert!(LoadBalancer::from_api("hello-world-container", 80, &td).is_err());
    }
}
