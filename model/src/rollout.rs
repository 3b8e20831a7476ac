//! How a service moves toward its desired count and revision: the one place
//! that decides which tasks to start and which to stop.
//!
//! ECS `deploymentConfiguration` semantics: at least
//! `ceil(desired × minimumHealthyPercent / 100)` healthy tasks keep serving
//! and at most `floor(desired × maximumPercent / 100)` run, counting tasks
//! that are still stopping. Scale-in (more tasks of the current revision
//! than desired) is not held back by the minimum. The plan is recomputed on
//! every reconcile from what is observed, so it is a pure function and needs
//! no memory of its own: a restarted agent continues a rollout where the
//! last one was.

/// One task of the service as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub id: String,
    /// Of the revision the service wants now.
    pub current: bool,
    /// Counts toward minimum healthy: running, and passing its checks.
    pub healthy: bool,
    /// Already being stopped: counts toward the maximum, not the minimum.
    pub stopping: bool,
    /// Unix milliseconds of creation; ties broken by id.
    pub created_at_ms: u64,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// How many new tasks of the current revision to start.
    pub start: u32,
    /// Tasks to stop, and why.
    pub stop: Vec<(String, &'static str)>,
    /// Set when the service is not where it should be and cannot move yet.
    pub waiting: Option<String>,
}

/// Plans one step for a service wanting `desired` tasks.
pub fn plan(desired: u32, min_healthy_percent: u32, max_percent: u32, tasks: &[TaskView]) -> Plan {
    let desired_u64 = u64::from(desired);
    let min_healthy = (desired_u64 * u64::from(min_healthy_percent)).div_ceil(100);
    let max_total = ((desired_u64 * u64::from(max_percent)) / 100).max(desired_u64);

    let live = |t: &&TaskView| !t.stopping;
    let mut new: Vec<&TaskView> = tasks.iter().filter(|t| t.current).filter(live).collect();
    let mut old: Vec<&TaskView> = tasks.iter().filter(|t| !t.current).filter(live).collect();
    let stopping = tasks.iter().filter(|t| t.stopping).count() as u64;
    let mut plan = Plan::default();

    // Scale-in of the current revision: unhealthy first, then newest first,
    // keeping the tasks that have proven themselves longest.
    new.sort_by(|a, b| {
        a.healthy
            .cmp(&b.healthy)
            .then(b.created_at_ms.cmp(&a.created_at_ms))
            .then(a.id.cmp(&b.id))
    });
    while new.len() as u64 > desired_u64 {
        let t = new.remove(0);
        plan.stop.push((t.id.clone(), "scaled in"));
    }

    // Old revision: unhealthy ones go at once (they serve nothing); healthy
    // ones only while the healthy count stays at or above the minimum.
    old.sort_by(|a, b| {
        a.healthy
            .cmp(&b.healthy)
            .then(a.created_at_ms.cmp(&b.created_at_ms))
            .then(a.id.cmp(&b.id))
    });
    let healthy_new = new.iter().filter(|t| t.healthy).count() as u64;
    let healthy_old = old.iter().filter(|t| t.healthy).count() as u64;
    let mut healthy = healthy_new + healthy_old;
    let mut kept_old = Vec::new();
    for t in old {
        let excess = healthy_new >= desired_u64;
        if !t.healthy {
            plan.stop.push((t.id.clone(), "replaced by a new revision"));
        } else if excess || healthy > min_healthy {
            healthy -= 1;
            plan.stop.push((t.id.clone(), "replaced by a new revision"));
        } else {
            kept_old.push(t);
        }
    }

    // Start what is missing of the current revision, within the maximum.
    // Stopping tasks still hold their resources, so they count.
    let total = new.len() as u64 + kept_old.len() as u64 + stopping + plan.stop.len() as u64;
    let missing = desired_u64.saturating_sub(new.len() as u64);
    let room = max_total.saturating_sub(total);
    plan.start = u32::try_from(missing.min(room)).unwrap_or(u32::MAX);

    if missing > room {
        plan.waiting = Some(format!(
            "{} of {desired} tasks of the current revision; waiting for {} old or stopping task(s) to leave (maximumPercent {max_percent})",
            new.len(),
            total - new.len() as u64,
        ));
    } else if !kept_old.is_empty() {
        plan.waiting = Some(format!(
            "rolling out: {healthy_new} of {desired} new tasks healthy, keeping {} old task(s) for minimumHealthyPercent {min_healthy_percent}",
            kept_old.len()
        ));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, current: bool, healthy: bool) -> TaskView {
        TaskView {
            id: id.into(),
            current,
            healthy,
            stopping: false,
            created_at_ms: id.bytes().map(u64::from).sum(),
        }
    }

    fn stopped(p: &Plan) -> Vec<&str> {
        let mut v: Vec<&str> = p.stop.iter().map(|(id, _)| id.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn fresh_service_starts_desired_count() {
        let p = plan(3, 100, 200, &[]);
        assert_eq!(p.start, 3);
        assert!(p.stop.is_empty());
    }

    #[test]
    fn scale_in_stops_unhealthy_then_newest() {
        let tasks = [t("a", true, true), t("b", true, false), t("c", true, true)];
        let p = plan(1, 100, 200, &tasks);
        assert_eq!(p.start, 0);
        assert_eq!(stopped(&p), vec!["b", "c"]);
    }

    #[test]
    fn default_rollout_surges_then_replaces_when_healthy() {
        let old: Vec<TaskView> = ["o1", "o2", "o3", "o4"]
            .iter()
            .map(|i| t(i, false, true))
            .collect();
        // Step 1: start 4 new, stop nothing.
        let p = plan(4, 100, 200, &old);
        assert_eq!((p.start, p.stop.len()), (4, 0));
        // Step 2: new tasks exist but are not healthy yet: keep every old one.
        let mut tasks = old.clone();
        tasks.extend(["n1", "n2", "n3", "n4"].iter().map(|i| t(i, true, false)));
        let p = plan(4, 100, 200, &tasks);
        assert_eq!((p.start, p.stop.len()), (0, 0));
        // Step 3: two new healthy: exactly two old may go.
        tasks[4].healthy = true;
        tasks[5].healthy = true;
        let p = plan(4, 100, 200, &tasks);
        assert_eq!(p.stop.len(), 2);
        // Step 4: all new healthy: every old goes.
        for x in &mut tasks[4..] {
            x.healthy = true;
        }
        assert_eq!(plan(4, 100, 200, &tasks).stop.len(), 4);
    }

    #[test]
    fn no_surge_rollout_stops_first_within_minimum() {
        let old: Vec<TaskView> = ["o1", "o2", "o3", "o4"]
            .iter()
            .map(|i| t(i, false, true))
            .collect();
        let p = plan(4, 50, 100, &old);
        assert_eq!((p.start, p.stop.len()), (0, 2));
        // While they stop, nothing new fits under the maximum.
        let mut tasks = old.clone();
        tasks[0].stopping = true;
        tasks[1].stopping = true;
        let p = plan(4, 50, 100, &tasks);
        assert_eq!((p.start, p.stop.len()), (0, 0));
        assert!(p.waiting.is_some());
        // Once gone, two new start.
        let p = plan(4, 50, 100, &tasks[2..]);
        assert_eq!(p.start, 2);
    }

    #[test]
    fn unhealthy_old_tasks_never_hold_a_rollout() {
        let tasks = [t("o1", false, false), t("n1", true, false)];
        let p = plan(1, 100, 200, &tasks);
        assert_eq!(stopped(&p), vec!["o1"]);
    }

    #[test]
    fn min_100_max_100_cannot_move_and_says_why() {
        let tasks = [t("o1", false, true), t("o2", false, true)];
        let p = plan(2, 100, 100, &tasks);
        assert_eq!((p.start, p.stop.len()), (0, 0));
        assert!(p.waiting.unwrap().contains("maximumPercent 100"));
    }
}
