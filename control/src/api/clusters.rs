//! CreateCluster, DescribeClusters, ListClusters, DeleteCluster.

use super::render::{self, ClusterCounts};
use super::{cluster_name, failure, page, parse, refuse_unsupported, ApiError, ApiResult};
use crate::records::ClusterRec;
use crate::store;
use crate::Control;
use serde::Deserialize;
use serde_json::{json, Value};

/// ECS's rule for cluster names.
pub fn valid_cluster_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn render_one(
    ctl: &Control,
    c: &mut sqlx::AnyConnection,
    r: &ClusterRec,
) -> Result<Value, ApiError> {
    let (instances, running, pending, services) = store::cluster_counts(c, &r.name).await?;
    let tags = store::tags(c, &ctl.arn(&format!("cluster/{}", r.name))).await?;
    Ok(render::cluster(
        ctl,
        r,
        &ClusterCounts {
            instances,
            running,
            pending,
            services,
        },
        &tags,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    tags: Vec<super::tags::Tag>,
    #[serde(default)]
    settings: Vec<Value>,
}

pub async fn create(ctl: &Control, body: &Value) -> ApiResult {
    refuse_unsupported(
        body,
        &[
            "configuration",
            "capacityProviders",
            "defaultCapacityProviderStrategy",
            "serviceConnectDefaults",
        ],
    )?;
    let req: CreateRequest = parse(body)?;
    let name = req.cluster_name.unwrap_or_else(|| "default".into());
    if !valid_cluster_name(&name) {
        return Err(ApiError::invalid(
            "clusterName: up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed.",
        ));
    }
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let rec = match store::get_cluster(&mut tx, &name).await? {
        Some(r) if r.status == "ACTIVE" => r,
        _ => {
            let r = ClusterRec {
                name: name.clone(),
                status: "ACTIVE".into(),
                created_at: crate::ids::now_ms(),
                settings: req.settings,
            };
            store::put_cluster(&mut tx, &r).await?;
            r
        }
    };
    super::tags::apply(&mut tx, &ctl.arn(&format!("cluster/{name}")), &req.tags).await?;
    let out = render_one(ctl, &mut tx, &rec).await?;
    tx.commit().await?;
    tracing::info!(cluster = %name, "cluster created");
    Ok(json!({ "cluster": out }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeRequest {
    #[serde(default)]
    clusters: Option<Vec<String>>,
    #[serde(default)]
    include: Vec<String>,
}

pub async fn describe(ctl: &Control, body: &Value) -> ApiResult {
    let req: DescribeRequest = parse(body)?;
    let _ = req.include;
    let names = req.clusters.unwrap_or_else(|| vec!["default".into()]);
    if names.len() > 100 {
        return Err(ApiError::invalid(
            "clusters: at most 100 may be described at once",
        ));
    }
    let mut c = ctl.store.read().await?;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for n in &names {
        let name = super::name_of(n);
        match store::get_cluster(&mut c, name).await? {
            Some(r) => out.push(render_one(ctl, &mut c, &r).await?),
            None => failures.push(failure(&ctl.arn(&format!("cluster/{name}")), "MISSING")),
        }
    }
    Ok(json!({"clusters": out, "failures": failures}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListRequest {
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    max_results: Option<i64>,
}

pub async fn list(ctl: &Control, body: &Value) -> ApiResult {
    let req: ListRequest = parse(body)?;
    let mut c = ctl.store.read().await?;
    let arns: Vec<String> = store::list_clusters(&mut c)
        .await?
        .into_iter()
        .filter(|r| r.status == "ACTIVE")
        .map(|r| ctl.arn(&format!("cluster/{}", r.name)))
        .collect();
    let (page, next) = page(
        &arns,
        |a| a.clone(),
        req.next_token.as_deref(),
        req.max_results,
        100,
    )?;
    Ok(json!({"clusterArns": page, "nextToken": next}))
}

pub async fn delete(ctl: &Control, body: &Value) -> ApiResult {
    if body.get("cluster").is_none() {
        return Err(ApiError::invalid("cluster is required"));
    }
    let name = cluster_name(body)?;
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let Some(mut rec) = store::get_cluster(&mut tx, &name)
        .await?
        .filter(|r| r.status == "ACTIVE")
    else {
        return Err(ApiError::cluster_not_found());
    };
    let (instances, running, pending, services) = store::cluster_counts(&mut tx, &name).await?;
    if services > 0 {
        return Err(ApiError::new(
            "ClusterContainsServicesException",
            "The Cluster cannot be deleted while Services are active.",
        ));
    }
    if instances > 0 {
        return Err(ApiError::new(
            "ClusterContainsContainerInstancesException",
            "The Cluster cannot be deleted while Container Instances are active or draining.",
        ));
    }
    if running + pending > 0 {
        return Err(ApiError::new(
            "ClusterContainsTasksException",
            "The Cluster cannot be deleted while Tasks are active.",
        ));
    }
    rec.status = "INACTIVE".into();
    store::put_cluster(&mut tx, &rec).await?;
    let out = render_one(ctl, &mut tx, &rec).await?;
    tx.commit().await?;
    Ok(json!({ "cluster": out }))
}
