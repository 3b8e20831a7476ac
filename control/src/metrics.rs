//! API call latencies, by operation: what `bench/control.sh` reads from
//! `GET /metrics` (p50 and p99 under load) and what an operator graphs.
//! A fixed set of latency buckets per operation, counted with atomics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Bucket upper bounds, milliseconds.
const BOUNDS_MS: [u64; 16] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000, 5000,
];

struct Histogram {
    buckets: [AtomicU64; 17],
    errors: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: AtomicU64::new(0),
        }
    }
}

fn table() -> &'static Mutex<BTreeMap<String, &'static Histogram>> {
    static T: OnceLock<Mutex<BTreeMap<String, &'static Histogram>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Records one call of `target` (the `X-Amz-Target` header) that took
/// `took`. Operations this endpoint does not have count as `unknown`.
pub fn api_call(target: &str, took: Duration, ok: bool) {
    let op = target.rsplit('.').next().unwrap_or(target);
    let known = crate::api::OPERATIONS.iter().any(|(name, _)| *name == op)
        || ["Poll", "ReportTaskStates"].contains(&op);
    let op = if known { op } else { "unknown" };
    let h: &'static Histogram = {
        let mut t = table().lock().unwrap_or_else(|p| p.into_inner());
        match t.get(op) {
            Some(h) => h,
            None => {
                // One histogram per operation, for the process's life (a
                // fixed set of names, so a bounded number).
                let h: &'static Histogram = Box::leak(Box::new(Histogram::new()));
                t.insert(op.to_string(), h);
                h
            }
        }
    };
    let ms = took.as_micros() as f64 / 1000.0;
    let i = BOUNDS_MS
        .iter()
        .position(|b| ms <= *b as f64)
        .unwrap_or(BOUNDS_MS.len());
    h.buckets[i].fetch_add(1, Ordering::Relaxed);
    if !ok {
        h.errors.fetch_add(1, Ordering::Relaxed);
    }
}

static LEADER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process runs the scheduler (the lease, on PostgreSQL).
pub fn set_leader(leader: bool) {
    LEADER.store(leader, Ordering::Relaxed);
}

/// The Prometheus text of every operation's histogram, and whether this
/// replica schedules.
pub fn render() -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP dockhand_control_leader 1 if this replica runs the scheduler.\n# TYPE dockhand_control_leader gauge\ndockhand_control_leader {}",
        u8::from(LEADER.load(Ordering::Relaxed))
    );
    let _ = writeln!(o, "# HELP dockhand_control_api_seconds API calls by operation.\n# TYPE dockhand_control_api_seconds histogram");
    let t = table().lock().unwrap_or_else(|p| p.into_inner());
    for (op, h) in t.iter() {
        let mut cumulative = 0;
        for (i, b) in BOUNDS_MS.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "dockhand_control_api_seconds_bucket{{operation=\"{op}\",le=\"{}\"}} {cumulative}",
                *b as f64 / 1000.0
            );
        }
        cumulative += h.buckets[BOUNDS_MS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "dockhand_control_api_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            o,
            "dockhand_control_api_seconds_count{{operation=\"{op}\"}} {cumulative}"
        );
        let _ = writeln!(
            o,
            "dockhand_control_api_errors_total{{operation=\"{op}\"}} {}",
            h.errors.load(Ordering::Relaxed)
        );
    }
    o
}
