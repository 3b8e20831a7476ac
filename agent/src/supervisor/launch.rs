//! Placing and launching a task: resources and ports are checked and
//! granted, the task's record is saved before any container carries its id,
//! and an owned op pulls, creates and starts its containers in `dependsOn`
//! order.

use super::pacing::{Pacer, Pulls};
use super::{short, OpDone, OpKind, Supervisor};
use crate::config::PullBehavior;
use crate::containers::TaskLaunch;
use crate::engine::{ContainerSpec, Engine, Health, RunState};
use crate::ports::check_fit;
use crate::router::Router;
use crate::store::{random_hex, DesiredStatus, TaskRecord};
use crate::task::TaskObs;
use dockhand_model::taskdef::{DependencyCondition, NetworkMode};
use dockhand_model::ServiceSpec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a launch polls a dependency's state while waiting on it.
const DEPENDENCY_POLL: Duration = Duration::from_millis(200);

/// One container ready to be created by a launch op.
pub(super) struct Prepared {
    name_in_task: String,
    spec: ContainerSpec,
    depends_on: Vec<(String, DependencyCondition)>,
}

/// How a launch pulls images and paces its engine calls.
#[derive(Clone)]
struct PullSettings {
    behavior: PullBehavior,
    timeout: Duration,
    docker_config: std::path::PathBuf,
    pulls: Arc<Pulls>,
    pacer: Arc<Pacer>,
}

impl<E: Engine, R: Router> Supervisor<E, R> {
    /// Host ports held by live tasks and by launches in flight.
    fn ports_in_use(&self, tasks: &BTreeMap<String, TaskObs>) -> BTreeSet<u16> {
        let mut used: BTreeSet<u16> = tasks.values().flat_map(|t| t.host_ports()).collect();
        used.extend(self.granted.values().flatten());
        used
    }

    /// Free (memory MiB, CPU units) after every task that is not stopped.
    /// Reservations come from labels (untrusted) or specs; the arithmetic
    /// is wide enough that no value can wrap.
    fn free_resources(&self, tasks: &BTreeMap<String, TaskObs>) -> (i128, i128) {
        let mut mem =
            i128::from(self.capacity.memory_mib) - i128::from(self.cfg.reserved_memory_mib);
        let mut cpu = i128::from(self.capacity.cpu_units);
        for (id, rec) in &self.store.state.tasks {
            let counts = rec.desired == DesiredStatus::Running
                || tasks.get(id).is_some_and(TaskObs::any_alive);
            if !counts {
                continue;
            }
            let managed = self.desired.managed.as_ref().and_then(|m| m.tasks.get(id));
            let (m, c) = match tasks.get(id) {
                Some(t) => t.reservation(),
                None => self
                    .desired
                    .services
                    .get(&rec.service)
                    .map(|s| &s.task_definition)
                    .or(managed.map(|m| &m.task_definition))
                    .map(|td| (td.memory_mib(), td.cpu_units()))
                    .unwrap_or((0, 0)),
            };
            mem -= i128::from(m);
            cpu -= i128::from(c);
        }
        (mem, cpu)
    }

    /// Places one new task of `spec` and spawns its launch.
    pub(super) fn start_task(
        &mut self,
        spec: &ServiceSpec,
        revision: u32,
        digest: &str,
        tasks: &BTreeMap<String, TaskObs>,
    ) -> Result<(), String> {
        self.start_task_as(spec, revision, digest, tasks, None)
    }

    /// Places one new task of `spec` and spawns its launch, with the task
    /// id given (managed mode: the control endpoint's) or a new one.
    pub(super) fn start_task_as(
        &mut self,
        spec: &ServiceSpec,
        revision: u32,
        digest: &str,
        tasks: &BTreeMap<String, TaskObs>,
        id: Option<(&str, &str)>,
    ) -> Result<(), String> {
        let def = &spec.task_definition;
        let (free_mem, free_cpu) = self.free_resources(tasks);
        let mut in_use = self.ports_in_use(tasks);
        // validate() bounds ports to 1-65535.
        let port = |p: i64| u16::try_from(p).unwrap_or(0);
        let static_ports: Vec<(u16, &str)> = def
            .container_definitions
            .iter()
            .flat_map(|c| c.port_mappings.iter())
            .filter_map(|pm| {
                let proto = pm.protocol.unwrap_or_default().as_str();
                match (def.network_mode, pm.host_port) {
                    (NetworkMode::Host, _) => Some((port(pm.container_port), proto)),
                    (_, Some(p)) if p > 0 => Some((port(p), proto)),
                    _ => None,
                }
            })
            .collect();
        check_fit(
            def.memory_mib(),
            free_mem,
            def.cpu_units(),
            free_cpu,
            &static_ports,
            &in_use,
            &self.cfg.reserved_ports,
        )?;

        let mut dynamic = BTreeMap::new();
        let mut granted: BTreeSet<u16> = static_ports.iter().map(|p| p.0).collect();
        if def.network_mode == NetworkMode::Bridge {
            for (i, c) in def.container_definitions.iter().enumerate() {
                for (j, pm) in c.port_mappings.iter().enumerate() {
                    if pm.host_port.unwrap_or(0) == 0 {
                        let proto = pm.protocol.unwrap_or_default().as_str();
                        let port = self.ports.allocate(proto, &in_use).ok_or_else(|| {
                            format!(
                                "no free host port in ECS_DYNAMIC_HOST_PORT_RANGE {}-{}",
                                self.cfg.dynamic_port_range.0, self.cfg.dynamic_port_range.1
                            )
                        })?;
                        in_use.insert(port);
                        granted.insert(port);
                        dynamic.insert((i, j), port);
                    }
                }
            }
        }

        let (task_id, task_arn) = match id {
            Some((id, arn)) => (id.to_string(), arn.to_string()),
            None => {
                let id = random_hex(16);
                let arn = crate::status::task_arn(&self.cfg.cluster, &id);
                (id, arn)
            }
        };
        let launch = TaskLaunch {
            instance: &self.store.state.instance_id,
            cluster: &self.cfg.cluster,
            service: &spec.service_name,
            task_id: &task_id,
            task_arn: &task_arn,
            revision,
            digest,
            def,
            bind_address: self.cfg.port_bind_address,
            default_stop_timeout: self.cfg.container_stop_timeout,
            dynamic_ports: &dynamic,
        };
        // validate() rejected cycles, so an order exists.
        let order = def.start_order().unwrap_or_default();
        let prepared: Vec<Prepared> = order
            .iter()
            .enumerate()
            .map(|(pos, &i)| {
                let c = &def.container_definitions[i];
                Prepared {
                    name_in_task: c.name.clone(),
                    spec: launch.container_spec(i, pos),
                    depends_on: c
                        .depends_on
                        .iter()
                        .map(|d| (d.container_name.clone(), d.condition))
                        .collect(),
                }
            })
            .collect();

        self.store.state.tasks.insert(
            task_id.clone(),
            TaskRecord {
                service: spec.service_name.clone(),
                family: def.family.clone(),
                revision,
                digest: digest.to_string(),
                desired: DesiredStatus::Running,
                stop_reason: None,
                remove_when_stopped: false,
                crash_counted: false,
                created_at_ms: self.now_ms(),
                restarts: BTreeMap::new(),
            },
        );
        // The record is durable before any container carries the task id.
        self.save();
        let ports_text: Vec<String> = dynamic.values().map(u16::to_string).collect();
        self.event(
            &spec.service_name,
            format!(
                "starting task {} (revision {revision}{})",
                short(&task_id),
                if ports_text.is_empty() {
                    String::new()
                } else {
                    format!(", host ports {}", ports_text.join(","))
                }
            ),
        );
        let images: Vec<String> = def
            .container_definitions
            .iter()
            .map(|c| c.image.clone())
            .collect();
        self.track_images(images.iter().map(String::as_str));
        self.inflight.insert(task_id.clone(), OpKind::Launch);
        self.launched_here.insert(task_id.clone());
        self.granted.insert(task_id.clone(), granted);
        let engine = self.engine.clone();
        let pull = PullSettings {
            behavior: self.cfg.image_pull_behavior,
            timeout: self.cfg.image_pull_timeout,
            docker_config: self.cfg.docker_config_dir.clone(),
            pulls: Arc::clone(&self.pulls),
            pacer: Arc::clone(&self.pacer),
        };
        let start_timeout = self.cfg.container_start_timeout;
        self.ops.spawn(async move {
            let result = launch_task(&engine, prepared, &pull, start_timeout).await;
            OpDone {
                task: task_id,
                kind: OpKind::Launch,
                result,
            }
        });
        Ok(())
    }
}

/// Creates a task's containers, then starts them in `dependsOn` order.
/// Idempotent: a container that already exists (a launch resumed after an
/// agent restart) is used as it is.
async fn launch_task<E: Engine>(
    engine: &E,
    prepared: Vec<Prepared>,
    pull: &PullSettings,
    start_timeout: Duration,
) -> Result<(), String> {
    let mut ids: HashMap<String, String> = HashMap::new();
    for p in &prepared {
        ensure_image(engine, &p.spec.image, pull).await?;
        let id = match pull.pacer.run(engine.create(p.spec.clone())).await {
            Ok(id) => id,
            Err(e) if e.status() == Some(409) => p.spec.name.clone(),
            Err(e) => return Err(format!("create container {}: {e}", p.name_in_task)),
        };
        ids.insert(p.name_in_task.clone(), id);
    }
    for p in &prepared {
        for (dep, condition) in &p.depends_on {
            let dep_id = ids.get(dep).cloned().unwrap_or_default();
            wait_for(engine, dep, &dep_id, *condition, start_timeout).await?;
        }
        let id = ids.get(&p.name_in_task).cloned().unwrap_or_default();
        pull.pacer
            .run(engine.start(&id))
            .await
            .map_err(|e| format!("start container {}: {e}", p.name_in_task))?;
    }
    Ok(())
}

/// ECS pull semantics, so a host with a cached image keeps working when the
/// registry does not answer (`default`), or never asks it (`prefer-cached`).
async fn ensure_image<E: Engine>(
    engine: &E,
    image: &str,
    pull: &PullSettings,
) -> Result<(), String> {
    let present = engine
        .image_present(image)
        .await
        .map_err(|e| format!("inspect image {image}: {e}"))?;
    let should_pull = match pull.behavior {
        PullBehavior::Always | PullBehavior::Default => true,
        PullBehavior::Once | PullBehavior::PreferCached => !present,
    };
    if !should_pull {
        return Ok(());
    }
    // One pull per image at a time; launches of the same image share it.
    let pulled = pull
        .pulls
        .pull(image, || async {
            let started = Instant::now();
            let credentials = crate::registry::credentials_for(image, &pull.docker_config);
            tracing::info!(
                image,
                with_credentials = credentials.is_some(),
                "pulling image"
            );
            let pulled = engine.pull(image, pull.timeout, credentials).await;
            crate::metrics::pulled(pulled.is_ok(), started.elapsed());
            if pulled.is_ok() {
                tracing::info!(
                    image,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "pulled image"
                );
            }
            pulled
        })
        .await;
    match pulled {
        Ok(()) => Ok(()),
        Err(e) if present && pull.behavior == PullBehavior::Default => {
            tracing::warn!(image, cause = %e, "pull failed; using the cached image");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Waits until container `name` meets `condition`, polling the engine.
async fn wait_for<E: Engine>(
    engine: &E,
    name: &str,
    id: &str,
    condition: DependencyCondition,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let c = engine
            .inspect(id)
            .await
            .map_err(|e| format!("inspect dependency {name}: {e}"))?;
        let (exited, code) = match c.state {
            RunState::Exited { code, .. } => (true, code),
            _ => (false, -1),
        };
        let started = c.state == RunState::Running || exited;
        let done = match condition {
            DependencyCondition::Start => started,
            DependencyCondition::Complete => exited,
            DependencyCondition::Success if exited && code != 0 => {
                return Err(format!(
                    "dependency {name} exited with code {code}, SUCCESS required"
                ))
            }
            DependencyCondition::Success => exited,
            DependencyCondition::Healthy => {
                if exited {
                    return Err(format!(
                        "dependency {name} exited with code {code} before becoming HEALTHY"
                    ));
                }
                c.health == Health::Healthy
            }
        };
        if done {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "dependency {name} did not reach {condition:?} within {}s (ECS_CONTAINER_START_TIMEOUT)",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(DEPENDENCY_POLL).await;
    }
}
