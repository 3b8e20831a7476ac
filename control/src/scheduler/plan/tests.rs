//! The scheduler's rules, pass by pass, on a cluster held in memory: each
//! pass is planned from records, the records are updated from its changes,
//! and agents are played by hand (tasks marked running and healthy, or
//! crashed).

use super::*;
use crate::records::{InstanceRec, ServiceLoadBalancer};
use dockhand_model::instance::{Attribute, Resource};
use dockhand_model::service::{CircuitBreaker, DeploymentConfiguration, LoadBalancer};
use std::collections::HashMap;

const TD1: &str = "arn:td/web:1";
const TD2: &str = "arn:td/web:2";

fn taskdef(memory: i64) -> TaskDefinition {
    TaskDefinition::from_json(serde_json::json!({
        "family": "web",
        "containerDefinitions": [{
            "name": "web", "image": "webapp", "memory": memory,
            "portMappings": [{"containerPort": 5000, "hostPort": 0}]
        }]
    }))
    .unwrap()
    .task_definition
}

struct World {
    now: i64,
    instances: Vec<InstanceRec>,
    services: Vec<ServiceRec>,
    tasks: Vec<TaskRec>,
    taskdefs: HashMap<String, Arc<TaskDefinition>>,
    events: Vec<String>,
    next_id: std::cell::Cell<u64>,
}

impl World {
    fn new(instances: usize, memory: i64) -> World {
        let mut w = World {
            now: 1_000_000,
            instances: Vec::new(),
            services: Vec::new(),
            tasks: Vec::new(),
            taskdefs: HashMap::new(),
            events: Vec::new(),
            next_id: std::cell::Cell::new(0),
        };
        for i in 0..instances {
            w.add_instance(&format!("i-{i}"), memory);
        }
        w.taskdefs.insert(TD1.into(), Arc::new(taskdef(128)));
        w.taskdefs.insert(TD2.into(), Arc::new(taskdef(128)));
        w
    }

    fn add_instance(&mut self, id: &str, memory: i64) {
        self.instances.push(InstanceRec {
            arn: format!("arn:ci/{id}"),
            cluster: "c".into(),
            ec2_instance_id: id.into(),
            status: "ACTIVE".into(),
            status_reason: None,
            drained_by_agent: false,
            registered_at: 0,
            last_seen_at: self.now,
            registered_resources: vec![
                Resource::integer("CPU", 2048),
                Resource::integer("MEMORY", memory),
            ],
            attributes: vec![Attribute::new("ecs.availability-zone", Some("a"))],
            version_info: Default::default(),
            desired_seq: 1,
            report_seq: 0,
            version: 1,
        });
    }

    fn service(&mut self, name: &str, desired: i64, lb: bool) {
        let route = LoadBalancer::from_api("web", 5000, &taskdef(128)).unwrap();
        self.services.push(ServiceRec {
            cluster: "c".into(),
            name: name.into(),
            status: "ACTIVE".into(),
            task_definition: TD1.into(),
            desired_count: desired,
            scheduling_strategy: "REPLICA".into(),
            deployment_configuration: DeploymentConfiguration {
                minimum_healthy_percent: 100,
                maximum_percent: 200,
                deployment_circuit_breaker: Some(CircuitBreaker {
                    enable: true,
                    rollback: true,
                }),
            },
            placement_constraints: Vec::new(),
            placement_strategy: Vec::new(),
            load_balancers: if lb {
                vec![ServiceLoadBalancer {
                    api: serde_json::json!({}),
                    route,
                }]
            } else {
                Vec::new()
            },
            health_check_grace_period_seconds: 0,
            launch_type: None,
            role: None,
            propagate_tags: None,
            enable_ecs_managed_tags: false,
            client_token: None,
            deployments: vec![Deployment {
                id: "d1".into(),
                status: "PRIMARY".into(),
                task_definition: TD1.into(),
                desired_count: desired,
                failed_tasks: 0,
                rollout_state: "IN_PROGRESS".into(),
                rollout_state_reason: None,
                created_at: self.now,
                updated_at: self.now,
            }],
            created_at: self.now,
            updated_at: self.now,
            consecutive_failures: 0,
            next_start_at: 0,
            last_placement_failure: None,
            steady: false,
        });
    }

    fn svc(&mut self, name: &str) -> &mut ServiceRec {
        self.services.iter_mut().find(|s| s.name == name).unwrap()
    }

    /// A new PRIMARY deployment of `td`, as UpdateService makes it.
    fn deploy(&mut self, name: &str, id: &str, td: &str) {
        let now = self.now;
        let s = self.svc(name);
        for d in &mut s.deployments {
            if d.status == "PRIMARY" {
                d.status = "ACTIVE".into();
            }
        }
        s.deployments.insert(
            0,
            Deployment {
                id: id.into(),
                status: "PRIMARY".into(),
                task_definition: td.into(),
                desired_count: s.desired_count,
                failed_tasks: 0,
                rollout_state: "IN_PROGRESS".into(),
                rollout_state_reason: None,
                created_at: now,
                updated_at: now,
            },
        );
        s.task_definition = td.into();
        s.steady = false;
    }

    /// One scheduling pass; the records take its changes.
    fn pass(&mut self) -> Changes {
        let timing = (self.now, 50_000, 300_000);
        let mut views: Vec<InstanceView> = self
            .instances
            .iter()
            .filter(|i| i.status != "INACTIVE")
            .map(|i| InstanceView::new(i.last_seen_at, i.clone(), timing))
            .collect();
        let live: Vec<TaskRec> = self.tasks.iter().filter(|t| t.live()).cloned().collect();
        for t in &live {
            if let Some(v) = views.iter_mut().find(|v| v.rec.arn == t.container_instance) {
                v.take(t);
            }
        }
        let mut st = ClusterState {
            cluster: "c".into(),
            now: self.now,
            instances: views,
            services: self.services.clone(),
            tasks: live,
            taskdefs: self.taskdefs.clone(),
        };
        let counter = std::sync::atomic::AtomicU64::new(self.next_id.get());
        let make = |id: &str| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("arn:task/{n:04}-{}", &id[..4])
        };
        let set = Settings {
            task_arn: &make,
            grace_ms: 300_000,
        };
        let ch = plan(&mut st, &set, &mut Rng(7));
        self.next_id
            .set(counter.load(std::sync::atomic::Ordering::Relaxed));
        for t in ch.new_tasks.iter().chain(ch.tasks.values()) {
            match self.tasks.iter_mut().find(|x| x.arn == t.arn) {
                Some(x) => *x = t.clone(),
                None => self.tasks.push(t.clone()),
            }
        }
        for s in ch.services.values() {
            *self.svc(&s.name) = s.clone();
        }
        self.events.extend(ch.events.iter().map(|(_, m)| m.clone()));
        ch
    }

    /// The agents do what they were told: start tasks (healthy when
    /// `healthy`), stop those asked to stop.
    /// Returns whether any task changed.
    fn agents(&mut self, healthy: bool) -> bool {
        let mut changed = false;
        for t in self.tasks.iter_mut() {
            if t.desired_status == TaskStatus::Stopped {
                if t.last_status != TaskStatus::Stopped {
                    t.last_status = TaskStatus::Stopped;
                    t.stopped_at = Some(self.now);
                    changed = true;
                }
            } else if t.last_status != TaskStatus::Running {
                t.last_status = TaskStatus::Running;
                t.started_at = Some(self.now);
                if healthy {
                    t.health_status = HealthStatus::Healthy;
                    t.healthy_once = true;
                }
                changed = true;
            }
        }
        changed
    }

    /// Passes and agent rounds until neither changes anything (at most
    /// `n` rounds).
    fn settle(&mut self, n: usize, healthy: bool) {
        for _ in 0..n {
            self.now += 1000;
            let ch = self.pass();
            let moved = self.agents(healthy);
            if ch.is_empty() && !moved {
                return;
            }
        }
    }

    fn running(&self, td: &str) -> usize {
        self.tasks
            .iter()
            .filter(|t| {
                t.task_definition == td && t.live() && t.desired_status == TaskStatus::Running
            })
            .count()
    }

    fn per_instance(&self) -> Vec<usize> {
        self.instances
            .iter()
            .map(|i| {
                self.tasks
                    .iter()
                    .filter(|t| {
                        t.container_instance == i.arn
                            && t.live()
                            && t.desired_status == TaskStatus::Running
                    })
                    .count()
            })
            .collect()
    }
}

#[test]
fn backoff_and_breaker_follow_ecs_numbers() {
    assert_eq!(
        (1..=6).map(backoff_ms).collect::<Vec<_>>(),
        vec![0, 1000, 2000, 4000, 8000, 16000]
    );
    assert_eq!(backoff_ms(40), MAX_BACKOFF_MS);
    assert_eq!(breaker_threshold(1), 3);
    assert_eq!(breaker_threshold(4), 3);
    assert_eq!(breaker_threshold(10), 5);
    assert_eq!(breaker_threshold(11), 6);
    assert_eq!(breaker_threshold(10_000), 200);
}

#[test]
fn a_service_spreads_its_tasks_and_reaches_a_steady_state_once() {
    let mut w = World::new(5, 1024);
    w.service("web", 4, true);
    w.pass();
    assert_eq!(w.running(TD1), 4);
    assert_eq!(
        w.per_instance().iter().filter(|n| **n == 1).count(),
        4,
        "{:?}",
        w.per_instance()
    );
    assert!(
        w.events[0].contains("has started 4 tasks"),
        "{:?}",
        w.events
    );
    w.settle(5, true);
    let steady: Vec<&String> = w
        .events
        .iter()
        .filter(|e| e.contains("steady state"))
        .collect();
    assert_eq!(steady.len(), 1, "{:?}", w.events);
    assert_eq!(w.svc("web").primary().unwrap().rollout_state, "COMPLETED");
    // Nothing more to do: a pass changes nothing.
    assert!(w.pass().is_empty());
}

#[test]
fn a_rollout_keeps_every_desired_task_healthy_and_replaces_all() {
    let mut w = World::new(5, 1024);
    w.service("web", 4, true);
    w.settle(5, true);
    w.deploy("web", "d2", TD2);
    let mut rounds = 0;
    loop {
        w.now += 1000;
        let ch = w.pass();
        // Never fewer than 4 healthy tasks wanted running (min 100%), never
        // more than 8 at once (max 200%).
        let healthy = w
            .tasks
            .iter()
            .filter(|t| {
                t.desired_status == TaskStatus::Running && t.health_status == HealthStatus::Healthy
            })
            .count();
        let live = w.tasks.iter().filter(|t| t.live()).count();
        assert!(healthy >= 4, "healthy {healthy}");
        assert!(live <= 8, "live {live}");
        let moved = w.agents(true);
        rounds += 1;
        if (ch.is_empty() && !moved) || rounds > 20 {
            break;
        }
    }
    assert_eq!((w.running(TD1), w.running(TD2)), (0, 4));
    let s = w.svc("web").clone();
    assert_eq!(s.primary().unwrap().rollout_state, "COMPLETED");
    assert!(
        w.events
            .iter()
            .any(|e| e.contains("(deployment d2) deployment completed")),
        "{:?}",
        w.events
    );
}

#[test]
fn the_circuit_breaker_rolls_back_to_the_last_completed_deployment() {
    let mut w = World::new(5, 1024);
    w.service("web", 4, true);
    w.settle(5, true);
    w.deploy("web", "d2", TD2);
    // Revision 2 crashes at once, every time.
    for _ in 0..40 {
        w.now += 20_000;
        w.pass();
        if w.events.iter().any(|e| e.contains("deployment failed")) {
            break;
        }
        let now = w.now;
        let mut failed = Vec::new();
        for t in w.tasks.iter_mut() {
            if t.task_definition == TD2 && t.live() && t.desired_status == TaskStatus::Running {
                t.last_status = TaskStatus::Stopped;
                t.desired_status = TaskStatus::Stopped;
                t.stopped_at = Some(now);
                t.failed = true;
                t.failure_counted = true;
                failed.push(t.clone());
            }
        }
        for t in &failed {
            count_failure(w.svc("web"), t, now);
        }
        w.agents(true);
    }
    // ECS's threshold for 4 tasks is 3; all 4 started at once and failed.
    assert!(
        w.events.iter().any(|e| e.contains("(deployment d2) deployment failed: tasks failed to start (4 failed; the circuit breaker's threshold is 3)")),
        "{:?}",
        w.events
    );
    let s = w.svc("web").clone();
    assert_eq!(s.primary().unwrap().task_definition, TD1, "rolled back");
    assert!(
        w.events
            .iter()
            .any(|e| e.contains("deployment failed: tasks failed to start")),
        "{:?}",
        w.events
    );
    assert!(
        w.events
            .iter()
            .any(|e| e.contains("rolling back to deployment")),
        "{:?}",
        w.events
    );
    // The old tasks never stopped: 4 healthy on revision 1 throughout.
    assert_eq!(w.running(TD1), 4);
    w.settle(10, true);
    assert_eq!((w.running(TD1), w.running(TD2)), (4, 0));
}

#[test]
fn a_draining_instance_loses_its_tasks_only_after_replacements_are_healthy() {
    let mut w = World::new(3, 1024);
    w.service("web", 3, true);
    w.settle(5, true);
    assert_eq!(w.per_instance(), vec![1, 1, 1]);
    w.instances[0].status = "DRAINING".into();
    w.now += 1000;
    w.pass();
    // The replacement is placed elsewhere and the old task still runs.
    let on_drained: Vec<&TaskRec> = w
        .tasks
        .iter()
        .filter(|t| t.container_instance == "arn:ci/i-0" && t.live())
        .collect();
    assert_eq!(on_drained.len(), 1);
    assert_eq!(on_drained[0].desired_status, TaskStatus::Running);
    assert_eq!(w.running(TD1), 4);
    w.settle(10, true);
    assert_eq!(w.per_instance()[0], 0);
    assert_eq!(w.running(TD1), 3);
    assert!(w.tasks.iter().any(|t| t.stopped_reason.as_deref()
        == Some("Container instance is draining: task replaced elsewhere")));
}

#[test]
fn a_silent_instance_loses_its_tasks_after_the_grace_only() {
    let mut w = World::new(3, 1024);
    w.service("web", 3, false);
    w.settle(5, true);
    // i-0 goes silent; the others keep polling.
    let silent_since = w.now;
    for _ in 0..10 {
        w.now += 30_000;
        for i in w.instances.iter_mut().skip(1) {
            i.last_seen_at = w.now;
        }
        w.pass();
        w.agents(true);
        if w.now - silent_since < 300_000 {
            assert_eq!(w.per_instance()[0], 1, "still its task within the grace");
        }
    }
    assert_eq!(w.per_instance()[0], 0);
    assert_eq!(w.running(TD1), 3);
    let given_up = w
        .tasks
        .iter()
        .find(|t| t.container_instance == "arn:ci/i-0")
        .unwrap();
    assert!(given_up
        .stopped_reason
        .as_deref()
        .unwrap()
        .contains("has not reached the control endpoint for 300s"));
}

#[test]
fn nothing_is_given_up_while_no_instance_is_heard_from() {
    let mut w = World::new(3, 1024);
    w.service("web", 3, false);
    w.settle(5, true);
    // Every instance silent for twice the grace: the endpoint, not three
    // hosts at once, is the likely cause.
    for _ in 0..20 {
        w.now += 30_000;
        w.pass();
    }
    assert_eq!(w.per_instance(), [1, 1, 1], "nothing given up");
    assert!(w.tasks.iter().all(|t| t.stopped_reason.is_none()));
    // One host polls again: the two still silent lose their tasks to it.
    w.instances[2].last_seen_at = w.now;
    w.pass();
    w.agents(true);
    assert_eq!(w.per_instance()[..2], [0, 0]);
    let given_up = w
        .tasks
        .iter()
        .filter(|t| {
            t.stopped_reason
                .as_deref()
                .is_some_and(|r| r.contains("has not reached the control endpoint"))
        })
        .count();
    assert_eq!(given_up, 2);
}

#[test]
fn an_unplaceable_task_is_reported_once_with_the_numbers() {
    let mut w = World::new(2, 200);
    w.service("web", 3, false);
    w.pass();
    w.agents(true);
    w.now += 1000;
    w.pass();
    assert_eq!(w.running(TD1), 2);
    let failures: Vec<&String> = w
        .events
        .iter()
        .filter(|e| e.contains("unable to place"))
        .collect();
    assert_eq!(failures.len(), 1, "{:?}", w.events);
    assert!(
        failures[0].contains("72 MiB free, the task needs 128 MiB"),
        "{}",
        failures[0]
    );
}

#[test]
fn a_daemon_service_follows_instances_in_and_out() {
    let mut w = World::new(2, 1024);
    w.service("agent", 0, false);
    w.svc("agent").scheduling_strategy = "DAEMON".into();
    w.settle(5, true);
    assert_eq!(w.per_instance(), vec![1, 1]);
    w.add_instance("i-new", 1024);
    w.settle(5, true);
    assert_eq!(w.per_instance(), vec![1, 1, 1]);
    assert_eq!(w.svc("agent").desired_count, 3);
    w.instances[1].status = "DRAINING".into();
    w.settle(5, true);
    assert_eq!(w.per_instance(), vec![1, 0, 1]);
    assert_eq!(w.svc("agent").desired_count, 2);
}

#[test]
fn a_crashing_service_backs_off() {
    let mut w = World::new(2, 1024);
    w.service("web", 1, false);
    w.svc("web")
        .deployment_configuration
        .deployment_circuit_breaker = None;
    let mut started_at = Vec::new();
    for _ in 0..60 {
        w.now += 500;
        let ch = w.pass();
        if !ch.new_tasks.is_empty() {
            started_at.push(w.now);
        }
        let now = w.now;
        let mut crashed = Vec::new();
        for t in w.tasks.iter_mut().filter(|t| t.live()) {
            t.last_status = TaskStatus::Stopped;
            t.desired_status = TaskStatus::Stopped;
            t.stopped_at = Some(now);
            crashed.push(t.clone());
        }
        for t in &crashed {
            count_failure(w.svc("web"), t, now);
        }
    }
    let gaps: Vec<i64> = started_at.windows(2).map(|p| p[1] - p[0]).collect();
    // At once, then 1 s, 2 s, 4 s, 8 s apart (rounded up to a pass).
    assert!(gaps.len() >= 4, "{gaps:?}");
    assert!(
        gaps[0] <= 1000 && gaps[1] >= 1000 && gaps[2] >= 2000 && gaps[3] >= 4000,
        "{gaps:?}"
    );
}
