//! Managed mode: the control endpoint decides which tasks run here (counts,
//! rollouts, placement, replacements); the supervisor runs exactly those,
//! with the given task ids, drains and stops the others, and routes each
//! service's tasks with the routes the control endpoint sent. A task that
//! fails is reported and not replaced here: the control endpoint places
//! its replacement, on this host or another.

use super::{short, Supervisor};
use crate::desired::{Managed, ManagedTask};
use crate::engine::Engine;
use crate::router::Router;
use crate::store::DesiredStatus;
use crate::task::TaskObs;
use dockhand_model::ServiceSpec;
use std::collections::{BTreeMap, BTreeSet};

/// A spec to launch a managed task with (its service's routes matter only
/// to the router, which gets them from [`Managed::service_spec`]).
fn launch_spec(t: &ManagedTask) -> ServiceSpec {
    ServiceSpec {
        service_name: t.service.clone(),
        desired_count: None,
        scheduling_strategy: Default::default(),
        deployment_configuration: Default::default(),
        health_check_grace_period_seconds: 0,
        task_definition: t.task_definition.clone(),
        load_balancers: Vec::new(),
    }
}

impl<E: Engine, R: Router> Supervisor<E, R> {
    /// One step of managed mode, with the control endpoint's word known.
    pub(super) fn reconcile_managed(&mut self, m: &Managed, tasks: &BTreeMap<String, TaskObs>) {
        // Tasks no longer placed here, or asked to stop: drained, stopped,
        // removed.
        let stops: Vec<(String, String)> = self
            .store
            .state
            .tasks
            .iter()
            .filter(|(_, r)| r.desired == DesiredStatus::Running)
            .filter_map(|(id, _)| match m.tasks.get(id) {
                Some(t) if t.running => None,
                Some(t) => Some((
                    id.clone(),
                    t.stop_reason
                        .clone()
                        .unwrap_or_else(|| "stopped by the control endpoint".into()),
                )),
                None => Some((
                    id.clone(),
                    "no longer placed on this instance by the control endpoint".into(),
                )),
            })
            .collect();
        for (id, why) in stops {
            self.request_stop(&id, &why, true);
        }
        // Tasks placed here and not started yet. A task this agent saw end
        // is never started again under the same id: its end is reported,
        // and a replacement has a new id.
        self.ended.retain(|id| m.tasks.contains_key(id));
        let mut unplaceable = BTreeMap::new();
        for (id, t) in &m.tasks {
            if !t.running
                || self.store.state.tasks.contains_key(id)
                || self.inflight.contains_key(id)
                || self.ended.contains(id)
            {
                continue;
            }
            // The endpoint validated it at registration; one of another
            // version may not have, and launching assumes it. Not started
            // (and, running, not stopped: it is only never launched here).
            if let Err(errors) = t.task_definition.validate("taskDefinition") {
                let first = errors.first().map(ToString::to_string).unwrap_or_default();
                unplaceable.insert(
                    t.service.clone(),
                    format!("task {} cannot start here: its task definition is not valid for this agent: {first}", short(id)),
                );
                continue;
            }
            let digest = t.task_definition.digest();
            if let Err(why) = self.start_task_as(
                &launch_spec(t),
                t.revision,
                &digest,
                tasks,
                Some((id, &t.arn)),
            ) {
                unplaceable.insert(
                    t.service.clone(),
                    format!("task {} cannot start here: {why}", short(id)),
                );
            }
        }
        for (service, why) in unplaceable {
            if self.pending_reason.get(&service) != Some(&why) {
                self.event(&service, why.clone());
                self.pending_reason.insert(service, why);
            }
        }
        self.route_managed(m, tasks);
    }

    /// Managed mode with the control endpoint not answering: routes kept,
    /// nothing started or stopped for lack of word.
    pub(super) fn hold_managed(&mut self, m: &Managed, tasks: &BTreeMap<String, TaskObs>) {
        self.route_managed(m, tasks);
        let services: BTreeSet<String> = self
            .store
            .state
            .tasks
            .values()
            .map(|r| r.service.clone())
            .collect();
        for s in services {
            self.pending_reason.insert(
                s,
                "the control endpoint is not answering: tasks are held as they are (crashed containers restart in place)".into(),
            );
        }
    }

    /// Each service's routes, as the control endpoint sent them, onto its
    /// tasks running here.
    fn route_managed(&mut self, m: &Managed, tasks: &BTreeMap<String, TaskObs>) {
        let services: BTreeSet<String> = m
            .services
            .keys()
            .cloned()
            .chain(self.store.state.tasks.values().map(|r| r.service.clone()))
            .collect();
        for s in services {
            match m.service_spec(&s) {
                Some(spec) => self.route(&spec, tasks),
                None => self.router.set_routes(&s, &[]),
            }
        }
        self.pending_reason.retain(|s, why| {
            m.tasks.values().any(|t| &t.service == s) && why.contains("cannot start here")
        });
    }
}
