//! Routes: which requests go to which service's backends.
//!
//! A route matches an optional set of hosts (exact, or `*.example.com`) and
//! a path prefix on segment boundaries (`/api` matches `/api` and `/api/x`,
//! not `/apix`). The most specific route wins: an exact host beats a
//! wildcard, which beats any host; then the longest prefix.

use crate::backend::Backend;
use crate::health::HealthCheck;
use crate::sync::read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How a route spreads requests over its routable backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// ALB's `least_outstanding_requests`: the backend with the fewest
    /// requests in flight, ties taken in turn. The default.
    #[default]
    LeastOutstanding,
    /// ALB's `round_robin`.
    RoundRobin,
}

/// What the agent says a route is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Lower-case host names; empty matches any host.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub check: HealthCheck,
    pub deregistration_delay: Duration,
    pub algorithm: Algorithm,
    /// Before this long after registration a backend gets no traffic.
    pub grace: Duration,
    /// The certificate for `hosts` on the TLS listeners (else the default).
    pub tls: Option<crate::tls::CertFiles>,
    /// Plain-HTTP requests get a redirect to HTTPS.
    pub redirect_https: bool,
    /// The tasks speak HTTP/2 (prior knowledge): requests and health
    /// checks go to them over HTTP/2 (gRPC servers).
    pub backend_h2: bool,
}

impl Default for RouteSpec {
    fn default() -> Self {
        RouteSpec {
            hosts: Vec::new(),
            path_prefix: "/".into(),
            check: HealthCheck::default(),
            deregistration_delay: Duration::from_secs(30),
            algorithm: Algorithm::default(),
            grace: Duration::ZERO,
            tls: None,
            redirect_https: false,
            backend_h2: false,
        }
    }
}

pub(crate) struct Route {
    pub service: String,
    /// Which of the service's `loadBalancers` entries.
    pub index: usize,
    pub(crate) spec: RwLock<RouteSpec>,
    pub(crate) backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    /// Requests routed here (for metrics).
    pub(crate) requests: std::sync::atomic::AtomicU64,
    pub(crate) stats: crate::stats::RouteStats,
}

impl Route {
    pub(crate) fn new(service: &str, index: usize, spec: RouteSpec) -> Route {
        Route {
            service: service.to_string(),
            index,
            spec: RwLock::new(spec),
            backends: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            requests: std::sync::atomic::AtomicU64::new(0),
            stats: crate::stats::RouteStats::default(),
        }
    }

    pub fn spec(&self) -> RouteSpec {
        read(&self.spec).clone()
    }

    /// Specificity, highest first: (host class, prefix length).
    fn rank(&self) -> (u8, usize) {
        let s = read(&self.spec);
        let host_class = if s.hosts.is_empty() {
            0
        } else if s.hosts.iter().all(|h| h.starts_with("*.")) {
            1
        } else {
            2
        };
        (host_class, s.path_prefix.len())
    }

    /// Picks a routable backend not in `tried`.
    pub(crate) fn pick(
        &self,
        algorithm: Algorithm,
        tried: &[Arc<Backend>],
    ) -> Option<Arc<Backend>> {
        let backends = read(&self.backends);
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let candidates = (0..n)
            .map(|i| &backends[(start + i) % n])
            .filter(|b| b.routable() && !tried.iter().any(|t| Arc::ptr_eq(t, b)));
        match algorithm {
            Algorithm::RoundRobin => candidates.into_iter().next().cloned(),
            Algorithm::LeastOutstanding => candidates.min_by_key(|b| b.in_flight()).cloned(),
        }
    }

    /// The backend for an attempt: one not in `tried`, or, when every
    /// routable one was tried, any (a retry may reuse the only backend on a
    /// new connection).
    pub(crate) fn pick_attempt(
        &self,
        algorithm: Algorithm,
        tried: &[Arc<Backend>],
    ) -> Option<Arc<Backend>> {
        self.pick(algorithm, tried).or_else(|| {
            (!tried.is_empty())
                .then(|| self.pick(algorithm, &[]))
                .flatten()
        })
    }

    pub fn backends(&self) -> Vec<Arc<Backend>> {
        read(&self.backends).clone()
    }
}

/// `prefix` without its trailing slash; empty matches every path.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// All routes, most specific first, with what matching needs copied out of
/// their specs: a request takes no lock to find its route. Replaced whole on
/// every change, so a request sees one consistent table.
#[derive(Default)]
pub(crate) struct Table {
    entries: Vec<Entry>,
}

struct Entry {
    exact: Vec<String>,
    /// `.example.com` for `*.example.com`.
    suffixes: Vec<String>,
    any_host: bool,
    prefix: String,
    algorithm: Algorithm,
    redirect_https: bool,
    backend_h2: bool,
    route: Arc<Route>,
}

/// A matched route and how to pick among its backends.
pub(crate) struct Matched<'a> {
    pub route: &'a Arc<Route>,
    pub algorithm: Algorithm,
    /// Plain HTTP gets a redirect to HTTPS.
    pub redirect_https: bool,
    /// Its tasks take HTTP/2.
    pub backend_h2: bool,
}

impl Table {
    pub(crate) fn new(routes: Vec<Arc<Route>>) -> Table {
        let mut entries: Vec<Entry> = routes
            .into_iter()
            .map(|route| {
                let spec = route.spec();
                let (suffixes, exact): (Vec<String>, Vec<String>) = spec
                    .hosts
                    .iter()
                    .cloned()
                    .partition(|h| h.starts_with("*."));
                Entry {
                    any_host: spec.hosts.is_empty(),
                    exact,
                    suffixes: suffixes.iter().map(|h| h[1..].to_string()).collect(),
                    prefix: spec.path_prefix.trim_end_matches('/').to_string(),
                    algorithm: spec.algorithm,
                    redirect_https: spec.redirect_https,
                    backend_h2: spec.backend_h2,
                    route,
                }
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.route.rank()));
        Table { entries }
    }

    /// The most specific route for `host` (without port, lower case) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<Matched<'_>> {
        let mut best: Option<(&Entry, (u8, usize))> = None;
        for e in &self.entries {
            let class = if e.exact.iter().any(|h| h == host) {
                2
            } else if e.suffixes.iter().any(|s| host.ends_with(s.as_str())) {
                1
            } else if e.any_host {
                0
            } else {
                continue;
            };
            if !prefix_matches(&e.prefix, path) {
                continue;
            }
            let rank = (class, e.prefix.len());
            if best.as_ref().is_none_or(|(_, b)| rank > *b) {
                best = Some((e, rank));
            }
        }
        best.map(|(e, _)| Matched {
            route: &e.route,
            algorithm: e.algorithm,
            redirect_https: e.redirect_https,
            backend_h2: e.backend_h2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(service: &str, hosts: &[&str], prefix: &str) -> Arc<Route> {
        Arc::new(Route::new(
            service,
            0,
            RouteSpec {
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                path_prefix: prefix.into(),
                ..RouteSpec::default()
            },
        ))
    }

    #[test]
    fn most_specific_route_wins() {
        let t = Table::new(vec![
            route("any", &[], "/"),
            route("api", &[], "/api"),
            route("site", &["example.com"], "/"),
            route("wild", &["*.example.com"], "/"),
            route("site-api", &["example.com"], "/api"),
        ]);
        let f = |h: &str, p: &str| t.find(h, p).map(|m| m.route.service.clone());
        assert_eq!(f("other.org", "/"), Some("any".into()));
        assert_eq!(f("other.org", "/api/x"), Some("api".into()));
        assert_eq!(
            f("other.org", "/apix"),
            Some("any".into()),
            "segment boundary"
        );
        assert_eq!(f("example.com", "/x"), Some("site".into()));
        assert_eq!(f("example.com", "/api?q=1"), Some("site-api".into()));
        assert_eq!(f("www.example.com", "/"), Some("wild".into()));
        assert_eq!(
            f("www.example.com", "/api"),
            Some("wild".into()),
            "host before path"
        );
    }

    #[test]
    fn no_route_without_a_match() {
        let t = Table::new(vec![route("site", &["example.com"], "/app")]);
        assert!(t.find("example.com", "/").is_none());
        assert!(t.find("example.org", "/app").is_none());
    }
}
