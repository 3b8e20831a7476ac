//! Dockhand's in-process reverse proxy.
//!
//! The agent owns both the containers and this proxy, so it can guarantee the
//! order that makes rollouts safe: a new task gets traffic only after its
//! health checks pass, and a task leaves rotation and drains before it is
//! stopped.
//!
//! ```text
//!  listeners (server.rs) ──► fast.rs + h1.rs: the common request as bytes
//!        │                      │ (anything else: hyper's server + forward.rs;
//!        │                      │  HTTP/2: http2/ + forward.rs)
//!        │                      │ route table lookup (route.rs)
//!        │                      │ pick a routable backend (least outstanding)
//!        │                      ▼
//!        │                 backend.rs: pooled keep-alive connection,
//!        │                      in-flight count, passive ejection
//!        ▼
//!  health checker per backend (health.rs) ──► HealthEvent ──► agent
//! ```
//!
//! The agent drives it through [`Proxy`]: it declares each service's routes
//! ([`Proxy::set_routes`]), registers each running task's published port
//! ([`Proxy::add_backend`]), reads health back ([`Proxy::task_health`]), and
//! before stopping a task calls [`Proxy::drain`].

mod backend;
mod fast;
mod forward;
mod h1;
mod health;
mod http2;
mod raw;
mod route;
mod server;
mod shard;
mod stats;
mod sync;
mod tls;
mod upstream;

use backend::Backend;
use bytes::Bytes;
use health::Transition;
use route::{Route, Table};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use sync::{lock, read, write};
use tokio::sync::mpsc;

pub use health::{HealthCheck, Matcher};
pub use route::{Algorithm, RouteSpec};
pub use stats::{AccessLog, RouteMetrics, LATENCY_BUCKETS};
pub use tls::{CertFiles, Certs, POLL as TLS_POLL};

/// The body type on both sides of the proxy: streamed, never buffered whole.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Any error a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Limits and timeouts, with the defaults documented in docs/proxy.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Connecting to a backend.
    pub connect_timeout: Duration,
    /// From request sent to the backend's response headers.
    pub response_timeout: Duration,
    /// A client keep-alive connection idle this long is closed; also the
    /// limit for a client to send its request headers.
    pub idle_timeout: Duration,
    /// Request line plus headers.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Open client connections; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections from one client IP address; more are closed at
    /// once, so one client cannot hold every connection.
    pub max_connections_per_client: usize,
    /// On shutdown, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
    /// The host's own health check (never routed to a task): 200 while the
    /// host takes traffic, 503 once it drains or shuts down.
    pub health_path: String,
    /// Offer HTTP/2 (ALPN `h2`) on the TLS listeners.
    pub http2: bool,
    /// Take prior-knowledge HTTP/2 (h2c) on the plain listeners.
    pub h2c: bool,
    /// Concurrent streams on one HTTP/2 connection.
    pub h2_max_streams: u32,
    /// The port HTTP-to-HTTPS redirects point at (443: none in the URL).
    pub https_port: u16,
    pub access_log: AccessLog,
    /// Threads serving client connections, each an event loop of its own
    /// (shard.rs).
    pub threads: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            max_connections_per_client: 1000,
            shutdown_grace: Duration::from_secs(30),
            health_path: DEFAULT_HEALTH_PATH.into(),
            http2: true,
            h2c: false,
            h2_max_streams: 100,
            https_port: 443,
            access_log: AccessLog::Off,
            threads: 1,
        }
    }
}

/// A backend's health changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub service: String,
    pub task: String,
    pub addr: SocketAddr,
    pub healthy: bool,
    /// Why it failed (`/health returned 500`, `timeout after 2s`,
    /// `connection refused`), or how it passed.
    pub reason: String,
}

pub(crate) struct Inner {
    /// Client connection permits (`max_connections`).
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
    /// Connections closed at once for the per-client cap.
    pub(crate) rejected: std::sync::atomic::AtomicU64,
    /// Client connections open now, per proxy thread.
    pub(crate) loads: Arc<shard::Loads>,
    table: RwLock<Arc<Table>>,
    /// (service, loadBalancers index) → route.
    routes: Mutex<BTreeMap<(String, usize), Arc<Route>>>,
    pub(crate) settings: Settings,
    events: mpsc::UnboundedSender<HealthEvent>,
    /// The host is draining: the health path answers 503.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// The same, for HTTP/2 connections waiting to send GOAWAY.
    pub(crate) draining_tx: tokio::sync::watch::Sender<bool>,
    pub(crate) certs: Option<Arc<Certs>>,
    /// The access log's queue, when on and serving.
    pub(crate) log: std::sync::OnceLock<stats::Log>,
}

/// The default host health check path, for a load balancer in front of
/// several hosts: 200 while the host takes traffic, 503 while it drains
/// (its tasks moving to other hosts before it shuts down). Any host name.
pub const DEFAULT_HEALTH_PATH: &str = "/dockhand/health";

impl Inner {
    pub(crate) fn table(&self) -> Arc<Table> {
        Arc::clone(&read(&self.table))
    }

    fn rebuild(&self, routes: &BTreeMap<(String, usize), Arc<Route>>) {
        let t = Table::new(routes.values().cloned().collect());
        *write(&self.table) = Arc::new(t);
        if let Some(certs) = &self.certs {
            let wanted = routes
                .values()
                .filter_map(|r| {
                    let spec = read(&r.spec);
                    spec.tls.clone().map(|f| (spec.hosts.clone(), f))
                })
                .collect();
            certs.set_routes(wanted);
        }
    }

    pub(crate) fn log(&self) -> Option<&stats::Log> {
        self.log.get()
    }

    pub(crate) fn report(&self, route: &Route, b: &Backend, t: Option<Transition>, reason: &str) {
        if let Some(t) = t {
            let healthy = t == Transition::BecameHealthy;
            if healthy {
                tracing::info!(service = %route.service, task = %b.task, addr = %b.addr, "backend healthy");
            } else {
                tracing::warn!(service = %route.service, task = %b.task, addr = %b.addr, reason, "backend unhealthy");
            }
            let _ = self.events.send(HealthEvent {
                service: route.service.clone(),
                task: b.task.clone(),
                addr: b.addr,
                healthy,
                reason: reason.to_string(),
            });
        }
    }

    pub(crate) fn eject(&self, route: &Route, b: &Backend, why: &str) {
        let t = b.eject(why, &route.spec().check);
        self.report(route, b, t, why);
    }
}

/// The proxy, shared between the agent and the listeners.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl Proxy {
    /// A proxy with no routes. Health changes are sent to `events`.
    pub fn new(settings: Settings, events: mpsc::UnboundedSender<HealthEvent>) -> Proxy {
        Proxy::with_certs(settings, events, None)
    }

    /// A proxy whose TLS listeners present `certs`.
    pub fn with_certs(
        settings: Settings,
        events: mpsc::UnboundedSender<HealthEvent>,
        certs: Option<Arc<Certs>>,
    ) -> Proxy {
        if let Some(c) = &certs {
            tokio::spawn(Certs::watch_files(Arc::downgrade(c)));
        }
        Proxy {
            inner: Arc::new(Inner {
                permits: Arc::new(tokio::sync::Semaphore::new(settings.max_connections.max(1))),
                rejected: std::sync::atomic::AtomicU64::new(0),
                loads: Arc::new(shard::Loads::new(settings.threads)),
                table: RwLock::new(Arc::new(Table::default())),
                routes: Mutex::new(BTreeMap::new()),
                settings,
                events,
                draining: std::sync::atomic::AtomicBool::new(false),
                draining_tx: tokio::sync::watch::Sender::new(false),
                certs,
                log: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Marks the host draining (or not): the health path answers 503, and
    /// HTTP/2 connections get GOAWAY (their clients reconnect, to another
    /// host behind the load balancer).
    pub fn set_draining(&self, draining: bool) {
        let was = self
            .inner
            .draining
            .swap(draining, std::sync::atomic::Ordering::AcqRel);
        if draining && !was {
            tracing::info!(
                path = %self.inner.settings.health_path,
                "host draining: its health check answers 503"
            );
        }
        self.inner.draining_tx.send_replace(draining);
    }

    /// Reads the certificate files again and reopens the access log file
    /// (SIGHUP).
    pub fn reload(&self) {
        if let Some(c) = &self.inner.certs {
            c.reload();
        }
        if let Some(l) = self.inner.log() {
            l.reopen();
        }
    }

    /// Each route's answers by status class and latency histogram.
    pub fn route_metrics(&self) -> Vec<RouteMetrics> {
        let routes = lock(&self.inner.routes);
        routes.values().map(|r| RouteMetrics::of(r)).collect()
    }

    /// Access log lines lost because the writer fell behind.
    pub fn access_log_dropped(&self) -> u64 {
        self.inner
            .log()
            .map_or(0, |l| l.dropped.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Declares a service's routes, one per `loadBalancers` entry. Existing
    /// routes keep their backends and health state; removed ones stop
    /// their checks.
    pub fn set_routes(&self, service: &str, specs: Vec<RouteSpec>) {
        let mut routes = lock(&self.inner.routes);
        let before: Vec<(String, usize)> =
            routes.keys().filter(|k| k.0 == service).cloned().collect();
        let mut changed = false;
        for (i, spec) in specs.iter().enumerate() {
            match routes.get(&(service.to_string(), i)) {
                Some(r) => {
                    if *read(&r.spec) != *spec {
                        *write(&r.spec) = spec.clone();
                        changed = true;
                    }
                }
                None => {
                    routes.insert(
                        (service.to_string(), i),
                        Arc::new(Route::new(service, i, spec.clone())),
                    );
                    changed = true;
                }
            }
        }
        for key in before {
            if key.1 >= specs.len() {
                if let Some(r) = routes.remove(&key) {
                    for b in r.backends() {
                        b.stop_checker();
                    }
                }
                changed = true;
            }
        }
        if changed {
            self.inner.rebuild(&routes);
        }
    }

    /// Registers `task`'s published port on a route (idempotent). New
    /// backends start unhealthy and are checked at once; `adopted` (a task
    /// found running by a restarted agent) needs one pass, not the
    /// threshold, so an agent restart does not starve a healthy service.
    pub fn add_backend(
        &self,
        service: &str,
        index: usize,
        task: &str,
        addr: SocketAddr,
        adopted: bool,
    ) {
        let route = {
            let routes = lock(&self.inner.routes);
            match routes.get(&(service.to_string(), index)) {
                Some(r) => Arc::clone(r),
                None => return,
            }
        };
        let spec = route.spec();
        {
            let backends = read(&route.backends);
            if backends.iter().any(|b| b.task == task && b.addr == addr) {
                return;
            }
        }
        let rise = if adopted {
            1
        } else {
            spec.check.healthy_threshold
        };
        let grace = if adopted { Duration::ZERO } else { spec.grace };
        let b = Arc::new(Backend::new(
            task.to_string(),
            addr,
            rise,
            grace,
            self.inner.settings.threads,
        ));
        write(&route.backends).push(Arc::clone(&b));
        tracing::debug!(service, task, %addr, "backend registered");
        let handle = tokio::spawn(health::check_loop(
            Arc::clone(&self.inner),
            route,
            Arc::clone(&b),
        ));
        *lock(&b.checker) = Some(handle);
    }

    /// Every backend of `task`, on every route.
    fn backends_of(&self, task: &str) -> Vec<(Arc<Route>, Arc<Backend>)> {
        let routes = lock(&self.inner.routes);
        let mut out = Vec::new();
        for r in routes.values() {
            for b in read(&r.backends).iter() {
                if b.task == task {
                    out.push((Arc::clone(r), Arc::clone(b)));
                }
            }
        }
        out
    }

    /// `Some(true)` when every backend of `task` is healthy and routable,
    /// `None` when it has no backends (no routes, or not registered yet).
    pub fn task_health(&self, task: &str) -> Option<bool> {
        let bs = self.backends_of(task);
        if bs.is_empty() {
            None
        } else {
            Some(bs.iter().all(|(_, b)| b.routable()))
        }
    }

    /// The last failure reason of any of `task`'s backends.
    pub fn task_failure(&self, task: &str) -> Option<String> {
        self.backends_of(task)
            .iter()
            .find_map(|(_, b)| if b.routable() { None } else { b.last_failure() })
    }

    /// Whether every backend registered so far has been checked once.
    pub fn all_checked_once(&self) -> bool {
        let routes = lock(&self.inner.routes);
        routes
            .values()
            .all(|r| read(&r.backends).iter().all(|b| b.checks_done() > 0))
    }

    /// Takes `task` out of rotation now and returns a future that waits for
    /// its in-flight requests (at most the route's deregistration delay,
    /// early when none), closes its upgraded connections, and forgets it.
    /// The future resolves to the requests still in flight at the end.
    pub fn drain(&self, task: &str) -> impl std::future::Future<Output = usize> + Send + 'static {
        let backends = self.backends_of(task);
        for (_, b) in &backends {
            b.start_draining();
        }
        async move {
            let mut left = 0;
            for (route, b) in &backends {
                let delay = route.spec().deregistration_delay;
                left += b.drain(delay).await;
                b.stop_checker();
                write(&route.backends).retain(|x| !Arc::ptr_eq(x, b));
            }
            left
        }
    }

    /// Forgets `task` at once (its containers are already gone).
    pub fn remove_task(&self, task: &str) {
        for (route, b) in self.backends_of(task) {
            b.start_draining();
            b.stop_checker();
            write(&route.backends).retain(|x| !Arc::ptr_eq(x, &b));
        }
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.inner.loads.counts().iter().sum()
    }

    /// Client connections open now on each proxy thread.
    pub fn thread_connections(&self) -> Vec<usize> {
        self.inner.loads.counts()
    }

    /// Client connections moved from one proxy thread to another so far
    /// (when accepted, or between two keep-alive requests).
    pub fn connections_moved(&self) -> u64 {
        self.inner.loads.moved()
    }

    /// Client connections closed at once because their address had too many.
    pub fn rejected_connections(&self) -> u64 {
        self.inner
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests routed to `service` so far, over all its routes.
    pub fn requests(&self, service: &str) -> u64 {
        let routes = lock(&self.inner.routes);
        routes
            .iter()
            .filter(|(k, _)| k.0 == service)
            .map(|(_, r)| r.requests.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// Serves on `listeners` (plain HTTP) and `tls_listeners` (TLS, with
    /// the certificates given to [`Proxy::with_certs`]) until `shutdown` is
    /// signaled, then stops accepting; each open connection finishes its
    /// in-flight request (within the shutdown grace period) and releases
    /// its clone of the watch, so the signaler's drain completes when the
    /// last is done. Clients are served on `settings.threads` threads of
    /// the proxy's own; this returns when the last connection has ended,
    /// and dropping it stops those threads with whatever still runs there.
    pub async fn serve(
        &self,
        listeners: Vec<tokio::net::TcpListener>,
        tls_listeners: Vec<tokio::net::TcpListener>,
        shutdown: drain::Watch,
    ) -> Result<(), String> {
        let tls = match (&self.inner.certs, tls_listeners.is_empty()) {
            (_, true) => None,
            (None, false) => return Err("TLS listeners need certificates".into()),
            (Some(c), false) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                c.server_config(self.inner.settings.http2)?,
            ))),
        };
        if let Some(log) = stats::Log::start(&self.inner.settings.access_log) {
            let _ = self.inner.log.set(log);
        }
        server::serve(
            Arc::clone(&self.inner),
            listeners,
            tls_listeners,
            tls,
            shutdown,
        )
        .await
    }
}
