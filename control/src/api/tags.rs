//! TagResource, UntagResource, ListTagsForResource: tags of clusters,
//! services, tasks, task definitions and container instances.

use super::{parse, ApiError, ApiResult};
use crate::store;
use crate::Control;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// ECS's limits on tags.
fn check(tags: &[Tag]) -> Result<(), ApiError> {
    if tags.len() > 50 {
        return Err(ApiError::invalid("tags: at most 50 per resource"));
    }
    for t in tags {
        if t.key.is_empty() || t.key.chars().count() > 128 || t.value.chars().count() > 256 {
            return Err(ApiError::invalid(
                "tags: keys are 1-128 characters and values at most 256",
            ));
        }
        if t.key.to_ascii_lowercase().starts_with("aws:") {
            return Err(ApiError::invalid("tags: the aws: prefix is reserved"));
        }
    }
    Ok(())
}

/// Sets `tags` on `resource` (within the caller's transaction).
pub async fn apply(
    c: &mut sqlx::AnyConnection,
    resource: &str,
    tags: &[Tag],
) -> Result<(), ApiError> {
    check(tags)?;
    for t in tags {
        store::put_tag(c, resource, &t.key, &t.value).await?;
    }
    Ok(())
}

/// Whether the resource an ARN names exists.
async fn exists(ctl: &Control, c: &mut sqlx::AnyConnection, arn: &str) -> Result<bool, ApiError> {
    let prefix = ctl.arn("");
    let Some(rest) = arn.strip_prefix(&prefix) else {
        return Ok(false);
    };
    let mut parts = rest.splitn(2, '/');
    let kind = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    Ok(match kind {
        "cluster" => store::get_cluster(c, path)
            .await?
            .is_some_and(|r| r.status == "ACTIVE"),
        "service" => {
            let (cluster, name) = path.split_once('/').unwrap_or(("", path));
            store::get_service(c, cluster, name).await?.is_some()
        }
        "task" => store::get_task(c, arn).await?.is_some(),
        "container-instance" => store::get_instance(c, arn).await?.is_some(),
        "task-definition" => {
            let (family, rev) = path.rsplit_once(':').unwrap_or((path, ""));
            match rev.parse::<i64>() {
                Ok(r) => store::get_taskdef(c, family, r).await?.is_some(),
                Err(_) => false,
            }
        }
        _ => false,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagRequest {
    resource_arn: String,
    tags: Vec<Tag>,
}

pub async fn tag(ctl: &Control, body: &Value) -> ApiResult {
    let req: TagRequest = parse(body)?;
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    if !exists(ctl, &mut tx, &req.resource_arn).await? {
        return Err(ApiError::new(
            "ResourceNotFoundException",
            "The specified resource is not found.",
        ));
    }
    apply(&mut tx, &req.resource_arn, &req.tags).await?;
    if store::tags(&mut tx, &req.resource_arn).await?.len() > 50 {
        return Err(ApiError::invalid("tags: at most 50 per resource"));
    }
    tx.commit().await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UntagRequest {
    resource_arn: String,
    tag_keys: Vec<String>,
}

pub async fn untag(ctl: &Control, body: &Value) -> ApiResult {
    let req: UntagRequest = parse(body)?;
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    if !exists(ctl, &mut tx, &req.resource_arn).await? {
        return Err(ApiError::new(
            "ResourceNotFoundException",
            "The specified resource is not found.",
        ));
    }
    for k in &req.tag_keys {
        store::delete_tag(&mut tx, &req.resource_arn, k).await?;
    }
    tx.commit().await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListRequest {
    resource_arn: String,
}

pub async fn list(ctl: &Control, body: &Value) -> ApiResult {
    let req: ListRequest = parse(body)?;
    let mut c = ctl.store.read().await?;
    if !exists(ctl, &mut c, &req.resource_arn).await? {
        return Err(ApiError::new(
            "ResourceNotFoundException",
            "The specified resource is not found.",
        ));
    }
    let tags = store::tags(&mut c, &req.resource_arn).await?;
    Ok(json!({ "tags": super::render::tags(&tags) }))
}
