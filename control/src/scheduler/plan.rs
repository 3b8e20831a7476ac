//! One scheduling pass over a cluster, as a pure function of its state: which
//! tasks to start where, which to stop, how each service's deployments
//! move, and what to tell the operator. No I/O: [`super::run`] loads the
//! state and writes the [`Changes`] in one transaction.
//!
//! Per service (REPLICA): the circuit breaker decides which deployment is
//! PRIMARY; `rollout::plan` (the same planner the standalone agent uses on
//! one host) decides how many tasks of it to start and which to stop,
//! within `minimumHealthyPercent` and `maximumPercent` counted cluster-wide
//! on healthy tasks; tasks on DRAINING instances count as old, so they are
//! replaced first and stopped after; placement puts the new tasks. DAEMON
//! services run one task on each ACTIVE instance that satisfies their
//! constraints.

use super::placement::{self, Constraint, Need, Rng, Strategy};
use super::state::{ClusterState, InstanceView};
use crate::records::{ContainerRec, Deployment, ServiceRec, TaskRec};
use dockhand_model::rollout::{self, TaskView};
use dockhand_model::task::{HealthStatus, StopCode, TaskStatus};
use dockhand_model::TaskDefinition;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// First crash replacement at once, then doubling from 1 s to this.
pub const MAX_BACKOFF_MS: i64 = 300_000;

/// What one pass decides.
#[derive(Debug, Default)]
pub struct Changes {
    pub new_tasks: Vec<TaskRec>,
    /// Tasks changed, by ARN.
    pub tasks: BTreeMap<String, TaskRec>,
    pub services: BTreeMap<String, ServiceRec>,
    /// (service, message)
    pub events: Vec<(String, String)>,
    /// Instances whose desired task set changed.
    pub touched: BTreeSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.new_tasks.is_empty()
            && self.tasks.is_empty()
            && self.services.is_empty()
            && self.events.is_empty()
    }
}

/// The backoff after `failures` consecutive failures, milliseconds.
pub fn backoff_ms(failures: u32) -> i64 {
    match failures {
        0 | 1 => 0,
        n => (1000i64 << (n - 2).min(20)).min(MAX_BACKOFF_MS),
    }
}

/// Counts a failed task toward its service's crash backoff and, if it
/// never passed its checks, its deployment's failures (the circuit
/// breaker's count: tasks that failed to start).
pub fn count_failure(s: &mut ServiceRec, t: &TaskRec, now: i64) {
    s.consecutive_failures = s.consecutive_failures.saturating_add(1);
    s.next_start_at = now.saturating_add(backoff_ms(s.consecutive_failures));
    if t.healthy_once {
        return;
    }
    if let Some(d) = s
        .deployments
        .iter_mut()
        .find(|d| Some(&d.id) == t.deployment.as_ref())
    {
        d.failed_tasks = d.failed_tasks.saturating_add(1);
        d.updated_at = now;
    }
}

/// ECS's circuit breaker threshold: half the desired count, at least 3,
/// at most 200.
pub fn breaker_threshold(desired: i64) -> i64 {
    ((desired + 1) / 2).clamp(3, 200)
}

fn short(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The task ids of `arns`, for an event: `(task a) (task b)`, at most 10.
fn task_list(arns: &[String]) -> String {
    let mut s: Vec<String> = arns
        .iter()
        .take(10)
        .map(|a| format!("(task {})", short(a)))
        .collect();
    if arns.len() > 10 {
        s.push(format!("and {} more", arns.len() - 10));
    }
    s.join(" ")
}

/// How long a new task of a routed service may run without passing its
/// checks: the grace, then enough intervals for both thresholds, plus a
/// timeout (as the agent counts it for one host).
fn health_deadline_ms(s: &ServiceRec) -> Option<i64> {
    s.load_balancers
        .iter()
        .map(|lb| {
            let r = lb.route.route_settings(s.health_check_grace_period_seconds);
            let c = r.health_check;
            let checks = c.healthy_threshold + c.unhealthy_threshold;
            (r.grace + c.interval * checks + c.timeout).as_millis() as i64
        })
        .max()
}

/// A task counts as healthy: running, and passing the checks that apply
/// (the proxy's for a routed service, Docker's for containers with one).
fn healthy(t: &TaskRec, s: &ServiceRec, td: Option<&TaskDefinition>) -> bool {
    if t.desired_status != TaskStatus::Running || t.last_status != TaskStatus::Running {
        return false;
    }
    let checked = !s.load_balancers.is_empty()
        || td.is_some_and(|td| {
            td.container_definitions
                .iter()
                .any(|c| c.health_check.is_some())
        });
    !checked || t.health_status == HealthStatus::Healthy
}

/// Asks a task to stop (drained first by its agent).
fn stop(ch: &mut Changes, t: &mut TaskRec, reason: &str, code: StopCode, now: i64) {
    if t.desired_status == TaskStatus::Stopped {
        return;
    }
    t.desired_status = TaskStatus::Stopped;
    t.stopping_at = Some(now);
    t.stopped_reason = Some(reason.to_string());
    t.stop_code = Some(code);
    t.version += 1;
    ch.touched.insert(t.container_instance.clone());
    ch.tasks.insert(t.arn.clone(), t.clone());
}

/// What a task of `td` needs from an instance.
pub fn need_of(td: &TaskDefinition, group: &str) -> Need {
    let ports = td
        .container_definitions
        .iter()
        .flat_map(|c| c.port_mappings.iter())
        .filter_map(|pm| {
            let proto = pm.protocol.unwrap_or_default().as_str().to_string();
            match (td.network_mode, pm.host_port) {
                (dockhand_model::taskdef::NetworkMode::Host, _) => {
                    u16::try_from(pm.container_port).ok().map(|p| (p, proto))
                }
                (_, Some(p)) if p > 0 => u16::try_from(p).ok().map(|p| (p, proto)),
                _ => None,
            }
        })
        .collect();
    Need {
        cpu: i64::try_from(td.cpu_units()).unwrap_or(i64::MAX),
        memory: i64::try_from(td.memory_mib()).unwrap_or(i64::MAX),
        ports,
        group: group.to_string(),
    }
}

/// A new task of `td` on instance `v`.
#[allow(clippy::too_many_arguments)] // each is a distinct part of a task
pub fn new_task(
    arn: String,
    cluster: &str,
    v: &InstanceView,
    td_arn: &str,
    td: &TaskDefinition,
    group: &str,
    service: Option<&str>,
    deployment: Option<&str>,
    started_by: Option<&str>,
    now: i64,
) -> TaskRec {
    let need = need_of(td, group);
    TaskRec {
        arn,
        cluster: cluster.to_string(),
        container_instance: v.rec.arn.clone(),
        task_definition: td_arn.to_string(),
        group: group.to_string(),
        service: service.map(str::to_string),
        deployment: deployment.map(str::to_string),
        started_by: started_by.map(str::to_string),
        desired_status: TaskStatus::Running,
        last_status: TaskStatus::Pending,
        health_status: HealthStatus::Unknown,
        cpu: need.cpu,
        memory: need.memory,
        host_ports: need.ports,
        created_at: now,
        started_at: None,
        stopping_at: None,
        stopped_at: None,
        stopped_reason: None,
        stop_code: None,
        containers: td
            .container_definitions
            .iter()
            .map(|c| ContainerRec {
                name: c.name.clone(),
                image: c.image.clone(),
                runtime_id: None,
                last_status: TaskStatus::Pending,
                exit_code: None,
                reason: None,
                network_bindings: Vec::new(),
                health_status: HealthStatus::Unknown,
                cpu: c.cpu,
                memory: c.memory,
                memory_reservation: c.memory_reservation,
            })
            .collect(),
        healthy_once: false,
        failed: false,
        failure_counted: false,
        report_seq: 0,
        version: 1,
    }
}

/// What a pass needs besides the state.
pub struct Settings<'a> {
    /// Makes a task ARN for a new task id.
    pub task_arn: &'a (dyn Fn(&str) -> String + Send + Sync),
    pub grace_ms: i64,
}

/// One pass over `st`.
pub fn plan(st: &mut ClusterState, set: &Settings, rng: &mut Rng) -> Changes {
    let mut ch = Changes::default();
    let now = st.now;
    give_up_lost(st, &mut ch, set.grace_ms);
    let services = std::mem::take(&mut st.services);
    for mut s in services {
        let before = s.clone();
        if s.status == "DRAINING" {
            delete(st, &mut ch, &mut s);
        } else if s.scheduling_strategy == "DAEMON" {
            daemon(st, &mut ch, &mut s, set, rng);
        } else {
            replica(st, &mut ch, &mut s, set, rng);
        }
        if s != before {
            s.updated_at = now;
            ch.services.insert(s.name.clone(), s.clone());
        }
        st.services.push(s);
    }
    ch
}

/// Tasks on instances silent past the grace are given up: STOPPED (their
/// services start replacements elsewhere). If the agent comes back, those
/// tasks are no longer in its desired set and it stops them.
///
/// Unless no instance of the cluster is heard from at all: every host
/// going silent at once points at this side (the endpoint unreachable, or
/// its connections held by slow clients), and there is nowhere to place a
/// replacement anyway. Giving up then would restart every task of the
/// cluster the moment the hosts are back. Nothing is given up until one
/// instance polls again (Kubernetes' node controller stops evicting the
/// same way when a whole zone goes NotReady).
fn give_up_lost(st: &mut ClusterState, ch: &mut Changes, grace_ms: i64) {
    if !st
        .instances
        .iter()
        .any(|v| v.connected && v.rec.status != "INACTIVE")
    {
        return;
    }
    let lost: BTreeMap<String, String> = st
        .instances
        .iter()
        .filter(|v| v.lost)
        .map(|v| (v.rec.arn.clone(), v.rec.ec2_instance_id.clone()))
        .collect();
    if lost.is_empty() {
        return;
    }
    let now = st.now;
    for t in st.tasks.iter_mut() {
        let Some(ec2) = lost.get(&t.container_instance) else {
            continue;
        };
        t.desired_status = TaskStatus::Stopped;
        t.last_status = TaskStatus::Stopped;
        t.stopped_at = Some(now);
        t.stopping_at.get_or_insert(now);
        t.stopped_reason = Some(format!(
            "the task's container instance {ec2} has not reached the control endpoint for {}s: given up and replaced elsewhere",
            grace_ms / 1000
        ));
        t.version += 1;
        ch.tasks.insert(t.arn.clone(), t.clone());
    }
    st.tasks.retain(|t| t.live());
    for v in st.instances.iter_mut().filter(|v| v.lost) {
        v.groups.clear();
        v.running = 0;
    }
}

fn td_of(st: &ClusterState, arn: &str) -> Option<Arc<TaskDefinition>> {
    st.taskdefs.get(arn).cloned()
}

/// Service being deleted: stop everything, then INACTIVE.
fn delete(st: &mut ClusterState, ch: &mut Changes, s: &mut ServiceRec) {
    let now = st.now;
    let mut any_live = false;
    for t in st
        .tasks
        .iter_mut()
        .filter(|t| t.service.as_deref() == Some(&s.name))
    {
        any_live = true;
        stop(
            ch,
            t,
            "Service deleted",
            StopCode::ServiceSchedulerInitiated,
            now,
        );
    }
    if !any_live {
        s.status = "INACTIVE".into();
        for d in &mut s.deployments {
            d.status = "INACTIVE".into();
        }
        ch.events.push((
            s.name.clone(),
            format!("(service {}) has been deleted.", s.name),
        ));
    }
}

/// The circuit breaker on the PRIMARY deployment; a rollback makes the last
/// completed task definition PRIMARY again.
fn circuit_breaker(st: &mut ClusterState, ch: &mut Changes, s: &mut ServiceRec) {
    let Some(cb) = s
        .deployment_configuration
        .deployment_circuit_breaker
        .clone()
    else {
        return;
    };
    if !cb.enable {
        return;
    }
    let now = st.now;
    let threshold = breaker_threshold(s.desired_count);
    let Some(p) = s.deployments.iter_mut().find(|d| d.status == "PRIMARY") else {
        return;
    };
    if p.rollout_state != "IN_PROGRESS" || p.failed_tasks < threshold {
        return;
    }
    p.rollout_state = "FAILED".into();
    p.rollout_state_reason = Some(format!(
        "ECS deployment circuit breaker: tasks failed to start ({} failed, threshold {threshold}).",
        p.failed_tasks
    ));
    p.updated_at = now;
    let failed_id = p.id.clone();
    ch.events.push((
        s.name.clone(),
        format!(
            "(service {}) (deployment {failed_id}) deployment failed: tasks failed to start ({} failed; the circuit breaker's threshold is {threshold}).",
            s.name, p.failed_tasks
        ),
    ));
    if !cb.rollback {
        return;
    }
    let target = s
        .deployments
        .iter()
        .filter(|d| d.id != failed_id && d.rollout_state == "COMPLETED")
        .max_by_key(|d| d.created_at)
        .map(|d| d.task_definition.clone());
    let Some(target) = target else {
        ch.events.push((
            s.name.clone(),
            format!(
                "(service {}) has no earlier completed deployment to roll back to.",
                s.name
            ),
        ));
        return;
    };
    for d in &mut s.deployments {
        if d.status == "PRIMARY" {
            d.status = "ACTIVE".into();
        }
    }
    let id = crate::ids::deployment_id();
    s.deployments.insert(
        0,
        Deployment {
            id: id.clone(),
            status: "PRIMARY".into(),
            task_definition: target.clone(),
            desired_count: s.desired_count,
            failed_tasks: 0,
            rollout_state: "IN_PROGRESS".into(),
            rollout_state_reason: Some(format!(
                "ECS deployment circuit breaker: rolling back to deployment of {target}."
            )),
            created_at: now,
            updated_at: now,
        },
    );
    s.task_definition = target.clone();
    s.consecutive_failures = 0;
    s.next_start_at = 0;
    // Running tasks of the definition rolled back to belong to it again.
    for t in st.tasks.iter_mut() {
        if t.service.as_deref() == Some(&s.name)
            && t.task_definition == target
            && t.desired_status == TaskStatus::Running
        {
            t.deployment = Some(id.clone());
            t.version += 1;
            ch.tasks.insert(t.arn.clone(), t.clone());
        }
    }
    ch.events.push((
        s.name.clone(),
        format!(
            "(service {}) rolling back to deployment {id} ({target}).",
            s.name
        ),
    ));
}

/// Fails routed tasks that have run past their health deadline without
/// ever passing their checks.
fn fail_unproven(st: &mut ClusterState, ch: &mut Changes, s: &mut ServiceRec) {
    let Some(deadline) = health_deadline_ms(s) else {
        return;
    };
    let now = st.now;
    let name = s.name.clone();
    for t in st
        .tasks
        .iter_mut()
        .filter(|t| t.service.as_deref() == Some(&name))
    {
        let running_for = t.started_at.map_or(0, |at| now - at);
        if t.desired_status == TaskStatus::Running
            && t.last_status == TaskStatus::Running
            && !t.healthy_once
            && running_for > deadline
        {
            stop(
                ch,
                t,
                &format!(
                    "Task failed its health checks: never healthy in {}s",
                    running_for / 1000
                ),
                StopCode::EssentialContainerExited,
                now,
            );
            t.failed = true;
            t.failure_counted = true;
            ch.tasks.insert(t.arn.clone(), t.clone());
            count_failure(s, t, now);
        }
    }
}

/// Places `n` tasks of the PRIMARY deployment; reports a failure once.
fn start_tasks(
    st: &mut ClusterState,
    ch: &mut Changes,
    s: &mut ServiceRec,
    n: usize,
    only: Option<usize>,
    set: &Settings,
    rng: &mut Rng,
) -> usize {
    let now = st.now;
    let Some(p) = s.primary().cloned() else {
        return 0;
    };
    let Some(td) = td_of(st, &p.task_definition) else {
        ch.events.push((
            s.name.clone(),
            format!(
                "(service {}) task definition {} is missing.",
                s.name, p.task_definition
            ),
        ));
        return 0;
    };
    let group = format!("service:{}", s.name);
    let constraints: Vec<Constraint> =
        placement::constraints(&s.placement_constraints).unwrap_or_default();
    let strategies: Vec<Strategy> = if s.placement_strategy.is_empty() {
        placement::service_default()
    } else {
        placement::strategies(&s.placement_strategy).unwrap_or_default()
    };
    let need = need_of(&td, &group);
    let (chosen, failure) = match only {
        // DAEMON: this one instance.
        Some(i) => {
            let mut one = vec![st.instances[i].clone()];
            let (c, f) = placement::place(&mut one, &need, n, &constraints, &[], rng);
            if !c.is_empty() {
                st.instances[i] = one.remove(0);
            }
            (c.into_iter().map(|_| i).collect::<Vec<_>>(), f)
        }
        None => placement::place(&mut st.instances, &need, n, &constraints, &strategies, rng),
    };
    let mut started = Vec::new();
    for i in chosen {
        let v = &st.instances[i];
        let arn = (set.task_arn)(&crate::ids::task_id());
        let t = new_task(
            arn.clone(),
            &st.cluster,
            v,
            &p.task_definition,
            &td,
            &group,
            Some(&s.name),
            Some(&p.id),
            Some(&p.id),
            now,
        );
        ch.touched.insert(v.rec.arn.clone());
        st.tasks.push(t.clone());
        ch.new_tasks.push(t);
        started.push(arn);
    }
    if !started.is_empty() {
        ch.events.push((
            s.name.clone(),
            format!(
                "(service {}) has started {} tasks: {}.",
                s.name,
                started.len(),
                task_list(&started)
            ),
        ));
        s.steady = false;
    }
    match failure {
        Some(f) if s.last_placement_failure.as_deref() != Some(f.reason.as_str()) => {
            ch.events.push((
                s.name.clone(),
                format!(
                    "(service {}) was unable to place a task because {}.",
                    s.name, f.reason
                ),
            ));
            s.last_placement_failure = Some(f.reason);
        }
        Some(_) => {}
        None => s.last_placement_failure = None,
    }
    started.len()
}

fn replica(
    st: &mut ClusterState,
    ch: &mut Changes,
    s: &mut ServiceRec,
    set: &Settings,
    rng: &mut Rng,
) {
    let now = st.now;
    circuit_breaker(st, ch, s);
    fail_unproven(st, ch, s);
    let Some(primary) = s.primary().cloned() else {
        return;
    };
    let td = td_of(st, &primary.task_definition);
    let draining: BTreeSet<String> = st
        .instances
        .iter()
        .filter(|v| v.rec.status == "DRAINING")
        .map(|v| v.rec.arn.clone())
        .collect();
    let views: Vec<TaskView> = st
        .tasks
        .iter()
        .filter(|t| t.service.as_deref() == Some(&s.name))
        .filter(|t| {
            !(t.desired_status == TaskStatus::Stopped && t.last_status == TaskStatus::Stopped)
        })
        .map(|t| {
            let stopping = t.desired_status == TaskStatus::Stopped;
            TaskView {
                id: t.arn.clone(),
                current: t.deployment.as_deref() == Some(&primary.id)
                    && !draining.contains(&t.container_instance),
                healthy: !stopping && healthy(t, s, td.as_deref()),
                stopping,
                created_at_ms: t.started_at.unwrap_or(t.created_at).max(0) as u64,
            }
        })
        .collect();
    let desired = s.desired_count.clamp(0, 1_000_000) as u32;
    let dc = &s.deployment_configuration;
    let p = rollout::plan(
        desired,
        dc.minimum_healthy_percent.clamp(0, 100) as u32,
        dc.maximum_percent.clamp(100, 1000) as u32,
        &views,
    );
    let mut stopped = Vec::new();
    for (arn, why) in &p.stop {
        if let Some(t) = st.tasks.iter_mut().find(|t| &t.arn == arn) {
            let reason = if draining.contains(&t.container_instance) {
                "Container instance is draining: task replaced elsewhere".to_string()
            } else if *why == "scaled in" {
                format!("Scaling activity initiated by (deployment {})", primary.id)
            } else {
                format!("Task replaced by (deployment {})", primary.id)
            };
            stop(ch, t, &reason, StopCode::ServiceSchedulerInitiated, now);
            stopped.push(arn.clone());
        }
    }
    if !stopped.is_empty() {
        ch.events.push((
            s.name.clone(),
            format!(
                "(service {}) has stopped {} running tasks: {}.",
                s.name,
                stopped.len(),
                task_list(&stopped)
            ),
        ));
        s.steady = false;
    }
    let failed_no_rollback = primary.rollout_state == "FAILED";
    if p.start > 0 && !failed_no_rollback {
        if s.next_start_at > now {
            // Crash backoff: said once per failure streak.
        } else {
            start_tasks(st, ch, s, p.start as usize, None, set, rng);
        }
    }
    settle(st, ch, s, &views, desired);
}

/// Steady state: every desired task of the PRIMARY deployment healthy and
/// nothing else left.
fn settle(
    st: &ClusterState,
    ch: &mut Changes,
    s: &mut ServiceRec,
    views: &[TaskView],
    desired: u32,
) {
    let now = st.now;
    let healthy_current = views.iter().filter(|v| v.current && v.healthy).count();
    let others = views.iter().filter(|v| !v.current).count();
    let steady =
        others == 0 && healthy_current == desired as usize && views.iter().all(|v| !v.stopping);
    let name = s.name.clone();
    for d in s.deployments.iter_mut() {
        if d.status == "PRIMARY" {
            d.desired_count = s.desired_count;
            if steady && d.rollout_state == "IN_PROGRESS" {
                d.rollout_state = "COMPLETED".into();
                d.rollout_state_reason = Some("ECS deployment completed.".into());
                d.updated_at = now;
                ch.events.push((
                    name.clone(),
                    format!(
                        "(service {name}) (deployment {}) deployment completed.",
                        d.id
                    ),
                ));
            }
        } else if d.desired_count != 0 {
            d.desired_count = 0;
            d.updated_at = now;
        }
    }
    if steady {
        // Older deployments are done; the last completed one is kept for a
        // rollback.
        let keep_completed = s
            .deployments
            .iter()
            .filter(|d| d.status != "PRIMARY" && d.rollout_state == "COMPLETED")
            .max_by_key(|d| d.created_at)
            .map(|d| d.id.clone());
        let primary_completed = s.primary().is_some_and(|p| p.rollout_state == "COMPLETED");
        s.deployments.retain(|d| {
            d.status == "PRIMARY" || (!primary_completed && Some(&d.id) == keep_completed.as_ref())
        });
        for d in s.deployments.iter_mut().filter(|d| d.status != "PRIMARY") {
            d.status = "INACTIVE".into();
        }
        s.consecutive_failures = 0;
        if !s.steady {
            ch.events.push((
                name.clone(),
                format!("(service {name}) has reached a steady state."),
            ));
            s.steady = true;
        }
    }
}

fn daemon(
    st: &mut ClusterState,
    ch: &mut Changes,
    s: &mut ServiceRec,
    set: &Settings,
    rng: &mut Rng,
) {
    let now = st.now;
    circuit_breaker(st, ch, s);
    fail_unproven(st, ch, s);
    let Some(primary) = s.primary().cloned() else {
        return;
    };
    let constraints: Vec<Constraint> =
        placement::constraints(&s.placement_constraints).unwrap_or_default();
    let td = td_of(st, &primary.task_definition);
    let mut eligible = 0i64;
    let mut views = Vec::new();
    for i in 0..st.instances.len() {
        let (arn, active, lost, fits) = {
            let v = &st.instances[i];
            let fits = constraints.iter().all(|c| match c {
                Constraint::MemberOf(e) => e.matches(v),
                Constraint::DistinctInstance => true,
            });
            (v.rec.arn.clone(), v.rec.status == "ACTIVE", v.lost, fits)
        };
        if lost {
            continue;
        }
        let here: Vec<usize> = st
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.service.as_deref() == Some(&s.name) && t.container_instance == arn)
            .map(|(j, _)| j)
            .collect();
        let wanted = active && fits;
        if wanted {
            eligible += 1;
        }
        let mut current_kept = false;
        let mut any_stopping = false;
        for &j in &here {
            let t = &mut st.tasks[j];
            if t.desired_status == TaskStatus::Stopped {
                any_stopping = true;
                continue;
            }
            let current = t.deployment.as_deref() == Some(&primary.id);
            let why = if !wanted {
                Some(
                    "Container instance is draining or no longer matches the service's constraints",
                )
            } else if !current {
                Some("Task replaced by a new deployment")
            } else if current_kept {
                Some("More than one daemon task on the instance")
            } else {
                None
            };
            match why {
                Some(w) => {
                    stop(ch, t, w, StopCode::ServiceSchedulerInitiated, now);
                    any_stopping = true;
                }
                None => current_kept = true,
            }
            let stopping = t.desired_status == TaskStatus::Stopped;
            views.push(TaskView {
                id: t.arn.clone(),
                current,
                healthy: !stopping && healthy(t, s, td.as_deref()),
                stopping,
                created_at_ms: t.created_at.max(0) as u64,
            });
        }
        // A daemon task replaces the old one once it is gone: one task per
        // instance, never two.
        let connected = st.instances[i].connected;
        if wanted
            && connected
            && !current_kept
            && !any_stopping
            && primary.rollout_state != "FAILED"
            && s.next_start_at <= now
        {
            start_tasks(st, ch, s, 1, Some(i), set, rng);
        }
    }
    s.desired_count = eligible;
    settle(st, ch, s, &views, eligible.clamp(0, u32::MAX as i64) as u32);
}

#[cfg(test)]
mod tests;
