//! What each request did: per-route counters for `/metrics` (requests by
//! status class, a latency histogram) and the optional access log.
//!
//! Counting is a few relaxed atomic adds per request. The access log is
//! off by default; when on, each request's line is formatted on its own
//! task and handed to one writer task through a bounded queue: a slow disk
//! never slows a request, and lines that find the queue full are counted
//! as dropped instead.

use crate::route::Route;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where the access log goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLog {
    #[default]
    Off,
    /// Standard output (the journal, under systemd).
    Stdout,
    /// Appended to this file; reopened on [`crate::Proxy::reload`] (SIGHUP),
    /// so logrotate can move it away.
    File(PathBuf),
}

/// Upper bounds of the latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Lines waiting for the writer, at most.
const QUEUE: usize = 16 * 1024;

#[derive(Default)]
pub(crate) struct RouteStats {
    /// 1xx to 5xx.
    classes: [AtomicU64; 5],
    /// Per bucket of [`LATENCY_BUCKETS`], plus one for slower (not
    /// cumulative here; made so when rendered).
    buckets: [AtomicU64; 13],
    micros: AtomicU64,
}

impl RouteStats {
    fn add(&self, status: u16, took: std::time::Duration) {
        if (100..600).contains(&status) {
            self.classes[usize::from(status / 100 - 1)].fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// A route's figures so far, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMetrics {
    pub service: String,
    /// The `loadBalancers` entry.
    pub index: usize,
    /// Answers by status class, `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub by_class: [u64; 5],
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], then `+Inf`.
    pub latency: [u64; 13],
    pub latency_sum_seconds: f64,
}

impl RouteMetrics {
    pub(crate) fn of(route: &Route) -> RouteMetrics {
        let s = &route.stats;
        let mut latency = [0u64; 13];
        let mut total = 0;
        for (i, b) in s.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            latency[i] = total;
        }
        RouteMetrics {
            service: route.service.clone(),
            index: route.index,
            by_class: std::array::from_fn(|i| s.classes[i].load(Ordering::Relaxed)),
            latency,
            latency_sum_seconds: s.micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// One finished request, as the access log tells it.
pub(crate) struct Record<'a> {
    pub started: Instant,
    pub client: SocketAddr,
    pub tls: bool,
    pub version: &'static str,
    pub method: &'a str,
    pub host: &'a str,
    pub target: &'a str,
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    pub route: Option<&'a Route>,
    pub task: Option<&'a str>,
}

/// The access log's queue, once the proxy serves.
pub(crate) struct Log {
    tx: mpsc::Sender<Vec<u8>>,
    pub(crate) dropped: AtomicU64,
    reopen: Arc<AtomicBool>,
}

impl Log {
    /// Starts the writer for `dest` (not [`AccessLog::Off`]).
    pub(crate) fn start(dest: &AccessLog) -> Option<Log> {
        let path = match dest {
            AccessLog::Off => return None,
            AccessLog::Stdout => None,
            AccessLog::File(path) => Some(path.clone()),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let again = Arc::clone(&reopen);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, path, again))
            .ok()?;
        Some(Log {
            tx,
            dropped: AtomicU64::new(0),
            reopen,
        })
    }

    pub(crate) fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    fn send(&self, r: &Record<'_>, took: std::time::Duration) {
        let line = format_line(r, took, std::time::SystemTime::now());
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer: a thread of its own (file writes block), one buffered
/// flush per batch of queued lines.
fn write_loop(mut rx: mpsc::Receiver<Vec<u8>>, path: Option<PathBuf>, reopen: Arc<AtomicBool>) {
    let open = |p: &PathBuf| -> Option<Box<dyn Write>> {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(Box::new(f)),
            Err(e) => {
                tracing::error!(path = %p.display(), cause = %e, "cannot open the access log; lines are lost until it opens");
                None
            }
        }
    };
    let mut out: Option<Box<dyn Write>> = match &path {
        Some(p) => open(p),
        None => Some(Box::new(std::io::stdout())),
    };
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(line) = rx.blocking_recv() {
        batch.extend_from_slice(&line);
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(l) => batch.extend_from_slice(&l),
                Err(_) => break,
            }
        }
        if let Some(p) = &path {
            if reopen.swap(false, Ordering::AcqRel) || out.is_none() {
                out = open(p);
            }
        }
        if let Some(w) = out.as_mut() {
            if w.write_all(&batch).and_then(|()| w.flush()).is_err() {
                out = None;
            }
        }
        batch.clear();
    }
}

/// One JSON object per line.
fn format_line(r: &Record<'_>, took: std::time::Duration, now: std::time::SystemTime) -> Vec<u8> {
    let v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(now).to_string(),
        "client": r.client.to_string(),
        "tls": r.tls,
        "proto": r.version,
        "method": r.method,
        "host": r.host,
        "path": r.target,
        "status": r.status,
        "bytes": r.bytes,
        "duration_ms": (took.as_secs_f64() * 1e6).round() / 1e3,
        "service": r.route.map(|x| x.service.as_str()),
        "route": r.route.map(|x| x.index),
        "task": r.task,
    });
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Counts a finished request on its route and logs it when the access
/// log is on.
pub(crate) fn record(log: Option<&Log>, r: &Record<'_>) {
    let took = r.started.elapsed();
    if let Some(route) = r.route {
        route.stats.add(r.status, took);
    }
    if let Some(log) = log {
        log.send(r, took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let route = Route::new("web", 0, crate::RouteSpec::default());
        route.stats.add(200, std::time::Duration::from_micros(800));
        route.stats.add(204, std::time::Duration::from_millis(30));
        route.stats.add(503, std::time::Duration::from_secs(20));
        route.stats.add(42, std::time::Duration::from_millis(1));
        let m = RouteMetrics::of(&route);
        assert_eq!(m.by_class, [0, 2, 0, 0, 1]);
        assert_eq!(m.latency[0], 2, "0.8 ms and 1 ms are within 1 ms");
        assert_eq!(m.latency[4], 2);
        assert_eq!(m.latency[5], 3, "30 ms is within 50 ms");
        assert_eq!(m.latency[11], 3);
        assert_eq!(m.latency[12], 4, "+Inf holds everything");
    }

    #[test]
    fn a_line_is_one_json_object_with_the_route_and_task() {
        let route = Route::new("web", 1, crate::RouteSpec::default());
        let r = Record {
            started: Instant::now(),
            client: "192.0.2.7:4000".parse().unwrap(),
            tls: true,
            version: "HTTP/2",
            method: "GET",
            host: "shop.example.com",
            target: "/a?\"b\"",
            status: 200,
            bytes: 1234,
            route: Some(&route),
            task: Some("task-1"),
        };
        let line = format_line(
            &r,
            std::time::Duration::from_micros(1870),
            std::time::UNIX_EPOCH,
        );
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["path"], "/a?\"b\"");
        assert_eq!(v["service"], "web");
        assert_eq!(v["route"], 1);
        assert_eq!(v["task"], "task-1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1234);
        assert_eq!(v["proto"], "HTTP/2");
        assert_eq!(v["duration_ms"], 1.87);
    }
}
