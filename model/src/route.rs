//! What a `loadBalancers` entry means for a proxy: the route (hosts, path
//! prefix), its target-group health check and how it drains, with every
//! default applied. Plain values; the agent turns them into its proxy's
//! types.

use std::time::Duration;

/// Dockhand's health-check defaults: close to HAProxy's (`inter 2s rise 2
/// fall 3`) so a new task serves within seconds, unlike ALB's 5 × 30 s.
pub const DEFAULT_HEALTH_PATH: &str = "/";
pub const DEFAULT_INTERVAL_SECONDS: i64 = 5;
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 2;
pub const DEFAULT_HEALTHY_THRESHOLD: i64 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: i64 = 3;
pub const DEFAULT_MATCHER: &str = "200-399";
/// Seconds a stopping task keeps finishing its requests, at most. ALB's
/// default is 300 s; 30 s is the example in DESIGN.md and what most
/// services need, and a drain ends early when nothing is in flight.
pub const DEFAULT_DEREGISTRATION_DELAY: i64 = 30;

/// Documented ranges (inclusive) of the route fields.
pub const INTERVAL_RANGE: (i64, i64) = (1, 300);
pub const TIMEOUT_RANGE: (i64, i64) = (1, 120);
pub const THRESHOLD_RANGE: (i64, i64) = (1, 10);
pub const DEREGISTRATION_DELAY_RANGE: (i64, i64) = (0, 3600);
/// Paths and prefixes, bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// A route with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// Lower-case host names (`*.example.com` allowed); empty matches any.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub health_check: HealthCheckSettings,
    pub deregistration_delay: Duration,
    pub algorithm: Algorithm,
    /// No traffic before this long after a task is registered.
    pub grace: Duration,
    /// (certificate chain, private key) PEM files for `hosts` over TLS.
    pub certificate: Option<(String, String)>,
    /// Plain HTTP gets a permanent redirect to HTTPS.
    pub redirect_https: bool,
    /// Tasks are reached over HTTP/2 (prior knowledge), health checks too.
    pub http2_to_tasks: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSettings {
    /// Origin-form request target: validated, never raw input.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: Matcher,
}

/// How a route spreads requests over its healthy tasks (ALB's names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// `least_outstanding_requests`: fewest requests in flight. The default.
    #[default]
    LeastOutstanding,
    /// `round_robin`.
    RoundRobin,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "least_outstanding_requests" => Some(Algorithm::LeastOutstanding),
            "round_robin" => Some(Algorithm::RoundRobin),
            _ => None,
        }
    }
}

/// Which status codes pass a check: ALB's `matcher` syntax, `200`,
/// `200,204` or `200-399`, and combinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher(pub Vec<(u16, u16)>);

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
        if ranges.len() > 32 {
            return Err(bad());
        }
        Ok(Matcher(ranges))
    }

    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }
}

/// Checks an HTTP origin-form path (what goes after the method in a
/// request line): starts with `/`, only characters a URI allows (RFC 3986
/// path and query characters, `%` escapes), at most [`MAX_PATH_BYTES`].
/// A CR, LF, space or other control character would let a value smuggle a
/// second request into a health check.
pub fn check_origin_form(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("must start with /".into());
    }
    if p.len() > MAX_PATH_BYTES {
        return Err(format!("must be at most {MAX_PATH_BYTES} bytes"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
    if let Some(bad) = p.bytes().find(|b| !allowed(*b)) {
        return Err(format!(
            "must be a URI path: byte {bad:#04x} ({}) is not allowed; percent-encode it",
            char::from(bad).escape_default()
        ));
    }
    Ok(())
}

/// Checks a route host: a DNS name, or `*.` and a DNS name; any case.
pub fn check_host(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && h.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{h:?} is not a host name (letters, digits, hyphens and dots; optionally *. first)"
        ))
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
    fn origin_form_refuses_what_could_split_a_request() {
        assert!(check_origin_form("/health?x=1&y=%20").is_ok());
        for bad in [
            "health",
            "/a b",
            "/a\r\nPOST /admin HTTP/1.1",
            "/\u{7f}",
            "/é",
        ] {
            assert!(check_origin_form(bad).is_err(), "{bad:?}");
        }
        assert!(check_origin_form(&format!("/{}", "a".repeat(MAX_PATH_BYTES))).is_err());
    }

    #[test]
    fn hosts() {
        for good in ["example.com", "*.example.com", "A-1.example", "localhost"] {
            assert!(check_host(good).is_ok(), "{good}");
        }
        for bad in ["", "*.", "a..b", "a b", "exa_mple.com", "*", "a.*.b"] {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
    }
}
