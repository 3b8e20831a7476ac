//! RegisterTaskDefinition, DescribeTaskDefinition, DeregisterTaskDefinition,
//! ListTaskDefinitions, ListTaskDefinitionFamilies. Revisions are
//! immutable: a registration is a new revision of its family.

use super::render;
use super::{page, parse, ApiError, ApiResult};
use crate::records::TaskDefRec;
use crate::store;
use crate::Control;
use dockhand_model::TaskDefinition;
use serde::Deserialize;
use serde_json::{json, Value};

/// A task definition reference: `family`, `family:revision`, or its ARN.
pub fn split_ref(r: &str) -> Result<(String, Option<i64>), ApiError> {
    let s = if r.starts_with("arn:") {
        r.split_once("task-definition/")
            .map(|(_, rest)| rest)
            .ok_or_else(|| ApiError::invalid(format!("{r:?} is not a task definition ARN")))?
    } else {
        r
    };
    match s.rsplit_once(':') {
        Some((family, rev)) => {
            let rev: i64 = rev
                .parse()
                .map_err(|_| ApiError::invalid(format!("{r:?}: the revision must be a number")))?;
            Ok((family.to_string(), Some(rev)))
        }
        None => Ok((s.to_string(), None)),
    }
}

/// The revision a reference names (the latest ACTIVE one for a bare
/// family), or ClientException.
pub async fn resolve(c: &mut sqlx::AnyConnection, r: &str) -> Result<TaskDefRec, ApiError> {
    let (family, rev) = split_ref(r)?;
    let found = match rev {
        Some(rev) => store::get_taskdef(c, &family, rev).await?,
        None => store::latest_taskdef(c, &family).await?,
    };
    found.ok_or_else(|| ApiError::client("Unable to describe task definition."))
}

/// The model's view of a stored revision.
pub fn parsed(t: &TaskDefRec) -> Result<TaskDefinition, ApiError> {
    TaskDefinition::from_json(t.request.clone())
        .map(|p| p.task_definition)
        .map_err(|e| {
            ApiError::server(format!(
                "stored task definition {}:{} no longer validates: {}",
                t.family,
                t.revision,
                e.first().map(ToString::to_string).unwrap_or_default()
            ))
        })
}

pub async fn register(ctl: &Control, body: &Value) -> ApiResult {
    let mut request = body.clone();
    let tags: Vec<super::tags::Tag> = match request.as_object_mut().and_then(|o| o.remove("tags")) {
        Some(t) => {
            serde_json::from_value(t).map_err(|e| ApiError::invalid(format!("tags: {e}")))?
        }
        None => Vec::new(),
    };
    if let Err(errors) = TaskDefinition::from_json(request.clone()) {
        let text: Vec<String> = errors.iter().take(10).map(ToString::to_string).collect();
        return Err(ApiError::invalid(text.join("; ")));
    }
    let family = request["family"].as_str().unwrap_or("").to_string();
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let revision = store::max_revision(&mut tx, &family).await? + 1;
    let rec = TaskDefRec {
        family: family.clone(),
        revision,
        status: "ACTIVE".into(),
        registered_at: crate::ids::now_ms(),
        deregistered_at: None,
        request,
    };
    store::put_taskdef(&mut tx, &rec).await?;
    let arn = render::taskdef_arn(ctl, &family, revision);
    super::tags::apply(&mut tx, &arn, &tags).await?;
    tx.commit().await?;
    tracing::info!(family = %family, revision, "task definition registered");
    Ok(json!({
        "taskDefinition": render::task_definition(ctl, &rec),
        "tags": tags,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeRequest {
    task_definition: String,
    #[serde(default)]
    include: Vec<String>,
}

pub async fn describe(ctl: &Control, body: &Value) -> ApiResult {
    let req: DescribeRequest = parse(body)?;
    let mut c = ctl.store.read().await?;
    let rec = resolve(&mut c, &req.task_definition).await?;
    let mut out = json!({ "taskDefinition": render::task_definition(ctl, &rec) });
    if req.include.iter().any(|i| i == "TAGS") {
        let tags =
            store::tags(&mut c, &render::taskdef_arn(ctl, &rec.family, rec.revision)).await?;
        out["tags"] = render::tags(&tags);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeregisterRequest {
    task_definition: String,
}

pub async fn deregister(ctl: &Control, body: &Value) -> ApiResult {
    let req: DeregisterRequest = parse(body)?;
    let (family, rev) = split_ref(&req.task_definition)?;
    let Some(rev) = rev else {
        return Err(ApiError::client(
            "Revision is required: family:revision or the full ARN.",
        ));
    };
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    let Some(mut rec) = store::get_taskdef(&mut tx, &family, rev).await? else {
        return Err(ApiError::client(
            "The specified task definition does not exist.",
        ));
    };
    if rec.status == "ACTIVE" {
        rec.status = "INACTIVE".into();
        rec.deregistered_at = Some(crate::ids::now_ms());
        store::put_taskdef(&mut tx, &rec).await?;
    }
    tx.commit().await?;
    Ok(json!({ "taskDefinition": render::task_definition(ctl, &rec) }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListRequest {
    #[serde(default)]
    family_prefix: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    sort: Option<String>,
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    max_results: Option<i64>,
}

/// A task definition's page key: family, then revision, in byte order
/// (`DESC`: the reverse order, by complementing every byte).
fn taskdef_key(family: &str, revision: i64, desc: bool) -> String {
    let revision = revision.clamp(0, 999_999_999_999);
    if !desc {
        return format!("{family}\u{0}{revision:012}");
    }
    // The NUL after the family puts "web2" before "web" once complemented.
    let mut key: String = family
        .bytes()
        .chain([0])
        .map(|b| format!("{:02x}", 255 - b))
        .collect();
    key.push_str(&format!("{:012}", 999_999_999_999 - revision));
    key
}

pub async fn list(ctl: &Control, body: &Value) -> ApiResult {
    let req: ListRequest = parse(body)?;
    let status = req.status.unwrap_or_else(|| "ACTIVE".into());
    if !["ACTIVE", "INACTIVE", "DELETE_IN_PROGRESS"].contains(&status.as_str()) {
        return Err(ApiError::invalid(
            "status must be ACTIVE, INACTIVE or DELETE_IN_PROGRESS",
        ));
    }
    let mut c = ctl.store.read().await?;
    let all: Vec<(String, i64, String)> = store::list_taskdefs(&mut c)
        .await?
        .into_iter()
        .filter(|(f, _, s)| {
            *s == status
                && req
                    .family_prefix
                    .as_deref()
                    .is_none_or(|p| f == p || f.starts_with(p))
        })
        .collect();
    // Pages are keyed by (family, revision), not by position: a
    // definition registered or deregistered between two pages neither
    // repeats nor hides another.
    let desc = req.sort.as_deref() == Some("DESC");
    let keyed: Vec<(String, String)> = all
        .iter()
        .map(|(f, r, _)| (taskdef_key(f, *r, desc), render::taskdef_arn(ctl, f, *r)))
        .collect();
    let (page, next) = page(
        &keyed,
        |k| k.0.clone(),
        req.next_token.as_deref(),
        req.max_results,
        100,
    )?;
    Ok(json!({
        "taskDefinitionArns": page.into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
        "nextToken": next,
    }))
}

pub async fn families(ctl: &Control, body: &Value) -> ApiResult {
    let req: ListRequest = parse(body)?;
    let status = req.status.unwrap_or_else(|| "ACTIVE".into());
    let mut c = ctl.store.read().await?;
    let mut fams: std::collections::BTreeMap<String, bool> = Default::default();
    for (f, _, s) in store::list_taskdefs(&mut c).await? {
        if req
            .family_prefix
            .as_deref()
            .is_none_or(|p| f.starts_with(p))
        {
            *fams.entry(f).or_default() |= s == "ACTIVE";
        }
    }
    let names: Vec<String> = fams
        .into_iter()
        .filter(|(_, active)| match status.as_str() {
            "ACTIVE" => *active,
            "INACTIVE" => !*active,
            _ => true,
        })
        .map(|(f, _)| f)
        .collect();
    let (page, next) = page(
        &names,
        |n| n.clone(),
        req.next_token.as_deref(),
        req.max_results,
        100,
    )?;
    Ok(json!({"families": page, "nextToken": next}))
}

#[cfg(test)]
mod tests {
    use super::taskdef_key;

    #[test]
    fn taskdef_keys_order_by_family_then_revision_both_ways() {
        let defs = [("web", 2), ("web2", 1), ("web", 10), ("Api", 3)];
        let mut asc: Vec<_> = defs.to_vec();
        asc.sort_by_key(|(f, r)| taskdef_key(f, *r, false));
        assert_eq!(asc, [("Api", 3), ("web", 2), ("web", 10), ("web2", 1)]);
        let mut desc: Vec<_> = defs.to_vec();
        desc.sort_by_key(|(f, r)| taskdef_key(f, *r, true));
        assert_eq!(desc, [("web2", 1), ("web", 10), ("web", 2), ("Api", 3)]);
    }
}
