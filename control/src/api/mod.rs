//! The ECS JSON 1.1 API: `POST /` with `X-Amz-Target:
//! AmazonEC2ContainerServiceV20141113.<Operation>` and a JSON body, answered
//! with a JSON body or `{"__type": "<Exception>", "message": …}`.
//!
//! botocore's ECS model (`botocore/data/ecs/2014-11-13/service-2.json`) is
//! the field-by-field spec: operation and field names, defaults, pagination
//! (`nextToken`, `maxResults`), ARNs with the configured region and
//! account, exception names. A field ECS has that Dockhand does not support
//! yet is refused with `InvalidParameterException` naming it, never
//! silently ignored.
//!
//! One file per resource: `clusters.rs`, `taskdefs.rs`, `services.rs`,
//! `tasks.rs`, `instances.rs` (and attributes), `tags.rs`, and `agent.rs`
//! for the managed agents' calls (the session and the reports).

pub mod agent;
pub mod clusters;
pub mod instances;
pub mod render;
pub mod services;
pub mod tags;
pub mod taskdefs;
pub mod tasks;

use crate::auth::Caller;
use crate::store::StoreError;
use crate::Control;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// An error answer: ECS's exception name, its message, the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    pub status: u16,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            status: 400,
        }
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new("InvalidParameterException", message)
    }
    pub fn client(message: impl Into<String>) -> ApiError {
        ApiError::new("ClientException", message)
    }
    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError {
            code: "ServerException",
            message: message.into(),
            status: 500,
        }
    }
    pub fn cluster_not_found() -> ApiError {
        ApiError::new("ClusterNotFoundException", "Cluster not found.")
    }
    pub fn service_not_found() -> ApiError {
        ApiError::new("ServiceNotFoundException", "Service not found.")
    }
    pub fn access_denied(message: impl Into<String>) -> ApiError {
        ApiError::new("AccessDeniedException", message)
    }
    pub fn unsupported(field: &str) -> ApiError {
        ApiError::invalid(format!("{field} is not supported by Dockhand yet."))
    }

    /// The JSON body of the answer.
    pub fn body(&self) -> Value {
        serde_json::json!({"__type": self.code, "message": self.message})
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(cause = %e, "store error");
        ApiError::server(format!("The server could not complete the request: {e}"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::from(StoreError::from(e))
    }
}

pub type ApiResult = Result<Value, ApiError>;

/// Parses a request body into `T`, naming the field of a type error.
pub fn parse<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body.clone()).map_err(|e| {
        let path = e.path().to_string();
        ApiError::invalid(format!("{path}: {}", e.into_inner()))
    })
}

/// Refuses each field of `body` that ECS has and Dockhand does not support,
/// unless its value is empty (null, `[]`, `{}`, `false`).
pub fn refuse_unsupported(body: &Value, fields: &[&str]) -> Result<(), ApiError> {
    for f in fields {
        match body.get(*f) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(Value::Object(o)) if o.is_empty() => {}
            Some(_) => return Err(ApiError::unsupported(f)),
        }
    }
    Ok(())
}

/// Every ECS operation this endpoint answers, and who may call it.
pub const OPERATIONS: &[(&str, Access)] = &[
    ("CreateCluster", Access::Operator),
    ("DescribeClusters", Access::Operator),
    ("ListClusters", Access::Operator),
    ("DeleteCluster", Access::Operator),
    ("RegisterTaskDefinition", Access::Operator),
    ("DescribeTaskDefinition", Access::Operator),
    ("DeregisterTaskDefinition", Access::Operator),
    ("ListTaskDefinitions", Access::Operator),
    ("ListTaskDefinitionFamilies", Access::Operator),
    ("CreateService", Access::Operator),
    ("UpdateService", Access::Operator),
    ("DescribeServices", Access::Operator),
    ("ListServices", Access::Operator),
    ("DeleteService", Access::Operator),
    ("RunTask", Access::Operator),
    ("StartTask", Access::Operator),
    ("StopTask", Access::Operator),
    ("ListTasks", Access::Operator),
    ("DescribeTasks", Access::Operator),
    ("RegisterContainerInstance", Access::Instance),
    ("DeregisterContainerInstance", Access::Instance),
    ("ListContainerInstances", Access::Operator),
    ("DescribeContainerInstances", Access::Operator),
    ("UpdateContainerInstancesState", Access::Instance),
    ("PutAttributes", Access::Operator),
    ("ListAttributes", Access::Operator),
    ("DeleteAttributes", Access::Operator),
    ("DiscoverPollEndpoint", Access::Instance),
    ("SubmitTaskStateChange", Access::Instance),
    ("SubmitContainerStateChange", Access::Instance),
    ("TagResource", Access::Operator),
    ("UntagResource", Access::Operator),
    ("ListTagsForResource", Access::Operator),
];

/// Who may call an operation: operators only, or instance keys too (for
/// their own instance, checked by the operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Operator,
    Instance,
}

/// Answers one call. `target` is the `X-Amz-Target` header, `host` the
/// `Host` header (DiscoverPollEndpoint answers with it).
pub async fn dispatch(
    ctl: &Control,
    caller: &Caller,
    target: &str,
    host: &str,
    body: Value,
) -> ApiResult {
    let (prefix, op) = target.split_once('.').unwrap_or(("", target));
    if prefix == dockhand_model::protocol::AGENT_TARGET_PREFIX {
        return agent::dispatch(ctl, caller, op, body).await;
    }
    if prefix != dockhand_model::protocol::ECS_TARGET_PREFIX {
        return Err(ApiError::new(
            "UnknownOperationException",
            format!("Unknown operation {target:?}"),
        ));
    }
    let Some((_, access)) = OPERATIONS.iter().find(|(name, _)| *name == op) else {
        return Err(ApiError::new(
            "UnknownOperationException",
            format!("{op} is not supported by Dockhand"),
        ));
    };
    if *access == Access::Operator && !caller.is_operator() {
        return Err(ApiError::access_denied(format!(
            "User: {} is not authorized to perform: ecs:{op} (instance keys may only register, deregister and drain their own instance, poll, and report)",
            caller.name()
        )));
    }
    if !body.is_object() {
        return Err(ApiError::new(
            "SerializationException",
            "the request body must be a JSON object",
        ));
    }
    match op {
        "CreateCluster" => clusters::create(ctl, &body).await,
        "DescribeClusters" => clusters::describe(ctl, &body).await,
        "ListClusters" => clusters::list(ctl, &body).await,
        "DeleteCluster" => clusters::delete(ctl, &body).await,
        "RegisterTaskDefinition" => taskdefs::register(ctl, &body).await,
        "DescribeTaskDefinition" => taskdefs::describe(ctl, &body).await,
        "DeregisterTaskDefinition" => taskdefs::deregister(ctl, &body).await,
        "ListTaskDefinitions" => taskdefs::list(ctl, &body).await,
        "ListTaskDefinitionFamilies" => taskdefs::families(ctl, &body).await,
        "CreateService" => services::create(ctl, &body).await,
        "UpdateService" => services::update(ctl, &body).await,
        "DescribeServices" => services::describe(ctl, &body).await,
        "ListServices" => services::list(ctl, &body).await,
        "DeleteService" => services::delete(ctl, &body).await,
        "RunTask" => tasks::run(ctl, &body).await,
        "StartTask" => tasks::start(ctl, &body).await,
        "StopTask" => tasks::stop(ctl, &body).await,
        "ListTasks" => tasks::list(ctl, &body).await,
        "DescribeTasks" => tasks::describe(ctl, &body).await,
        "RegisterContainerInstance" => instances::register(ctl, caller, &body).await,
        "DeregisterContainerInstance" => instances::deregister(ctl, caller, &body).await,
        "ListContainerInstances" => instances::list(ctl, &body).await,
        "DescribeContainerInstances" => instances::describe(ctl, &body).await,
        "UpdateContainerInstancesState" => instances::update_state(ctl, caller, &body).await,
        "PutAttributes" => instances::put_attributes(ctl, &body).await,
        "ListAttributes" => instances::list_attributes(ctl, &body).await,
        "DeleteAttributes" => instances::delete_attributes(ctl, &body).await,
        "DiscoverPollEndpoint" => agent::discover(ctl, caller, host, &body).await,
        "SubmitTaskStateChange" => agent::submit_task(ctl, caller, &body).await,
        "SubmitContainerStateChange" => agent::submit_container(ctl, caller, &body).await,
        "TagResource" => tags::tag(ctl, &body).await,
        "UntagResource" => tags::untag(ctl, &body).await,
        "ListTagsForResource" => tags::list(ctl, &body).await,
        _ => Err(ApiError::server(format!("{op} is listed but not routed"))),
    }
}

/// A page of `items` after `next_token`, at most `max` (1-`limit`,
/// default `limit`), and the token of the next page.
///
/// Pages follow `key` in byte order, whatever order `items` came in: a
/// token names the last key returned, and the next page starts after it.
/// (PostgreSQL's `ORDER BY` follows the database's collation, where `Cc`
/// sorts between `bb` and `dd`; resuming by byte order over that order
/// skipped items.) Keys must be unique.
pub fn page<T: Clone>(
    items: &[T],
    key: impl Fn(&T) -> String,
    next_token: Option<&str>,
    max: Option<i64>,
    limit: i64,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let max = match max {
        None => limit,
        Some(m) if (1..=limit).contains(&m) => m,
        Some(m) => {
            return Err(ApiError::invalid(format!(
                "maxResults must be 1-{limit}, got {m}"
            )))
        }
    };
    let mut keyed: Vec<(String, &T)> = items.iter().map(|i| (key(i), i)).collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let start = match next_token {
        None | Some("") => 0,
        Some(t) => {
            let after = decode_token(t).ok_or_else(|| ApiError::invalid("Invalid nextToken."))?;
            keyed.partition_point(|(k, _)| *k <= after)
        }
    };
    let end = (start + max as usize).min(keyed.len());
    let page = keyed[start..end]
        .iter()
        .map(|(_, i)| (*i).clone())
        .collect();
    let next = (end < keyed.len()).then(|| encode_token(&keyed[end - 1].0));
    Ok((page, next))
}

fn encode_token(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(t: &str) -> Option<String> {
    if !t.len().is_multiple_of(2) || t.len() > 4096 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The cluster a request names (`cluster`: a name or an ARN), `default`
/// when absent.
pub fn cluster_name(body: &Value) -> Result<String, ApiError> {
    match body.get("cluster") {
        None | Some(Value::Null) => Ok("default".into()),
        Some(Value::String(s)) => Ok(name_of(s).to_string()),
        Some(_) => Err(ApiError::invalid("cluster must be a string")),
    }
}

/// The last path segment of an ARN, or the string itself.
pub fn name_of(s: &str) -> &str {
    if s.starts_with("arn:") {
        s.rsplit('/').next().unwrap_or(s)
    } else {
        s
    }
}

/// The cluster and name of the service `service` names in a request:
/// a name, or an ARN. A service ARN of today's form
/// (`arn:aws:ecs:REGION:ACCOUNT:service/CLUSTER/NAME`) names its
/// cluster: it is used when the request has no `cluster`, and must be the
/// request's when it has one (ECS's InvalidParameterException otherwise);
/// the older form (`service/NAME`) and a plain name are in the request's
/// cluster.
pub fn service_ref(body: &Value, service: &str) -> Result<(String, String), ApiError> {
    let cluster = cluster_name(body)?;
    let Some(rest) = service.strip_prefix("arn:") else {
        return Ok((cluster, service.to_string()));
    };
    let resource = rest.splitn(5, ':').nth(4).unwrap_or("");
    let parts: Vec<&str> = resource.split('/').collect();
    match parts.as_slice() {
        ["service", name] if !name.is_empty() => Ok((cluster, name.to_string())),
        ["service", in_arn, name] if !in_arn.is_empty() && !name.is_empty() => {
            let explicit = !matches!(body.get("cluster"), None | Some(Value::Null));
            if explicit && cluster != *in_arn {
                return Err(ApiError::invalid(format!(
                    "the service ARN {service:?} is in cluster {in_arn:?}, not in {cluster:?}"
                )));
            }
            Ok((in_arn.to_string(), name.to_string()))
        }
        _ => Err(ApiError::invalid(format!(
            "{service:?} is not a service name or service ARN"
        ))),
    }
}

/// Fails with ClusterNotFoundException unless the cluster is ACTIVE.
pub async fn require_cluster(ctl: &Control, name: &str) -> Result<(), ApiError> {
    let mut c = ctl.store.read().await?;
    active_cluster(&mut c, name).await
}

/// Fails with ClusterNotFoundException unless the cluster is ACTIVE,
/// inside the caller's transaction.
pub async fn active_cluster(c: &mut sqlx::AnyConnection, name: &str) -> Result<(), ApiError> {
    match crate::store::get_cluster(c, name).await? {
        Some(r) if r.status == "ACTIVE" => Ok(()),
        _ => Err(ApiError::cluster_not_found()),
    }
}

/// A `Failure` entry, ECS's shape.
pub fn failure(arn: &str, reason: &str) -> Value {
    serde_json::json!({"arn": arn, "reason": reason})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_resume_after_the_token() {
        let items: Vec<String> = (0..250).map(|i| format!("arn:{i:03}")).collect();
        let (p1, t1) = page(&items, |s| s.clone(), None, None, 100).unwrap();
        assert_eq!(p1.len(), 100);
        let (p2, t2) = page(&items, |s| s.clone(), t1.as_deref(), None, 100).unwrap();
        assert_eq!(p2[0], "arn:100");
        let (p3, t3) = page(&items, |s| s.clone(), t2.as_deref(), None, 100).unwrap();
        assert_eq!(p3.len(), 50);
        assert!(t3.is_none());
        assert!(page(&items, |s| s.clone(), Some("zz"), None, 100).is_err());
        assert!(page(&items, |s| s.clone(), None, Some(0), 100).is_err());
    }

    #[test]
    fn pages_follow_byte_order_whatever_order_the_items_came_in() {
        // The order PostgreSQL gives under en_US.UTF-8: `Cc` between `bb`
        // and `dd`. Resuming after `bb` by byte order used to skip `Cc`.
        let items: Vec<String> = ["aa", "bb", "Cc", "dd"].map(String::from).to_vec();
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let (p, next) = page(&items, |s| s.clone(), token.as_deref(), Some(1), 100).unwrap();
            seen.extend(p);
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, ["Cc", "aa", "bb", "dd"]);
    }

    #[test]
    fn a_service_arn_names_its_cluster() {
        let arn = "arn:aws:ecs:us-east-1:000000000000:service/staging/web";
        let no_cluster = serde_json::json!({});
        assert_eq!(
            service_ref(&no_cluster, arn).unwrap(),
            ("staging".to_string(), "web".to_string())
        );
        let same = serde_json::json!({"cluster": "staging"});
        assert_eq!(service_ref(&same, arn).unwrap().0, "staging");
        let same_arn =
            serde_json::json!({"cluster": "arn:aws:ecs:us-east-1:000000000000:cluster/staging"});
        assert_eq!(service_ref(&same_arn, arn).unwrap().0, "staging");
        let other = serde_json::json!({"cluster": "default"});
        let e = service_ref(&other, arn).unwrap_err();
        assert_eq!(e.code, "InvalidParameterException");
        // The old form and a plain name are in the request's cluster.
        let old = "arn:aws:ecs:us-east-1:000000000000:service/web";
        assert_eq!(
            service_ref(&other, old).unwrap(),
            ("default".to_string(), "web".to_string())
        );
        assert_eq!(service_ref(&no_cluster, "web").unwrap().0, "default");
        assert!(service_ref(&no_cluster, "arn:aws:ecs:us-east-1:0:task/x/y").is_err());
    }
}
