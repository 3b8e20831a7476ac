//! The scheduler: a pass per cluster, at once when something changed (a
//! service created or updated, a task reported stopped, an instance joined
//! or drained) and at least every `DOCKHAND_CONTROL_SCHEDULER_INTERVAL`.
//!
//! A pass takes the store's writer lock, loads the cluster
//! ([`state::ClusterState`]), decides ([`plan::plan`], a pure function),
//! and writes every change in one transaction: new and changed tasks, the
//! services' deployments, events, and the desired sequence of each
//! instance whose task set changed; after commit, the agents' polls of
//! those instances are woken.

pub mod placement;
pub mod plan;
pub mod state;

use crate::store::{self, StoreError};
use crate::Control;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs passes until `shutdown` is signaled.
pub async fn run(ctl: Arc<Control>, shutdown: drain::Watch) {
    let signaled = shutdown.signaled();
    tokio::pin!(signaled);
    let mut last_prune = Instant::now();
    loop {
        tokio::select! {
            _ = &mut signaled => return,
            _ = ctl.scheduler_wake.notified() => {}
            _ = tokio::time::sleep(ctl.cfg.scheduler_interval) => {}
        }
        if !ctl.is_leader() {
            continue;
        }
        let started = Instant::now();
        match pass_all(&ctl).await {
            Ok(n) if n > 0 => tracing::debug!(
                changes = n,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "scheduling pass"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(cause = %e, "scheduling pass failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        // Wake-ups come with every report; between passes, the reports and
        // the API get the store for at least as long as a pass took.
        tokio::time::sleep(
            started
                .elapsed()
                .clamp(Duration::from_millis(10), Duration::from_millis(500)),
        )
        .await;
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = Instant::now();
            let before = crate::ids::now_ms() - ctl.cfg.stopped_task_retention.as_millis() as i64;
            if let Ok(mut c) = ctl.store.read().await {
                match store::prune_stopped(&mut c, before).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(tasks = n, "forgot stopped tasks past their retention")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(cause = %e, "cannot prune stopped tasks"),
                }
                // A RunTask's token is kept as long as the stopped tasks
                // it may have started (at least an hour).
                let kept = ctl
                    .cfg
                    .stopped_task_retention
                    .max(Duration::from_secs(3600));
                let before = crate::ids::now_ms() - kept.as_millis() as i64;
                if let Err(e) = store::prune_client_tokens(&mut c, before).await {
                    tracing::warn!(cause = %e, "cannot prune RunTask client tokens");
                }
            }
        }
    }
}

/// One pass over every active cluster; returns how many things changed.
pub async fn pass_all(ctl: &Control) -> Result<usize, StoreError> {
    let clusters = {
        let mut c = ctl.store.read().await?;
        store::list_clusters(&mut c).await?
    };
    let mut changed = 0;
    for cl in clusters.into_iter().filter(|c| c.status == "ACTIVE") {
        changed += pass(ctl, &cl.name).await?;
    }
    Ok(changed)
}

/// One pass over `cluster`.
pub async fn pass(ctl: &Control, cluster: &str) -> Result<usize, StoreError> {
    let _w = ctl.store.lock().await;
    let mut tx = ctl.store.begin().await?;
    // Fencing: a replica that lost the lease (it paused, or lost the
    // database for longer than the lease) decides nothing. The check runs
    // under the writer lock, so no new leader writes meanwhile.
    if ctl.store.kind == store::Kind::Postgres
        && !store::lease_held(
            &mut tx,
            ctl.store.kind,
            crate::LEASE,
            &ctl.holder,
            ctl.lease_token(),
        )
        .await?
    {
        return Ok(0);
    }
    // The database's clock (PostgreSQL): hosts' last polls were stamped
    // with it by whichever replica they reached.
    let now = store::db_now(&mut tx, ctl.store.kind).await?;
    let t0 = Instant::now();
    let mut st = state::ClusterState::load(ctl, &mut tx, cluster, now).await?;
    let loaded = t0.elapsed();
    let arn_prefix = ctl.arn(&format!("task/{cluster}/"));
    let task_arn = move |id: &str| format!("{arn_prefix}{id}");
    let settings = plan::Settings {
        task_arn: &task_arn,
        grace_ms: ctl.cfg.instance_grace.as_millis() as i64,
    };
    let mut rng = placement::Rng((now as u64) | 1);
    let ch = plan::plan(&mut st, &settings, &mut rng);
    let planned = t0.elapsed();
    if ch.is_empty() {
        return Ok(0);
    }
    let n = apply(&mut tx, cluster, &ch, now).await?;
    tx.commit().await?;
    let written = t0.elapsed();
    ctl.notify_cluster(cluster, &ch.touched).await;
    tracing::debug!(
        cluster,
        tasks = st.tasks.len(),
        instances = st.instances.len(),
        load_ms = loaded.as_millis() as u64,
        plan_ms = (planned - loaded).as_millis() as u64,
        write_ms = (written - planned).as_millis() as u64,
        notify_ms = (t0.elapsed() - written).as_millis() as u64,
        "pass"
    );
    Ok(n)
}

/// Writes a pass's changes (in the caller's transaction).
pub async fn apply(
    c: &mut sqlx::AnyConnection,
    cluster: &str,
    ch: &plan::Changes,
    now: i64,
) -> Result<usize, StoreError> {
    let tasks: Vec<&crate::records::TaskRec> =
        ch.new_tasks.iter().chain(ch.tasks.values()).collect();
    store::put_tasks(c, &tasks).await?;
    for s in ch.services.values() {
        store::put_service(c, s).await?;
    }
    let mut pruned = std::collections::BTreeSet::new();
    for (i, (service, message)) in ch.events.iter().enumerate() {
        tracing::info!(cluster, service = %service, "{message}");
        // Events of one pass share its time; the id keeps their order.
        let _ = i;
        store::add_event(
            c,
            cluster,
            service,
            &crate::ids::event_id(now),
            now,
            message,
        )
        .await?;
        if pruned.insert(service.clone()) {
            store::prune_events(c, cluster, service).await?;
        }
    }
    let touched: Vec<String> = ch.touched.iter().cloned().collect();
    store::bump_desired(c, &touched).await?;
    Ok(ch.new_tasks.len() + ch.tasks.len() + ch.services.len() + ch.events.len())
}
