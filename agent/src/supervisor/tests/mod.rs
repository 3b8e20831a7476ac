//! The supervisor's rules, scenario by scenario, against the fake engine
//! and router with tokio's clock paused: adoption, crash replacement and
//! backoff, restart policies, rollouts within min/max percent, the circuit
//! breaker, unknown desired state, resources, `dependsOn`, and the state
//! change stream. The same rules are tested end to end against a real
//! engine in `tests/`; here each scenario runs in milliseconds and can set
//! up what a real engine cannot (a crash at an exact moment).

mod harness;

use crate::containers::label;
use crate::desired::{Desired, DesiredState};
use crate::engine::{Health, RunState};
use dockhand_model::task::TaskStatus;
use harness::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

fn task_of(c: &crate::engine::fake::FakeContainer) -> String {
    c.label(label::TASK).unwrap_or_default().to_string()
}

#[tokio::test(start_paused = true)]
async fn a_running_host_network_task_holds_its_ports() {
    let h = Harness::start().await;
    let one = spec(json!({
        "serviceName": "hn", "desiredCount": 1,
        "taskDefinition": {"family": "hn", "networkMode": "host", "containerDefinitions": [{
            "name": "web", "image": IMAGE, "memory": 64,
            "portMappings": [{"containerPort": 8080}]}]}
    }));
    h.deploy(one.clone(), 1).await;
    assert_eq!(h.running("hn")[0].label(label::HOST_PORTS), Some("8080"));
    // A second task would bind 8080 again: it waits, with the reason.
    let mut two = one;
    two.desired_count = Some(2);
    h.set(vec![two]);
    h.idle(Duration::from_secs(10)).await;
    let creates = h
        .engine
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    assert_eq!(creates, 1, "no second task on host port 8080");
    let why = h.service_status("hn").unwrap().pending_reason;
    assert!(
        why.as_deref().is_some_and(|w| w.contains("8080")),
        "{why:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_service_starts_its_tasks_on_distinct_dynamic_ports() {
    let h = Harness::start().await;
    h.deploy(service("web", 3), 3).await;
    let ports: BTreeSet<u16> = h
        .running("web")
        .iter()
        .map(|c| c.spec.port_bindings[0].host_port)
        .collect();
    assert_eq!(ports.len(), 3, "{ports:?}");
    assert!(ports.iter().all(|p| (42000..=42999).contains(p)));
    let c = &h.running("web")[0];
    for key in [
        label::INSTANCE,
        label::SERVICE,
        label::TASK,
        label::ECS_TASK_ARN,
    ] {
        assert!(c.label(key).is_some(), "label {key}");
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_starts_while_desired_state_is_unknown() {
    let h = Harness::start().await;
    h.idle(MINUTE).await;
    assert!(h.engine.containers().is_empty());
    assert!(!h.snapshot().desired_known);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_adopts_its_tasks_and_restarts_none() {
    let h = Harness::start().await;
    h.deploy(routed("web", 2), 2).await;
    let before: Vec<String> = h.running("web").iter().map(|c| c.id.clone()).collect();
    let calls = h.engine.calls().len();
    let h = h.restart(DesiredState::Unknown).await;
    h.set(vec![routed("web", 2)]);
    h.wait(LIMIT, "backends registered again", |h| {
        h.router.backends().len() == 2
    })
    .await;
    h.idle(MINUTE).await;
    let after: Vec<String> = h.running("web").iter().map(|c| c.id.clone()).collect();
    assert_eq!(before, after);
    assert_eq!(
        h.engine.calls().len(),
        calls,
        "no engine call: {:?}",
        &h.engine.calls()[calls..]
    );
    assert!(
        h.router.backends().values().all(|(_, _, adopted)| *adopted),
        "adopted backends need one check, not the threshold"
    );
}

#[tokio::test(start_paused = true)]
async fn a_launch_an_agent_stop_interrupted_is_replaced_not_left_pending() {
    let h = Harness::start().await;
    h.deploy(routed("web", 2), 2).await;
    let left = h.running("web")[0].clone();
    // Stopped between create and start (SIGKILL): the next agent finds a
    // created container nobody will start.
    let mut h = h;
    h.stop().await;
    h.engine.unstart(&left.id);
    let h = h.restart(DesiredState::Unknown).await;
    h.set(vec![routed("web", 2)]);
    h.wait(
        LIMIT,
        "two running tasks again, the interrupted one replaced",
        |h| h.running("web").len() == 2 && h.running("web").iter().all(|c| c.id != left.id),
    )
    .await;
    h.wait(LIMIT, "the interrupted task's container removed", |h| {
        h.engine.containers().iter().all(|c| c.id != left.id)
    })
    .await;
    let s = h.service_status("web").unwrap();
    assert_eq!(s.consecutive_failures, 0, "not counted as a failure");
}

#[tokio::test(start_paused = true)]
async fn a_restart_mid_rollout_stops_nothing_before_the_first_checks() {
    let h = Harness::start().await;
    h.deploy(routed("web", 2), 2).await;
    let old: BTreeSet<String> = h.running_tasks("web");
    // Restarted with a new revision desired; the adopted tasks' first
    // checks have not answered yet.
    let mut d = Desired::default();
    let v2 = with_env(routed("web", 2), "V", "2");
    d.services.insert("web".into(), v2);
    let h = h.restart(DesiredState::Known(d)).await;
    h.router.hold_checks();
    h.idle(Duration::from_secs(1)).await;
    assert!(
        h.router.drained().is_empty(),
        "nothing stopped before its check"
    );
    assert_eq!(h.running_tasks("web"), old, "and nothing started");
    h.router.finish_checks();
    h.wait(LIMIT, "the rollout to finish", |h| {
        let now = h.running_tasks("web");
        now.len() == 2 && now.is_disjoint(&old)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_crashed_task_is_replaced_at_once_and_reported() {
    let h = Harness::start().await;
    h.deploy(service("web", 1), 1).await;
    let first = h.running("web")[0].clone();
    h.engine.exit(&first.id, 3);
    h.wait(Duration::from_secs(2), "a replacement", |h| {
        h.running("web").len() == 1 && h.running("web")[0].id != first.id
    })
    .await;
    // The crashed task's containers are kept for inspection.
    assert!(h.engine.containers().iter().any(|c| c.id == first.id));
    let stopped: Vec<_> = h
        .changes()
        .into_iter()
        .filter(|c| c.task_id == task_of(&first) && c.report.status == TaskStatus::Stopped)
        .collect();
    assert_eq!(stopped.len(), 1, "one STOPPED change");
    let report = &stopped[0].report;
    assert_eq!(report.containers[0].exit_code, Some(3));
    assert!(report
        .reason
        .as_deref()
        .unwrap()
        .contains("essential container web exited with code 3"));
    let seqs: Vec<u64> = h.changes().iter().map(|c| c.report.sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ordered: {seqs:?}");
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_backs_off_0_1_2_4_seconds() {
    let h = Harness::start().await;
    h.set(vec![with_env(service("web", 1), "FAKE_EXIT", "1")]);
    let started = tokio::time::Instant::now();
    let mut starts = Vec::new();
    h.wait(LIMIT, "5 starts", |h| {
        let n = h
            .engine
            .calls()
            .iter()
            .filter(|c| c.starts_with("start "))
            .count();
        while starts.len() < n {
            starts.push(started.elapsed());
        }
        n >= 5
    })
    .await;
    let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps, vec![0, 1, 2, 4], "{starts:?}");
    let s = h.service_status("web").unwrap();
    assert!(s.consecutive_failures >= 4);
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_ten_minutes_of_running() {
    let h = Harness::start().await;
    h.set(vec![service("web", 1)]);
    h.wait(LIMIT, "running", |h| h.running("web").len() == 1)
        .await;
    for _ in 0..3 {
        let c = h.running("web")[0].clone();
        h.engine.exit(&c.id, 1);
        h.wait(LIMIT, "replaced", |h| {
            h.running("web").len() == 1 && h.running("web")[0].id != c.id
        })
        .await;
    }
    assert_eq!(h.service_status("web").unwrap().consecutive_failures, 3);
    h.idle(11 * MINUTE).await;
    let c = h.running("web")[0].clone();
    h.engine.exit(&c.id, 1);
    h.wait(LIMIT, "replaced", |h| {
        h.running("web").len() == 1 && h.running("web")[0].id != c.id
    })
    .await;
    assert_eq!(h.service_status("web").unwrap().consecutive_failures, 1);
}

fn with_restart_policy(
    s: dockhand_model::ServiceSpec,
    ignored: &[i64],
) -> dockhand_model::ServiceSpec {
    let mut v = serde_json::to_value(s).unwrap();
    v["taskDefinition"]["containerDefinitions"][0]["restartPolicy"] =
        json!({"enabled": true, "ignoredExitCodes": ignored, "restartAttemptPeriod": 0});
    spec(v)
}

#[tokio::test(start_paused = true)]
async fn a_restart_policy_restarts_in_place_unless_the_code_is_ignored() {
    let h = Harness::start().await;
    h.set(vec![with_restart_policy(service("web", 1), &[7])]);
    h.wait(LIMIT, "running", |h| h.running("web").len() == 1)
        .await;
    let c = h.running("web")[0].clone();
    h.engine.exit(&c.id, 1);
    h.wait(LIMIT, "restarted in place", |h| {
        h.running("web")
            .first()
            .is_some_and(|x| x.id == c.id && x.restart_count == 1)
    })
    .await;
    assert_eq!(h.service_status("web").unwrap().total_failures, 0);
    // An ignored code fails the task; a new one replaces it.
    h.engine.exit(&c.id, 7);
    h.wait(LIMIT, "replaced", |h| {
        h.running("web").first().is_some_and(|x| x.id != c.id)
    })
    .await;
    assert_eq!(h.service_status("web").unwrap().total_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn scale_in_drains_before_it_stops_and_removes() {
    let h = Harness::start().await;
    h.deploy(routed("web", 3), 3).await;
    let ids: Vec<(String, String)> = h
        .running("web")
        .iter()
        .map(|c| (task_of(c), c.id.clone()))
        .collect();
    h.set(vec![routed("web", 1)]);
    h.wait(LIMIT, "1 left", |h| h.engine.containers().len() == 1)
        .await;
    let calls = h.engine.calls();
    for task in h.router.drained() {
        let (_, cid) = ids.iter().find(|(t, _)| *t == task).unwrap();
        let d = calls
            .iter()
            .position(|c| *c == format!("drain {task}"))
            .unwrap();
        let s = calls
            .iter()
            .position(|c| *c == format!("stop {cid}"))
            .unwrap();
        let r = calls
            .iter()
            .position(|c| *c == format!("remove {cid}"))
            .unwrap();
        assert!(d < s && s < r, "drain, stop, remove in order: {calls:?}");
    }
    assert_eq!(h.router.drained().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn scale_in_stops_the_unhealthy_task_first() {
    let h = Harness::start().await;
    h.deploy(routed("web", 3), 3).await;
    let sick = task_of(&h.running("web")[1]);
    h.router.set_health(&sick, false);
    h.idle(Duration::from_secs(1)).await;
    h.set(vec![routed("web", 2)]);
    h.wait(LIMIT, "2 left", |h| h.running("web").len() == 2)
        .await;
    assert!(!h.running_tasks("web").contains(&sick));
}

/// Samples the service while `during` runs, checking min/max percent.
async fn assert_within(
    h: &Harness,
    name: &str,
    min_healthy: usize,
    max_total: usize,
    until: impl Fn(&Harness) -> bool,
) {
    let start = tokio::time::Instant::now();
    loop {
        let live = h
            .engine
            .containers()
            .into_iter()
            .filter(|c| c.label(label::SERVICE) == Some(name) && c.state == RunState::Running)
            .count();
        let healthy = h
            .router
            .backends()
            .keys()
            .filter(|t| h.router.task_health(t) == Some(true))
            .count();
        assert!(
            live <= max_total,
            "{live} tasks running, maximum {max_total}"
        );
        assert!(
            healthy >= min_healthy,
            "{healthy} healthy, minimum {min_healthy}"
        );
        if until(h) {
            return;
        }
        assert!(start.elapsed() < LIMIT, "rollout did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

use crate::router::Router as _;

#[tokio::test(start_paused = true)]
async fn a_rollout_with_100_200_surges_then_replaces() {
    let h = Harness::start().await;
    h.deploy(routed("web", 4), 4).await;
    let old = h.running_tasks("web");
    h.set(vec![with_env(routed("web", 4), "PROVIDER", "ECS")]);
    assert_within(&h, "web", 4, 8, |h| {
        let now = h.running_tasks("web");
        now.len() == 4 && now.is_disjoint(&old)
    })
    .await;
    assert_eq!(h.service_status("web").unwrap().revision, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_rollout_with_50_100_stops_first_and_never_exceeds_the_count() {
    let h = Harness::start().await;
    h.deploy(with_deployment(routed("web", 4), 50, 100), 4)
        .await;
    let old = h.running_tasks("web");
    h.set(vec![with_deployment(
        with_env(routed("web", 4), "V", "2"),
        50,
        100,
    )]);
    assert_within(&h, "web", 2, 4, |h| {
        let now = h.running_tasks("web");
        now.len() == 4 && now.is_disjoint(&old)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_crashing_revision_trips_the_breaker_and_rolls_back() {
    let h = Harness::start().await;
    h.deploy(routed("web", 2), 2).await;
    let old = h.running_tasks("web");
    h.set(vec![with_env(routed("web", 2), "FAKE_EXIT", "1")]);
    h.wait(LIMIT, "rolled back", |h| {
        h.service_status("web")
            .is_some_and(|s| s.rollout_failed.is_some())
    })
    .await;
    let s = h.service_status("web").unwrap();
    assert!(s
        .rollout_failed
        .unwrap()
        .contains("rolled back to revision 1"));
    assert_eq!(s.revision, Some(1), "runs revision 1 again");
    // The old tasks served throughout and still do.
    assert_eq!(h.running_tasks("web"), old);
    h.idle(MINUTE).await;
    assert_eq!(h.running_tasks("web"), old, "revision 2 is not retried");
}

#[tokio::test(start_paused = true)]
async fn a_revision_that_never_passes_its_checks_is_failed_and_rolled_back() {
    let h = Harness::start().await;
    h.set(vec![routed("web", 1)]);
    h.wait(LIMIT, "healthy", |h| h.router.backends().len() == 1)
        .await;
    let old = h.running_tasks("web");
    h.router.fail_new_backends(true);
    h.set(vec![with_env(routed("web", 1), "V", "2")]);
    h.wait(3 * MINUTE, "rolled back", |h| {
        h.service_status("web")
            .is_some_and(|s| s.rollout_failed.is_some())
    })
    .await;
    let s = h.service_status("web").unwrap();
    assert!(s
        .rollout_failed
        .unwrap()
        .contains("never passed its health checks"));
    assert_eq!(h.running_tasks("web"), old);
}

#[tokio::test(start_paused = true)]
async fn the_health_deadline_starts_when_the_task_runs_not_when_its_pull_starts() {
    let h = Harness::start().await;
    h.engine.set_pull_time(Duration::from_secs(60));
    // A deadline of 1 + 1 × (2 + 2) + 1 = 5 s after running, far shorter
    // than the pull.
    let mut s = routed("web", 1);
    s.task_definition.container_definitions[0].image = "slow:1".into();
    h.set(vec![s]);
    h.wait(3 * MINUTE, "running", |h| h.running("web").len() == 1)
        .await;
    h.idle(Duration::from_secs(2)).await;
    assert_eq!(h.service_status("web").unwrap().total_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn unknown_desired_state_holds_tasks_and_restarts_crashes_in_place() {
    let h = Harness::start().await;
    h.deploy(routed("web", 2), 2).await;
    let tasks = h.running_tasks("web");
    h.set_state(DesiredState::Unknown);
    h.idle(Duration::from_secs(1)).await;
    let calls_before = h.engine.calls().len();
    let c = h.running("web")[0].clone();
    h.engine.exit(&c.id, 9);
    h.wait(LIMIT, "restarted in place", |h| {
        h.running("web").iter().any(|x| x.id == c.id)
    })
    .await;
    h.idle(MINUTE).await;
    assert_eq!(h.running_tasks("web"), tasks, "no new task, none stopped");
    let later = &h.engine.calls()[calls_before..];
    assert!(
        later.iter().all(|c| !c.starts_with("create")
            && !c.starts_with("stop")
            && !c.starts_with("remove")),
        "{later:?}"
    );
    let s = h.service_status("web").unwrap();
    assert!(s.pending_reason.unwrap().contains("desired state unknown"));
    // Word comes back: a known state with the service gone stops it.
    h.set(vec![]);
    h.wait(LIMIT, "stopped", |h| h.engine.containers().is_empty())
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_the_source_silent_resumes_the_last_desired_state() {
    let h = Harness::start().await;
    h.deploy(routed("web", 2), 2).await;
    let tasks = h.running_tasks("web");
    // The source never answers after the restart.
    let h = h.restart(DesiredState::Unknown).await;
    h.wait(LIMIT, "routes from the saved desired state", |h| {
        h.router.routes("web").len() == 1 && h.router.backends().len() == 2
    })
    .await;
    h.idle(MINUTE).await;
    assert_eq!(h.running_tasks("web"), tasks);
}

#[tokio::test(start_paused = true)]
async fn an_empty_known_state_stops_everything_but_unknown_stops_nothing() {
    let h = Harness::start().await;
    h.deploy(service("web", 2), 2).await;
    h.set_state(DesiredState::Unknown);
    h.idle(MINUTE).await;
    assert_eq!(h.running("web").len(), 2);
    h.set_state(DesiredState::Known(Desired::default()));
    h.wait(LIMIT, "all gone", |h| h.engine.containers().is_empty())
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_task_that_does_not_fit_waits_with_the_numbers() {
    let h = Harness::start().await;
    let mut s = service("big", 1);
    s.task_definition.container_definitions[0].memory = Some(64_000);
    h.set(vec![s]);
    h.wait(LIMIT, "pending reason", |h| {
        h.service_status("big")
            .and_then(|s| s.pending_reason)
            .is_some()
    })
    .await;
    let why = h.service_status("big").unwrap().pending_reason.unwrap();
    assert_eq!(why, "not enough memory: needs 64000 MiB, 4096 MiB free");
    assert!(h.engine.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn memory_is_accounted_across_tasks() {
    let h = Harness::start().await;
    let mut s = service("web", 5);
    s.task_definition.container_definitions[0].memory = Some(1000);
    h.set(vec![s]);
    h.wait(LIMIT, "4 running, 1 pending", |h| {
        h.running("web").len() == 4
            && h.service_status("web")
                .and_then(|s| s.pending_reason)
                .is_some()
    })
    .await;
    let why = h.service_status("web").unwrap().pending_reason.unwrap();
    assert_eq!(why, "not enough memory: needs 1000 MiB, 96 MiB free");
}

#[tokio::test(start_paused = true)]
async fn a_static_host_port_is_given_once() {
    let h = Harness::start().await;
    let mut s = service("web", 2);
    s.task_definition.container_definitions[0].port_mappings[0].host_port = Some(42500);
    h.set(vec![s]);
    h.wait(LIMIT, "1 running, 1 pending", |h| {
        h.running("web").len() == 1
            && h.service_status("web")
                .and_then(|s| s.pending_reason)
                .is_some()
    })
    .await;
    let why = h.service_status("web").unwrap().pending_reason.unwrap();
    assert_eq!(why, "host port 42500/tcp is already used by another task");
}

fn two_containers(
    condition: &str,
    init_env: serde_json::Value,
    health: bool,
) -> dockhand_model::ServiceSpec {
    let mut app = json!({
        "name": "app", "image": IMAGE, "memory": 32,
        "dependsOn": [{"containerName": "init", "condition": condition}],
    });
    let mut init = json!({"name": "init", "image": IMAGE, "memory": 32, "essential": condition == "HEALTHY", "environment": init_env});
    if health {
        init["healthCheck"] = json!({"command": ["CMD", "true"]});
    }
    app["environment"] = json!([]);
    spec(json!({
        "serviceName": "dep", "desiredCount": 1,
        "taskDefinition": {"family": "dep", "containerDefinitions": [app, init]}
    }))
}

#[tokio::test(start_paused = true)]
async fn depends_on_success_starts_the_app_after_init_exits_0() {
    let h = Harness::start().await;
    h.set(vec![two_containers(
        "SUCCESS",
        json!([{"name": "FAKE_EXIT", "value": "0"}]),
        false,
    )]);
    h.wait(LIMIT, "app running", |h| h.running("dep").len() == 1)
        .await;
    let calls: Vec<String> = h
        .engine
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("start"))
        .collect();
    let by_id = |name: &str| {
        h.engine
            .containers()
            .into_iter()
            .find(|c| c.label(label::CONTAINER) == Some(name))
            .unwrap()
            .id
    };
    assert_eq!(
        calls,
        vec![
            format!("start {}", by_id("init")),
            format!("start {}", by_id("app"))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn depends_on_success_fails_the_launch_when_init_fails() {
    let h = Harness::start().await;
    h.set(vec![two_containers(
        "SUCCESS",
        json!([{"name": "FAKE_EXIT", "value": "2"}]),
        false,
    )]);
    h.wait(LIMIT, "a failed start", |h| {
        h.service_status("dep")
            .is_some_and(|s| s.total_failures >= 1)
    })
    .await;
    let e = h.service_status("dep").unwrap().events;
    assert!(
        e.iter().any(|e| e
            .message
            .contains("dependency init exited with code 2, SUCCESS required")),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn depends_on_healthy_waits_for_the_health_check() {
    let h = Harness::start().await;
    h.set(vec![two_containers(
        "HEALTHY",
        json!([{"name": "FAKE_HEALTH", "value": "starting"}]),
        true,
    )]);
    h.wait(LIMIT, "init running", |h| h.running("dep").len() == 1)
        .await;
    h.idle(Duration::from_secs(10)).await;
    assert_eq!(h.running("dep").len(), 1, "app waits");
    let init = h.running("dep")[0].clone();
    h.engine.set_health(&init.id, Health::Healthy);
    h.wait(LIMIT, "app running", |h| h.running("dep").len() == 2)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_service_is_drained_stopped_and_removed() {
    let h = Harness::start().await;
    h.set(vec![routed("web", 2), service("other", 1)]);
    h.wait(LIMIT, "3 running, 2 routed", |h| {
        h.engine.containers().len() == 3 && h.router.backends().len() == 2
    })
    .await;
    h.set(vec![service("other", 1)]);
    h.wait(LIMIT, "web gone", |h| {
        h.running("web").is_empty() && h.engine.containers().len() == 1
    })
    .await;
    assert_eq!(h.router.drained().len(), 2);
    assert!(h.router.routes("web").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_broken_definition_keeps_the_last_good_one_running() {
    let h = Harness::start().await;
    h.deploy(service("web", 2), 2).await;
    let tasks = h.running_tasks("web");
    let mut d = Desired::default();
    d.broken
        .insert("web".into(), "web.json: desiredCount: invalid type".into());
    h.set_state(DesiredState::Known(d));
    h.idle(MINUTE).await;
    assert_eq!(h.running_tasks("web"), tasks);
    let s = h.service_status("web").unwrap();
    assert_eq!(
        s.broken_file.as_deref(),
        Some("web.json: desiredCount: invalid type")
    );
}

#[tokio::test(start_paused = true)]
async fn a_start_the_engine_refuses_is_a_counted_failure_with_backoff() {
    let h = Harness::start().await;
    h.set(vec![with_env(service("web", 1), "FAKE_START_FAIL", "1")]);
    h.wait(LIMIT, "3 failures", |h| {
        h.service_status("web")
            .is_some_and(|s| s.total_failures >= 3)
    })
    .await;
    let s = h.service_status("web").unwrap();
    assert!(s
        .events
        .iter()
        .any(|e| e.message.contains("failed to start: start container web")));
}

#[tokio::test(start_paused = true)]
async fn a_container_removed_behind_the_agents_back_is_replaced_and_reported_gone() {
    let h = Harness::start().await;
    h.set(vec![service("web", 1)]);
    h.wait(LIMIT, "running", |h| h.running("web").len() == 1)
        .await;
    let c = h.running("web")[0].clone();
    h.engine.vanish(&c.id);
    h.wait(LIMIT, "replaced", |h| h.running("web").len() == 1)
        .await;
    let gone = h
        .changes()
        .into_iter()
        .find(|x| x.task_id == task_of(&c) && x.report.status == TaskStatus::Stopped)
        .expect("a STOPPED change for the vanished task");
    assert_eq!(
        gone.report.reason.as_deref(),
        Some("the task's containers are gone")
    );
}

#[tokio::test(start_paused = true)]
async fn an_engine_outage_changes_nothing_and_is_survived() {
    let h = Harness::start().await;
    h.deploy(service("web", 2), 2).await;
    let tasks = h.running_tasks("web");
    h.engine.set_down(true);
    h.idle(MINUTE).await;
    h.engine.set_down(false);
    h.idle(MINUTE).await;
    assert_eq!(h.running_tasks("web"), tasks);
}

#[tokio::test(start_paused = true)]
async fn tasks_that_die_with_the_engine_are_replaced_without_blaming_the_rollout() {
    let h = Harness::start().await;
    h.deploy(routed("web", 3), 3).await;
    h.router.fail_new_backends(true);
    h.set(vec![with_env(routed("web", 3), "V", "2")]);
    h.wait(LIMIT, "new tasks started", |h| h.running("web").len() == 6)
        .await;
    h.router.fail_new_backends(false);
    h.engine.restart();
    h.wait(LIMIT, "3 tasks of revision 2", |h| {
        let r = h.running("web");
        r.len() == 3 && r.iter().all(|c| c.label(label::REVISION) == Some("2"))
    })
    .await;
    let s = h.service_status("web").unwrap();
    assert_eq!(s.total_failures, 0, "{:?}", s.events);
    assert!(s.rollout_failed.is_none());
    assert!(s
        .events
        .iter()
        .any(|e| e.message.contains("when the container engine went away")));
}

/// A stop is on disk before the container gets its signal. Otherwise an
/// agent killed in between leaves a state file that still wants the task
/// running, and the next agent takes the exit for a crash: counted as a
/// failure, its container kept for inspection beside the desired count
/// (a flake of the chaos test's twenty kills, on a slow disk). A real
/// agent's stop runs on another worker thread while the pass goes on, so
/// this test runs on two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_saved_before_its_container_is_signalled() {
    let h = Harness::start().await;
    let state = h.dir.join("state.json");
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
    let record = std::sync::Arc::clone(&seen);
    h.engine.on_stop(move |c| {
        let task = task_of(c);
        let desired = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::store::State>(&b).ok())
            .and_then(|s| s.tasks.get(&task).map(|t| format!("{:?}", t.desired)))
            .unwrap_or_else(|| "not in the state file".into());
        record.lock().unwrap().push((task, desired));
    });
    h.deploy(service("web", 4), 4).await;
    // A new revision replaces all four: four stops, in the same passes
    // as other stops and the save.
    h.deploy(with_env(service("web", 4), "V", "2"), 4).await;
    h.wait(LIMIT, "the old revision stopped", |h| {
        h.engine
            .calls()
            .iter()
            .filter(|c| c.starts_with("stop "))
            .count()
            >= 4
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 4, "{seen:?}");
    for (task, desired) in &seen {
        assert_eq!(
            desired, "Stopped",
            "task {task} was signalled before its stop was saved"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_host_network_rollout_waits_for_the_port_unless_the_old_task_may_stop_first() {
    let h = Harness::start().await;
    let mk = |v: &str, min: i64| {
        spec(json!({
            "serviceName": "hn", "desiredCount": 1,
            "deploymentConfiguration": {"minimumHealthyPercent": min, "maximumPercent": 200},
            "taskDefinition": {"family": "hn", "networkMode": "host", "containerDefinitions": [{
                "name": "web", "image": IMAGE, "memory": 64,
                "environment": [{"name": "V", "value": v}],
                "portMappings": [{"containerPort": 8080}]}]}
        }))
    };
    h.deploy(mk("1", 100), 1).await;
    h.set(vec![mk("2", 100)]);
    h.idle(Duration::from_secs(60)).await;
    // As on ECS: the new task needs the old one's port, and the old one may
    // not stop before its replacement is healthy.
    let revision = |h: &Harness| -> Vec<String> {
        h.running("hn")
            .iter()
            .map(|c| c.label(label::REVISION).unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(revision(&h), ["1"]);
    let why = h.service_status("hn").unwrap().pending_reason;
    assert_eq!(
        why.as_deref(),
        Some("host port 8080/tcp is already used by another task")
    );
    // With minimumHealthyPercent 0 the old task stops first.
    h.set(vec![mk("2", 0)]);
    h.idle(Duration::from_secs(60)).await;
    assert_eq!(revision(&h), ["2"]);
    assert_eq!(h.service_status("hn").unwrap().pending_reason, None);
}

#[tokio::test(start_paused = true)]
async fn a_managed_task_whose_definition_does_not_validate_is_not_started_and_says_why() {
    let h = Harness::start().await;
    let good = service("web", 1).task_definition;
    let mut bad = good.clone();
    bad.container_definitions.clear();
    h.set_managed(&[("goodtask", true, good), ("badtask", true, bad)]);
    h.idle(Duration::from_secs(5)).await;
    let running: BTreeSet<String> = h.running_tasks("web");
    assert_eq!(running.into_iter().collect::<Vec<_>>(), ["goodtask"]);
    let why = h.service_status("web").and_then(|s| s.pending_reason);
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("badtask") && w.contains("not valid")),
        "{why:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_id_is_shortened_by_characters() {
    let h = Harness::start().await;
    // 11 ASCII bytes, then a 2-byte character across byte 12.
    let id = "aaaaaaaaaaa\u{e9}b";
    h.set_managed(&[(id, true, service("web", 1).task_definition)]);
    h.idle(Duration::from_secs(5)).await;
    let running = h.running("web");
    assert_eq!(running.len(), 1, "the supervisor runs on");
    assert!(
        running[0].spec.name.ends_with("-aaaaaaaaaaa\u{e9}"),
        "{}",
        running[0].spec.name
    );
}

#[tokio::test(start_paused = true)]
async fn a_managed_task_whose_launch_a_restart_cut_short_is_reported_stopped() {
    let mut h = Harness::start().await;
    let mut td = service("web", 1).task_definition;
    td.container_definitions[0].image = "slow:1".into();
    h.engine.set_pull_time(Duration::from_secs(600));
    h.set_managed(&[("t1", true, td.clone())]);
    h.wait(LIMIT, "the pull started", |h| {
        h.engine.calls().iter().any(|c| c.starts_with("pull"))
    })
    .await;
    // The agent stops mid-pull: the record is saved, no container exists.
    h.stop().await;
    let h = h.restart(DesiredState::Unknown).await;
    h.engine.set_pull_time(Duration::ZERO);
    h.set_managed(&[("t1", true, td)]);
    h.idle(Duration::from_secs(60)).await;
    let stopped: Vec<_> = h
        .changes()
        .into_iter()
        .filter(|c| c.task_id == "t1" && c.report.status == TaskStatus::Stopped)
        .collect();
    assert_eq!(stopped.len(), 1, "one end, reported: {stopped:?}");
    assert_eq!(
        stopped[0].report.stop_code,
        Some(dockhand_model::task::StopCode::TaskFailedToStart)
    );
    // Not started again under its id: the endpoint places a replacement.
    assert!(h.engine.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_managed_task_whose_pull_fails_is_reported_with_the_reason() {
    let h = Harness::start().await;
    let mut td = service("web", 1).task_definition;
    td.container_definitions[0].image = "nope:1".into();
    h.engine.fail_pulls_of("nope:1");
    h.set_managed(&[("t2", true, td)]);
    h.idle(Duration::from_secs(30)).await;
    let stopped: Vec<_> = h
        .changes()
        .into_iter()
        .filter(|c| c.task_id == "t2" && c.report.status == TaskStatus::Stopped)
        .collect();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    let reason = stopped[0].report.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("failed to start"), "{reason}");
    assert_eq!(
        stopped[0].report.stop_code,
        Some(dockhand_model::task::StopCode::TaskFailedToStart)
    );
}
