//! Where a task goes: ECS's task placement.
//!
//! A task can go to an instance that is ACTIVE and connected, satisfies
//! every constraint (`distinctInstance`; `memberOf` with a cluster query
//! language expression) and has the CPU, memory and static host ports the
//! task needs. Among those, the strategies pick, in order, each breaking
//! the ties of the one before: `spread` (by `instanceId`, `host` or
//! `attribute:NAME`: fewest tasks of the group on that value), `binpack`
//! (`cpu` or `memory`: least left after the task), `random`. When nothing
//! fits, the failure names the closest instance and the numbers, in ECS's
//! words made more precise.

use super::state::InstanceView;
use crate::query::Expr;
use crate::records::{PlacementConstraint, PlacementStrategy};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub enum Constraint {
    DistinctInstance,
    MemberOf(Expr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    InstanceId,
    Attribute(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    Random,
    Spread(Field),
    BinpackCpu,
    BinpackMemory,
}

/// ECS's limits: 10 constraints, 5 strategies.
pub const MAX_CONSTRAINTS: usize = 10;
pub const MAX_STRATEGIES: usize = 5;

/// Parses placement constraints; the error names the entry.
pub fn constraints(list: &[PlacementConstraint]) -> Result<Vec<Constraint>, String> {
    if list.len() > MAX_CONSTRAINTS {
        return Err(format!("placementConstraints: at most {MAX_CONSTRAINTS}"));
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| match c.kind.as_str() {
            "distinctInstance" => {
                if c.expression.as_deref().is_some_and(|e| !e.is_empty()) {
                    Err(format!(
                        "placementConstraints[{i}]: distinctInstance takes no expression"
                    ))
                } else {
                    Ok(Constraint::DistinctInstance)
                }
            }
            "memberOf" => {
                let e = c.expression.as_deref().ok_or_else(|| {
                    format!("placementConstraints[{i}]: memberOf needs an expression")
                })?;
                crate::query::parse(e)
                    .map(Constraint::MemberOf)
                    .map_err(|err| format!("placementConstraints[{i}].expression: {err}"))
            }
            other => Err(format!(
                "placementConstraints[{i}].type: {other:?} is not distinctInstance or memberOf"
            )),
        })
        .collect()
}

/// Parses placement strategies; the error names the entry.
pub fn strategies(list: &[PlacementStrategy]) -> Result<Vec<Strategy>, String> {
    if list.len() > MAX_STRATEGIES {
        return Err(format!("placementStrategy: at most {MAX_STRATEGIES}"));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let field = s.field.as_deref().unwrap_or("");
            match s.kind.as_str() {
                "random" => Ok(Strategy::Random),
                "spread" => match field {
                    "instanceId" | "host" => Ok(Strategy::Spread(Field::InstanceId)),
                    f => match f.strip_prefix("attribute:") {
                        Some(a) if !a.is_empty() => Ok(Strategy::Spread(Field::Attribute(a.to_string()))),
                        _ => Err(format!(
                            "placementStrategy[{i}].field: spread takes instanceId, host or attribute:NAME, got {f:?}"
                        )),
                    },
                },
                "binpack" => match field.to_ascii_lowercase().as_str() {
                    "cpu" => Ok(Strategy::BinpackCpu),
                    "memory" => Ok(Strategy::BinpackMemory),
                    f => Err(format!("placementStrategy[{i}].field: binpack takes cpu or memory, got {f:?}")),
                },
                other => Err(format!(
                    "placementStrategy[{i}].type: {other:?} is not random, spread or binpack"
                )),
            }
        })
        .collect()
}

/// The strategies a service uses when it names none: ECS's default for
/// services, spread over availability zones, then over instances.
pub fn service_default() -> Vec<Strategy> {
    vec![
        Strategy::Spread(Field::Attribute("ecs.availability-zone".into())),
        Strategy::Spread(Field::InstanceId),
    ]
}

/// What one task needs from an instance.
#[derive(Debug, Clone)]
pub struct Need {
    pub cpu: i64,
    pub memory: i64,
    /// Static host ports, with protocol.
    pub ports: Vec<(u16, String)>,
    /// The task's group (`service:NAME`), for spread and distinctInstance.
    pub group: String,
}

/// Why no instance took a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    /// ECS's failure reason code: `RESOURCE:MEMORY`, `AGENT`, …
    pub code: String,
    /// A sentence for the service's events.
    pub reason: String,
}

/// A small deterministic generator for `random` (seeded per pass).
pub struct Rng(pub u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Why instance `v` cannot take `need`: (code, detail, how close it came).
fn refuse(
    v: &InstanceView,
    need: &Need,
    constraints: &[Constraint],
) -> Option<(String, String, i64)> {
    let id = &v.rec.ec2_instance_id;
    if v.rec.status != "ACTIVE" {
        return Some((
            "STATUS".into(),
            format!("{id} is {}", v.rec.status),
            i64::MIN,
        ));
    }
    if !v.connected {
        return Some((
            "AGENT".into(),
            format!("{id} has no connected agent"),
            i64::MIN,
        ));
    }
    for c in constraints {
        match c {
            Constraint::DistinctInstance if v.has_group(&need.group) => {
                return Some((
                    "DistinctInstance placement constraint unsatisfied".into(),
                    format!("{id} already runs a task of {}", need.group),
                    i64::MIN + 1,
                ))
            }
            Constraint::MemberOf(e) if !e.matches(v) => {
                return Some((
                    "MemberOf placement constraint unsatisfied".into(),
                    format!("{id} does not match {e}"),
                    i64::MIN + 1,
                ))
            }
            _ => {}
        }
    }
    if v.free_memory < need.memory {
        return Some((
            "RESOURCE:MEMORY".into(),
            format!(
                "{id} has insufficient memory available: {} MiB free, the task needs {} MiB",
                v.free_memory.max(0),
                need.memory
            ),
            v.free_memory - need.memory,
        ));
    }
    if v.free_cpu < need.cpu {
        return Some((
            "RESOURCE:CPU".into(),
            format!(
                "{id} has insufficient CPU available: {} units free, the task needs {}",
                v.free_cpu.max(0),
                need.cpu
            ),
            v.free_cpu - need.cpu,
        ));
    }
    if let Some((p, proto)) = need.ports.iter().find(|p| v.used_ports.contains(p)) {
        return Some((
            "RESOURCE:PORTS".into(),
            format!("{id} has host port {p}/{proto} in use"),
            -1,
        ));
    }
    None
}

impl InstanceView {
    fn has_group(&self, g: &str) -> bool {
        self.groups.get(g).is_some_and(|n| *n > 0)
    }
}

/// Places up to `n` tasks needing `need`, charging each chosen instance.
/// Returns the chosen instance indexes, and why the rest could not go.
///
/// Each placement scans the instances once: what a strategy compares is
/// computed before the scan (tasks of the group per instance, the index
/// of each instance's attribute value), so the scan allocates nothing.
pub fn place(
    instances: &mut [InstanceView],
    need: &Need,
    n: usize,
    constraints: &[Constraint],
    strategies: &[Strategy],
    rng: &mut Rng,
) -> (Vec<usize>, Option<Unplaced>) {
    let mut chosen = Vec::with_capacity(n);
    let strategies = &strategies[..strategies.len().min(MAX_STRATEGIES)];
    // Tasks of the group on each instance.
    let mut in_group: Vec<i64> = instances
        .iter()
        .map(|v| v.groups.get(&need.group).copied().unwrap_or(0) as i64)
        .collect();
    // For spread by attribute: each instance's value (as an index), and
    // tasks of the group per value, per strategy.
    let mut value_of: Vec<Vec<usize>> = vec![Vec::new(); strategies.len()];
    let mut per_value: Vec<Vec<i64>> = vec![Vec::new(); strategies.len()];
    for (si, s) in strategies.iter().enumerate() {
        if let Strategy::Spread(Field::Attribute(a)) = s {
            let mut ids: HashMap<&str, usize> = HashMap::new();
            for (i, v) in instances.iter().enumerate() {
                let val = v.rec.attribute(a).unwrap_or("");
                let next = ids.len();
                let id = *ids.entry(val).or_insert(next);
                if id == per_value[si].len() {
                    per_value[si].push(0);
                }
                per_value[si][id] += in_group[i];
                value_of[si].push(id);
            }
        }
    }
    for _ in 0..n {
        let mut best: Option<([i64; MAX_STRATEGIES + 1], usize)> = None;
        let mut closest: Option<(i64, String, String)> = None;
        for (i, v) in instances.iter().enumerate() {
            if let Some((code, detail, nearness)) = refuse(v, need, constraints) {
                if closest.as_ref().is_none_or(|c| nearness > c.0) {
                    closest = Some((nearness, code, detail));
                }
                continue;
            }
            let mut key = [0i64; MAX_STRATEGIES + 1];
            for (si, s) in strategies.iter().enumerate() {
                key[si] = match s {
                    Strategy::Random => (rng.next_u64() >> 2) as i64,
                    Strategy::Spread(Field::InstanceId) => in_group[i],
                    Strategy::Spread(Field::Attribute(_)) => per_value[si][value_of[si][i]],
                    Strategy::BinpackCpu => v.free_cpu - need.cpu,
                    Strategy::BinpackMemory => v.free_memory - need.memory,
                };
            }
            key[strategies.len()] = i as i64;
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, i));
            }
        }
        let Some((_, i)) = best else {
            let unplaced = match closest {
                None => Unplaced {
                    code: "NO_INSTANCES".into(),
                    reason: "no container instances were found in the cluster".into(),
                },
                Some((_, code, detail)) => Unplaced {
                    reason: format!(
                        "no container instance met all of its requirements. The closest matching container-instance {detail}"
                    ),
                    code,
                },
            };
            return (chosen, Some(unplaced));
        };
        let v = &mut instances[i];
        v.free_cpu -= need.cpu;
        v.free_memory -= need.memory;
        for p in &need.ports {
            v.used_ports.insert(p.clone());
        }
        *v.groups.entry(need.group.clone()).or_default() += 1;
        v.running += 1;
        in_group[i] += 1;
        for si in 0..strategies.len() {
            if let Some(id) = value_of[si].get(i) {
                per_value[si][*id] += 1;
            }
        }
        chosen.push(i);
    }
    (chosen, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::InstanceRec;
    use dockhand_model::instance::{Attribute, Resource};

    fn instance(id: &str, mem: i64, az: &str) -> InstanceView {
        let rec = InstanceRec {
            arn: format!("arn:ci/{id}"),
            cluster: "c".into(),
            ec2_instance_id: id.into(),
            status: "ACTIVE".into(),
            status_reason: None,
            drained_by_agent: false,
            registered_at: 0,
            last_seen_at: 1000,
            registered_resources: vec![
                Resource::integer("CPU", 2048),
                Resource::integer("MEMORY", mem),
                Resource::string_set("PORTS", vec!["22".into()]),
            ],
            attributes: vec![
                Attribute::new("ecs.availability-zone", Some(az)),
                Attribute::new(
                    "ecs.instance-type",
                    Some(if mem > 1000 { "t2.small" } else { "t2.micro" }),
                ),
            ],
            version_info: Default::default(),
            desired_seq: 0,
            report_seq: 0,
            version: 1,
        };
        InstanceView::new(rec.last_seen_at, rec, (1000, 50_000, 300_000))
    }

    fn need(mem: i64) -> Need {
        Need {
            cpu: 0,
            memory: mem,
            ports: vec![],
            group: "service:web".into(),
        }
    }

    fn counts(v: &[InstanceView]) -> Vec<usize> {
        v.iter()
            .map(|i| i.groups.get("service:web").copied().unwrap_or(0))
            .collect()
    }

    #[test]
    fn spread_by_instance_evens_out() {
        let mut v: Vec<InstanceView> = (0..5)
            .map(|i| instance(&format!("i-{i}"), 1000, "a"))
            .collect();
        let (c, f) = place(&mut v, &need(128), 4, &[], &service_default(), &mut Rng(1));
        assert_eq!((c.len(), f), (4, None));
        assert_eq!(counts(&v), vec![1, 1, 1, 1, 0]);
        place(&mut v, &need(128), 6, &[], &service_default(), &mut Rng(1));
        assert_eq!(counts(&v), vec![2, 2, 2, 2, 2]);
    }

    #[test]
    fn spread_by_attribute_balances_zones_first() {
        let mut v = vec![
            instance("i-a1", 1000, "a"),
            instance("i-a2", 1000, "a"),
            instance("i-b1", 1000, "b"),
        ];
        place(&mut v, &need(64), 4, &[], &service_default(), &mut Rng(1));
        // Zone b has one instance, zone a two: 2 and 2 by zone.
        assert_eq!(counts(&v), vec![1, 1, 2]);
    }

    #[test]
    fn binpack_fills_one_instance_first() {
        let mut v = vec![instance("i-1", 1000, "a"), instance("i-2", 500, "a")];
        let (c, _) = place(
            &mut v,
            &need(200),
            3,
            &[],
            &[Strategy::BinpackMemory],
            &mut Rng(1),
        );
        assert_eq!(c, vec![1, 1, 0], "least memory left first");
    }

    #[test]
    fn distinct_instance_and_member_of() {
        let mut v: Vec<InstanceView> = (0..3)
            .map(|i| instance(&format!("i-{i}"), if i == 0 { 2000 } else { 500 }, "a"))
            .collect();
        let cs = constraints(&[PlacementConstraint {
            kind: "distinctInstance".into(),
            expression: None,
        }])
        .unwrap();
        let (c, f) = place(&mut v, &need(64), 4, &cs, &service_default(), &mut Rng(1));
        assert_eq!(c.len(), 3);
        assert_eq!(
            f.unwrap().code,
            "DistinctInstance placement constraint unsatisfied"
        );
        let cs = constraints(&[PlacementConstraint {
            kind: "memberOf".into(),
            expression: Some("attribute:ecs.instance-type =~ t2.small".into()),
        }])
        .unwrap();
        let mut v: Vec<InstanceView> = (0..3)
            .map(|i| instance(&format!("i-{i}"), if i == 0 { 2000 } else { 500 }, "a"))
            .collect();
        let (c, _) = place(&mut v, &need(64), 3, &cs, &service_default(), &mut Rng(1));
        assert_eq!(c, vec![0, 0, 0]);
    }

    #[test]
    fn failures_name_the_closest_instance_and_the_numbers() {
        let mut v = vec![instance("i-small", 96, "a"), instance("i-tiny", 32, "a")];
        let (c, f) = place(&mut v, &need(128), 1, &[], &service_default(), &mut Rng(1));
        assert!(c.is_empty());
        let f = f.unwrap();
        assert_eq!(f.code, "RESOURCE:MEMORY");
        assert_eq!(
            f.reason,
            "no container instance met all of its requirements. The closest matching container-instance i-small has insufficient memory available: 96 MiB free, the task needs 128 MiB"
        );
        let mut none: Vec<InstanceView> = vec![];
        assert_eq!(
            place(&mut none, &need(1), 1, &[], &[], &mut Rng(1))
                .1
                .unwrap()
                .code,
            "NO_INSTANCES"
        );
        let mut off = vec![instance("i-off", 4000, "a")];
        off[0].connected = false;
        assert_eq!(
            place(&mut off, &need(1), 1, &[], &[], &mut Rng(1))
                .1
                .unwrap()
                .code,
            "AGENT"
        );
    }

    #[test]
    fn static_ports_are_taken_once_per_instance() {
        let mut v = vec![instance("i-1", 4000, "a"), instance("i-2", 4000, "a")];
        let n = Need {
            ports: vec![(8080, "tcp".into())],
            ..need(64)
        };
        let (c, f) = place(&mut v, &n, 3, &[], &service_default(), &mut Rng(1));
        assert_eq!(c.len(), 2);
        assert_eq!(f.unwrap().code, "RESOURCE:PORTS");
        let reserved = Need {
            ports: vec![(22, "tcp".into())],
            ..need(64)
        };
        assert!(place(&mut v, &reserved, 1, &[], &[], &mut Rng(1))
            .0
            .is_empty());
    }

    #[test]
    fn bad_constraints_and_strategies_name_the_entry() {
        let e = strategies(&[PlacementStrategy {
            kind: "spread".into(),
            field: Some("zone".into()),
        }])
        .unwrap_err();
        assert!(e.starts_with("placementStrategy[0].field"), "{e}");
        let e = constraints(&[PlacementConstraint {
            kind: "memberOf".into(),
            expression: Some("attribute:x ==".into()),
        }])
        .unwrap_err();
        assert!(e.starts_with("placementConstraints[0].expression"), "{e}");
    }
}
