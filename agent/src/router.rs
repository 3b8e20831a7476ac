//! The proxy, as the supervisor sees it: declare a service's routes,
//! register a running task's port, read health back, drain before a stop.
//!
//! [`Router`] is implemented by the in-process proxy (converting the
//! model's route settings into the proxy's types here, so neither the model
//! nor the proxy knows the other) and, in tests, by a fake whose health the
//! test sets.

use dockhand_model::route::{Algorithm, RouteSettings};
use dockhand_proxy::{HealthCheck, Matcher, RouteSpec};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A future the stop op awaits: the requests still in flight at its end.
pub type Drain = Pin<Box<dyn Future<Output = usize> + Send + 'static>>;

pub trait Router: Clone + Send + Sync + 'static {
    /// Declares a service's routes, one per `loadBalancers` entry.
    fn set_routes(&self, service: &str, routes: &[RouteSettings]);
    /// Registers a task's published port on route `index` (idempotent).
    /// `adopted`: found running by a restarted agent.
    fn add_backend(&self, service: &str, index: usize, task: &str, addr: SocketAddr, adopted: bool);
    /// `Some(true)` when every backend of the task passes its checks.
    fn task_health(&self, task: &str) -> Option<bool>;
    /// Why the task's checks fail, when they do.
    fn task_failure(&self, task: &str) -> Option<String>;
    /// Whether every registered backend has been checked once.
    fn all_checked_once(&self) -> bool;
    /// Takes the task out of rotation now; the future waits for its
    /// in-flight requests (bounded by the route's deregistration delay).
    fn drain(&self, task: &str) -> Drain;
    /// Forgets the task at once (its containers are gone).
    fn remove_task(&self, task: &str);
}

/// The model's route as the proxy's.
pub fn route_spec(r: &RouteSettings) -> RouteSpec {
    let h = &r.health_check;
    RouteSpec {
        hosts: r.hosts.clone(),
        path_prefix: r.path_prefix.clone(),
        check: HealthCheck {
            path: h.path.clone(),
            interval: h.interval,
            timeout: h.timeout,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
            matcher: Matcher::from_ranges(h.matcher.0.clone()),
        },
        deregistration_delay: r.deregistration_delay,
        tls: r
            .certificate
            .as_ref()
            .map(|(cert, key)| dockhand_proxy::CertFiles {
                cert: cert.into(),
                key: key.into(),
            }),
        redirect_https: r.redirect_https,
        backend_h2: r.http2_to_tasks,
        algorithm: match r.algorithm {
            Algorithm::LeastOutstanding => dockhand_proxy::Algorithm::LeastOutstanding,
            Algorithm::RoundRobin => dockhand_proxy::Algorithm::RoundRobin,
        },
        grace: r.grace,
    }
}

impl Router for dockhand_proxy::Proxy {
    fn set_routes(&self, service: &str, routes: &[RouteSettings]) {
        dockhand_proxy::Proxy::set_routes(self, service, routes.iter().map(route_spec).collect())
    }
    fn add_backend(
        &self,
        service: &str,
        index: usize,
        task: &str,
        addr: SocketAddr,
        adopted: bool,
    ) {
        dockhand_proxy::Proxy::add_backend(self, service, index, task, addr, adopted)
    }
    fn task_health(&self, task: &str) -> Option<bool> {
        dockhand_proxy::Proxy::task_health(self, task)
    }
    fn task_failure(&self, task: &str) -> Option<String> {
        dockhand_proxy::Proxy::task_failure(self, task)
    }
    fn all_checked_once(&self) -> bool {
        dockhand_proxy::Proxy::all_checked_once(self)
    }
    fn drain(&self, task: &str) -> Drain {
        Box::pin(dockhand_proxy::Proxy::drain(self, task))
    }
    fn remove_task(&self, task: &str) {
        dockhand_proxy::Proxy::remove_task(self, task)
    }
}
