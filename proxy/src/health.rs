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

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Dockhand's defaults: close to HAProxy's (`inter 2s rise 2 fall 3`) so a
/// new task serves within seconds, unlike ALB's 5 × 30 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/".into(),
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
            matcher: Matcher::default(),
        }
    }
}

/// Which status codes pass: ALB's `matcher` syntax, `200`, `200,204` or
/// `200-399`, and combinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher(Vec<(u16, u16)>);

impl Default for Matcher {
    fn default() -> Self {
        Matcher(vec![(200, 399)])
    }
}

impl Matcher {
    pub fn parse(s: &str) -> Result<Matcher, String> {
        let bad = || format!("expected codes like 200, 200,204 or 200-399 (100-599), got {s:?}");
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u16 = lo.parse().map_err(|_| bad())?;
            let hi: u16 = hi.parse().map_err(|_| bad())?;
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err(bad());
            }
            ranges.push((lo, hi));
        }
        Ok(Matcher(ranges))
    }

    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }
}

/// The state of one backend's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    healthy: bool,
    passes: u32,
    failures: u32,
    /// Passes needed for the next unhealthy → healthy transition.
    rise: u32,
}

/// A state change worth reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
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

/// Runs one check: `GET path` on a new connection, within the timeout.
/// `Ok(())` when the status matches; otherwise a reason an operator reads
/// (`/health returned 500`, `timeout after 2s`, `connection refused`).
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| describe_io(&e))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: dockhand-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            check.path
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| describe_io(&e))?;
        // The status line is all a check needs.
        let mut buf = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream
                .read(&mut buf[len..])
                .await
                .map_err(|e| describe_io(&e))?;
            if n == 0 {
                return Err("connection closed before a status line".to_string());
            }
            len += n;
        }
        let line = std::str::from_utf8(&buf[..len]).unwrap_or("");
        let code = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| "answer is not HTTP/1.x".to_string())?;
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
    fn matcher_syntax() {
        let m = Matcher::parse("200-299, 301,404").unwrap();
        assert!(m.matches(200) && m.matches(299) && m.matches(301) && m.matches(404));
        assert!(!m.matches(300) && !m.matches(500));
        for bad in ["", "abc", "99", "600", "300-200", "200-"] {
            assert!(Matcher::parse(bad).is_err(), "{bad:?}");
        }
    }

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
            probe(addr, &check).await,
            Err("/health returned 500".into())
        );

        // Nothing listening.
        let gone = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(probe(gone, &check).await, Err("connection refused".into()));

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
            probe(silent_addr, &check).await,
            Err("timeout after 300ms".into())
        );
    }
}
