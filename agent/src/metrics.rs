//! Process-wide counters for `/metrics`, and the Prometheus text rendering.
//!
//! Counters are plain atomics bumped where things happen (a reconcile, a
//! pull, a Docker error); gauges (tasks by state, per-service counts,
//! proxied requests) come from the supervisor's latest snapshot. The text
//! format is simple enough that a client library would cost more than it
//! gives.

use crate::status::Snapshot;
use dockhand_model::task::TaskStatus;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Task statuses counted in `dockhand_task_state_changes_total`.
const CHANGE_STATUSES: [TaskStatus; 4] = [
    TaskStatus::Pending,
    TaskStatus::Running,
    TaskStatus::Stopping,
    TaskStatus::Stopped,
];

pub struct Counters {
    pub reconciles: AtomicU64,
    pub reconcile_micros: AtomicU64,
    pub pulls_ok: AtomicU64,
    pub pulls_failed: AtomicU64,
    pub pull_micros: AtomicU64,
    pub docker_errors: AtomicU64,
    /// Per entry of [`CHANGE_STATUSES`].
    pub state_changes: [AtomicU64; 4],
}

pub static COUNTERS: Counters = Counters {
    reconciles: AtomicU64::new(0),
    reconcile_micros: AtomicU64::new(0),
    pulls_ok: AtomicU64::new(0),
    pulls_failed: AtomicU64::new(0),
    pull_micros: AtomicU64::new(0),
    docker_errors: AtomicU64::new(0),
    state_changes: [
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ],
};

pub fn reconciled(took: Duration) {
    COUNTERS.reconciles.fetch_add(1, Ordering::Relaxed);
    COUNTERS
        .reconcile_micros
        .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
}

pub fn pulled(ok: bool, took: Duration) {
    let c = if ok {
        &COUNTERS.pulls_ok
    } else {
        &COUNTERS.pulls_failed
    };
    c.fetch_add(1, Ordering::Relaxed);
    COUNTERS
        .pull_micros
        .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
}

/// A task state change was published.
pub fn state_change(status: TaskStatus) {
    if let Some(i) = CHANGE_STATUSES.iter().position(|s| *s == status) {
        COUNTERS.state_changes[i].fetch_add(1, Ordering::Relaxed);
    }
}

pub fn docker_error() {
    COUNTERS.docker_errors.fetch_add(1, Ordering::Relaxed);
}

/// Escapes a label value for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per route (`service`, `route`: the loadBalancers index): answers by
/// status class and the latency histogram (request read to answer sent).
fn route_metrics(o: &mut String, routes: &[dockhand_proxy::RouteMetrics]) {
    const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let _ = writeln!(o, "# HELP dockhand_proxy_route_requests_total Answers per route by status class.\n# TYPE dockhand_proxy_route_requests_total counter");
    for r in routes {
        for (class, n) in CLASSES.iter().zip(r.by_class) {
            let _ = writeln!(
                o,
                "dockhand_proxy_route_requests_total{{service=\"{}\",route=\"{}\",code=\"{class}\"}} {n}",
                esc(&r.service),
                r.index
            );
        }
    }
    let _ = writeln!(o, "# HELP dockhand_proxy_route_request_duration_seconds Time from a request read to its answer sent, per route.\n# TYPE dockhand_proxy_route_request_duration_seconds histogram");
    for r in routes {
        let labels = format!("service=\"{}\",route=\"{}\"", esc(&r.service), r.index);
        for (le, n) in dockhand_proxy::LATENCY_BUCKETS.iter().zip(r.latency) {
            let _ = writeln!(
                o,
                "dockhand_proxy_route_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
            );
        }
        let count = r.latency[dockhand_proxy::LATENCY_BUCKETS.len()];
        let _ = writeln!(o, "dockhand_proxy_route_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}\ndockhand_proxy_route_request_duration_seconds_sum{{{labels}}} {}\ndockhand_proxy_route_request_duration_seconds_count{{{labels}}} {count}", r.latency_sum_seconds);
    }
}

/// The Prometheus text exposition (version 0.0.4), with the proxy's live
/// counts.
pub fn render(s: &Snapshot, proxy: &dockhand_proxy::Proxy) -> String {
    let proxied = |svc: &str| proxy.requests(svc);
    let mut o = String::new();
    let c = &COUNTERS;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let secs = |micros: u64| micros as f64 / 1e6;
    let _ = writeln!(o, "# HELP dockhand_reconciles_total Reconcile passes run.\n# TYPE dockhand_reconciles_total counter\ndockhand_reconciles_total {}", get(&c.reconciles));
    let _ = writeln!(o, "# HELP dockhand_reconcile_duration_seconds Time spent reconciling.\n# TYPE dockhand_reconcile_duration_seconds summary\ndockhand_reconcile_duration_seconds_sum {}\ndockhand_reconcile_duration_seconds_count {}", secs(get(&c.reconcile_micros)), get(&c.reconciles));
    let _ = writeln!(o, "# HELP dockhand_image_pulls_total Image pulls by result.\n# TYPE dockhand_image_pulls_total counter\ndockhand_image_pulls_total{{result=\"success\"}} {}\ndockhand_image_pulls_total{{result=\"failure\"}} {}", get(&c.pulls_ok), get(&c.pulls_failed));
    let _ = writeln!(o, "# HELP dockhand_image_pull_duration_seconds Time spent pulling images.\n# TYPE dockhand_image_pull_duration_seconds summary\ndockhand_image_pull_duration_seconds_sum {}\ndockhand_image_pull_duration_seconds_count {}", secs(get(&c.pull_micros)), get(&c.pulls_ok) + get(&c.pulls_failed));
    let _ = writeln!(o, "# HELP dockhand_docker_errors_total Docker API calls that failed.\n# TYPE dockhand_docker_errors_total counter\ndockhand_docker_errors_total {}", get(&c.docker_errors));

    let _ = writeln!(o, "# HELP dockhand_task_state_changes_total Task state changes published, by the status changed to.\n# TYPE dockhand_task_state_changes_total counter");
    for (status, n) in CHANGE_STATUSES.iter().zip(&c.state_changes) {
        let _ = writeln!(
            o,
            "dockhand_task_state_changes_total{{status=\"{status}\"}} {}",
            get(n)
        );
    }
    // Both from one reading, so the threads' add up to the total.
    let per_thread = proxy.thread_connections();
    let _ = writeln!(o, "# HELP dockhand_proxy_connections Client connections open on the proxy.\n# TYPE dockhand_proxy_connections gauge\ndockhand_proxy_connections {}", per_thread.iter().sum::<usize>());
    let _ = writeln!(o, "# HELP dockhand_proxy_thread_connections Client connections open on each proxy thread (DOCKHAND_PROXY_THREADS).\n# TYPE dockhand_proxy_thread_connections gauge");
    for (thread, n) in per_thread.iter().enumerate() {
        let _ = writeln!(
            o,
            "dockhand_proxy_thread_connections{{thread=\"{thread}\"}} {n}"
        );
    }
    let _ = writeln!(o, "# HELP dockhand_proxy_connections_moved_total Client connections handed from one proxy thread to a less busy one, when accepted or between two keep-alive requests.\n# TYPE dockhand_proxy_connections_moved_total counter\ndockhand_proxy_connections_moved_total {}", proxy.connections_moved());
    let _ = writeln!(o, "# HELP dockhand_proxy_connections_rejected_total Client connections closed at once because their address had DOCKHAND_PROXY_MAX_CONNECTIONS_PER_CLIENT open.\n# TYPE dockhand_proxy_connections_rejected_total counter\ndockhand_proxy_connections_rejected_total {}", proxy.rejected_connections());
    let _ = writeln!(o, "# HELP dockhand_proxy_access_log_dropped_total Access log lines lost because the writer fell behind.\n# TYPE dockhand_proxy_access_log_dropped_total counter\ndockhand_proxy_access_log_dropped_total {}", proxy.access_log_dropped());
    route_metrics(&mut o, &proxy.route_metrics());
    let mut by_state: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for t in &s.tasks {
        *by_state.entry((t.service.as_str(), t.known)).or_default() += 1;
    }
    let _ = writeln!(
        o,
        "# HELP dockhand_tasks Tasks by service and known status.\n# TYPE dockhand_tasks gauge"
    );
    for ((service, state), n) in by_state {
        let _ = writeln!(
            o,
            "dockhand_tasks{{service=\"{}\",state=\"{state}\"}} {n}",
            esc(service)
        );
    }
    let restarts: i64 = s
        .tasks
        .iter()
        .flat_map(|t| &t.containers)
        .map(|c| c.restart_count)
        .sum();
    let _ = writeln!(o, "# HELP dockhand_container_restarts Docker restart counts summed over this host's task containers.\n# TYPE dockhand_container_restarts gauge\ndockhand_container_restarts {restarts}");
    for (metric, help, kind) in [
        (
            "dockhand_service_desired_tasks",
            "Tasks a service wants.",
            "gauge",
        ),
        ("dockhand_service_running_tasks", "Tasks running.", "gauge"),
        (
            "dockhand_service_healthy_tasks",
            "Tasks passing their checks.",
            "gauge",
        ),
        (
            "dockhand_service_task_failures_total",
            "Tasks that failed (crashed, failed to start, never passed checks).",
            "counter",
        ),
        (
            "dockhand_proxy_requests_total",
            "Requests the proxy routed to the service.",
            "counter",
        ),
    ] {
        let _ = writeln!(o, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for svc in &s.services {
            let v = match metric {
                "dockhand_service_desired_tasks" => u64::from(svc.desired),
                "dockhand_service_running_tasks" => u64::from(svc.running),
                "dockhand_service_healthy_tasks" => u64::from(svc.healthy),
                "dockhand_service_task_failures_total" => svc.total_failures,
                _ => proxied(&svc.name),
            };
            let _ = writeln!(o, "{metric}{{service=\"{}\"}} {v}", esc(&svc.name));
        }
    }
    o
}
