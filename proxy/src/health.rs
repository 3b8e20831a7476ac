//! Active health checks with hysteresis.
//!
//! A backend changes state only after N consecutive results: it becomes
//! healthy after `healthy_threshold` passes in a row and unhealthy after
//! `unhealthy_threshold` failures in a row. New backends start unhealthy
//! (pingora and Traefik start them healthy, and their users file issues about
//! it), are checked at once on registration, and never get traffic during
//! the grace period. A refused or reset connection while proxying takes a
//! backend out at once ([`Hysteresis::eject`]); it comes back only through
//! active checks.

use crate::backend::Backend;
use crate::route::Route;
use crate::Inner;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A route's health check (ALB target-group fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: Matcher,
}

/// HAProxy-like defaults for a proxy used on its own; the agent always
/// passes every value (the product's defaults live in the model).
impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            matcher: Matcher::default(),
        }
    }
}

/// Which status codes pass: inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher(Vec<(u16, u16)>);

impl Default for Matcher {
    fn default() -> Self {
        Matcher(vec![(200, 399)])
    }
}

impl Matcher {
    /// Passing codes as inclusive ranges (the agent parses ALB's `matcher`
    /// syntax).
    pub fn from_ranges(ranges: Vec<(u16, u16)>) -> Matcher {
        Matcher(ranges)
    }

    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }
}

/// The state of one backend's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hysteresis {
    healthy: bool,
    passes: u32,
    failures: u32,
    /// Passes needed for the next unhealthy → healthy transition.
    rise: u32,
}

/// A state change worth reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    BecameHealthy,
    BecameUnhealthy,
}

impl Hysteresis {
    /// A new backend: unhealthy until `rise` passes in a row.
    pub fn new(rise: u32) -> Hysteresis {
        Hysteresis {
            healthy: false,
            passes: 0,
            failures: 0,
            rise: rise.max(1),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    pub fn record(&mut self, passed: bool, check: &HealthCheck) -> Option<Transition> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if !self.healthy && self.passes >= self.rise {
                self.healthy = true;
                self.rise = check.healthy_threshold.max(1);
                return Some(Transition::BecameHealthy);
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= check.unhealthy_threshold.max(1) {
                self.healthy = false;
                return Some(Transition::BecameUnhealthy);
            }
        }
        None
    }

    /// Passive ejection: out at once; back only through active checks.
    pub fn eject(&mut self, check: &HealthCheck) -> Option<Transition> {
        self.passes = 0;
        self.rise = check.healthy_threshold.max(1);
        if self.healthy {
            self.healthy = false;
            Some(Transition::BecameUnhealthy)
        } else {
            None
        }
    }
}

/// Checks one backend for as long as it is registered: a probe every
/// interval, each result through the backend's hysteresis, transitions
/// reported to the agent. Aborted when the backend is removed.
pub(crate) async fn check_loop(inner: Arc<Inner>, route: Arc<Route>, b: Arc<Backend>) {
    loop {
        let spec = route.spec();
        let check = spec.check;
        let result = probe(b.addr, &check, spec.backend_h2).await;
        let t = b.record(&result, &check);
        let reason = match &result {
            Ok(()) => format!("{} passed {} check(s)", check.path, check.healthy_threshold),
            Err(e) => e.clone(),
        };
        inner.report(&route, &b, t, &reason);
        let interval = check.interval;
        // Wake at the end of the grace period too, to start routing.
        let grace_left = b.grace_left();
        if !grace_left.is_zero() && grace_left < interval {
            tokio::time::sleep(grace_left).await;
            b.tick();
            tokio::time::sleep(interval - grace_left).await;
        } else {
            tokio::time::sleep(interval).await;
        }
        b.tick();
        b.trim_idle();
    }
}

/// Runs one check: `GET path` on a new connection, within the timeout,
/// over HTTP/1.1 or (`http2`, a task that speaks only HTTP/2) prior-knowledge
/// HTTP/2. `Ok(())` when the status matches; otherwise a reason an operator
/// reads (`/health returned 500`, `timeout after 2s`, `connection refused`).
///
/// The request is built with hyper's client from a parsed URI, never by
/// pasting the path into text: a path that is not a valid request target
/// fails the check instead of reaching the task.
pub async fn probe(addr: SocketAddr, check: &HealthCheck, http2: bool) -> Result<(), String> {
    let not_a_path = || format!("{:?} is not a request path", check.path);
    let uri: Uri = check
        .path
        .parse()
        .ok()
        .filter(|u: &Uri| {
            u.scheme().is_none() && u.authority().is_none() && check.path.starts_with('/')
        })
        .ok_or_else(not_a_path)?;
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| describe_io(&e))?;
        let request = Request::get(uri)
            .header(USER_AGENT, "dockhand-health-check")
            .header(ACCEPT, "*/*");
        // The connection runs beside the request; the status line is all a
        // check needs, and the connection is closed (aborted) as soon as the
        // head has arrived or the check gives up.
        let sent = if http2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| describe_hyper(&e))?;
            let _conn = AbortOnDrop(tokio::spawn(async move {
                let _ = conn.await;
            }));
            // HTTP/2 names the host in the URI (`:authority`).
            let uri = format!("http://{addr}{}", check.path)
                .parse::<Uri>()
                .map_err(|_| not_a_path())?;
            let request = request
                .uri(uri)
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            sender.send_request(request).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            let _conn = AbortOnDrop(tokio::spawn(async move {
                let _ = conn.await;
            }));
            let request = request
                .header(HOST, addr.to_string())
                .header(CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            sender.send_request(request).await
        };
        let code = sent.map_err(|e| describe_hyper(&e))?.status().as_u16();
        if check.matcher.matches(code) {
            Ok(())
        } else {
            Err(format!("{} returned {code}", check.path))
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {}", human(check.timeout))),
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A hyper error as a reason: the I/O cause when there is one.
fn describe_hyper(e: &hyper::Error) -> String {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        source = s.source();
    }
    if e.is_incomplete_message() || e.is_canceled() {
        "connection closed before a status line".to_string()
    } else if e.is_parse() {
        "answer is not HTTP/1.x".to_string()
    } else {
        e.to_string()
    }
}

pub(crate) fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_backends_need_the_healthy_threshold_and_fall_after_unhealthy_threshold() {
        let check = HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheck::default()
        };
        let mut h = Hysteresis::new(check.healthy_threshold);
        assert!(!h.healthy(), "new backends start unhealthy");
        assert_eq!(h.record(true, &check), None);
        assert_eq!(h.record(true, &check), Some(Transition::BecameHealthy));
        assert_eq!(h.record(false, &check), None);
        assert_eq!(h.record(false, &check), None);
        assert_eq!(
            h.record(true, &check),
            None,
            "a pass resets the failure streak"
        );
        assert_eq!(h.record(false, &check), None);
        assert_eq!(h.record(false, &check), None);
        assert_eq!(h.record(false, &check), Some(Transition::BecameUnhealthy));
        assert_eq!(h.record(true, &check), None);
        assert_eq!(h.record(true, &check), Some(Transition::BecameHealthy));
    }

    #[test]
    fn ejection_is_immediate_and_recovery_needs_active_passes() {
        let check = HealthCheck::default();
        let mut h = Hysteresis::new(1);
        assert_eq!(h.record(true, &check), Some(Transition::BecameHealthy));
        assert_eq!(h.eject(&check), Some(Transition::BecameUnhealthy));
        assert_eq!(h.record(true, &check), None);
        assert_eq!(h.record(true, &check), Some(Transition::BecameHealthy));
    }

    #[tokio::test]
    async fn probe_reports_status_refused_and_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;
        let check = HealthCheck {
            path: "/health".into(),
            timeout: Duration::from_millis(300),
            ..HealthCheck::default()
        };
        // A server answering 500.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.read(&mut [0u8; 512]).await;
                let _ = s
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        assert_eq!(
            probe(addr, &check, false).await,
            Err("/health returned 500".into())
        );

        // Nothing listening.
        let gone = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(
            probe(gone, &check, false).await,
            Err("connection refused".into())
        );

        // Accepts and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        assert_eq!(
            probe(silent_addr, &check, false).await,
            Err("timeout after 300ms".into())
        );
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_request_target_never_reaches_the_task() {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_millis(300), l.accept()).await
            else {
                return Vec::new();
            };
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut buf)).await;
            buf
        });
        let check = HealthCheck {
            path: "/a HTTP/1.1\r\nHost: x\r\n\r\nPOST /admin".into(),
            ..HealthCheck::default()
        };
        let r = probe(addr, &check, false).await;
        assert!(r.unwrap_err().contains("is not a request path"));
        assert!(seen.await.unwrap().is_empty(), "nothing was sent");
    }
}
