//! A fuzz harness on stable Rust (no nightly, so no cargo-fuzz here): a
//! seeded mutator over a corpus of valid and nearly valid inputs, run
//! against each untrusted-input entry point for a bounded time.
//!
//! Targets:
//! - `config`: `ecs.config` text through [`Config::from_parts`];
//! - `service-file`: service files through `ServiceSpec::parse`, and every
//!   accepted one on through what the agent does with it (routes, container
//!   specs, resource sums, digest);
//! - `proxy`: raw bytes on a socket to an in-process proxy in front of a
//!   real backend: each case must get an HTTP answer or a clean close, and
//!   the proxy must keep answering a good request;
//! - `api`: raw bytes to the agent's local API, the same way.
//!
//! A panic anywhere (including inside a server task) is counted through a
//! panic hook, so a target "fails" without the harness stopping.

use dockhand_agent::config::Config;
use dockhand_model::ServiceSpec;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod corpus;
pub mod servers;

/// Panics seen by the hook, and the first few messages.
static PANICS: AtomicU64 = AtomicU64::new(0);
static PANIC_MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs the counting panic hook (once).
pub fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            let mut m = PANIC_MESSAGES.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() < 5 {
                m.push(info.to_string());
            }
        }));
    });
}

/// xorshift64*: fast, deterministic, seedable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Tokens worth inserting: syntax, limits, and the values that used to
/// overflow or smuggle.
const DICTIONARY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"=",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\0",
    b"#",
    b"'",
    b" ",
    b"\t",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"65536",
    b"18446744073709551615",
    b"18446744073709551615s",
    b"5124095576030431h",
    b"1e309",
    b"99999999999999999999999",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: -1\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"Host: x\r\n",
    b"Expect: 100-continue\r\n",
    b"GET ",
    b"POST ",
    b"CONNECT ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"/..%2f",
    b"%00",
    b"\"memory\": ",
    b"\"hostPort\": ",
    b"\"path\": \"/a\\r\\nPOST /x\"",
    b"DOCKHAND_",
    b"ECS_",
];

/// Mutates `input` with 1 to 8 random edits, sometimes splicing `other`.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next_u64() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let tok = DICTIONARY[rng.below(DICTIONARY.len())];
                v.splice(i..i, tok.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk: Vec<u8> = v[a..b].to_vec();
                let i = rng.below(len + 1);
                v.splice(i..i, chunk);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            6 => {
                // Replace a run of digits with an extreme number.
                if let Some(i) = (0..len).find(|&i| v[i].is_ascii_digit() && rng.below(4) == 0) {
                    let mut j = i;
                    while j < len && v[j].is_ascii_digit() {
                        j += 1;
                    }
                    let n: &[u8] = match rng.below(4) {
                        0 => b"0",
                        1 => b"18446744073709551615",
                        2 => b"4294967296",
                        _ => b"99999999999",
                    };
                    v.splice(i..j, n.iter().copied());
                }
            }
            7 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next_u64() as u8);
            }
        }
    }
    v.truncate(256 * 1024);
    v
}

/// The outcome of running one target.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub target: &'static str,
    pub cases: u64,
    /// Panics caught by the hook.
    pub panics: u64,
    /// Other failures: a server stopped answering, an answer that is not
    /// HTTP, an accepted input breaking an invariant.
    pub failures: u64,
    pub accepted: u64,
    pub first_failures: Vec<String>,
}

impl Outcome {
    fn fail(&mut self, why: String) {
        self.failures += 1;
        if self.first_failures.len() < 5 {
            self.first_failures.push(why);
        }
    }
}

/// Every target's name.
pub const TARGETS: &[&str] = &["config", "service-file", "proxy", "proxy-h2c", "api"];

/// Runs `target` for `time` with `seed`.
pub fn run(target: &str, time: Duration, seed: u64) -> Option<Outcome> {
    count_panics();
    let before = PANICS.load(Ordering::SeqCst);
    let mut out = match target {
        "config" => pure("config", corpus::configs(), time, seed, check_config),
        "service-file" => pure(
            "service-file",
            corpus::service_files(),
            time,
            seed,
            check_service,
        ),
        "proxy" => servers::proxy(time, seed),
        "proxy-h2c" => servers::proxy_h2c(time, seed),
        "api" => servers::api(time, seed),
        _ => return None,
    };
    out.panics = PANICS.load(Ordering::SeqCst) - before;
    if out.panics > 0 {
        let m = PANIC_MESSAGES.lock().unwrap_or_else(|p| p.into_inner());
        out.first_failures.extend(m.iter().cloned());
    }
    Some(out)
}

/// A target that is a pure function of its input.
fn pure(
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    time: Duration,
    seed: u64,
    check: fn(&[u8]) -> Result<bool, String>,
) -> Outcome {
    let mut rng = Rng::new(seed);
    let mut out = Outcome {
        target: name,
        ..Outcome::default()
    };
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..64 {
            let a = &seeds[rng.below(seeds.len())];
            let b = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, a, b);
            out.cases += 1;
            match std::panic::catch_unwind(|| check(&input)) {
                Ok(Ok(true)) => out.accepted += 1,
                Ok(Ok(false)) => {}
                Ok(Err(why)) => out.fail(why),
                // Counted by the hook.
                Err(_) => {}
            }
        }
    }
    out
}

/// `ecs.config` text: rejected with errors, or accepted with every value
/// inside its documented range.
fn check_config(input: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(input);
    let env = std::collections::BTreeMap::new();
    match Config::from_parts(std::path::Path::new("/fuzz/ecs.config"), &text, &env) {
        Err(e) if e.0.is_empty() => Err("rejected with no error".into()),
        Err(_) => Ok(false),
        Ok(loaded) => {
            let c = &loaded.config;
            let day = Duration::from_secs(86_400);
            if c.container_stop_timeout > day
                || c.proxy.idle_timeout > day
                || c.proxy.response_timeout > day
                || c.task_cleanup_wait > 30 * day
            {
                return Err(format!("accepted an out-of-range duration: {text:?}"));
            }
            // What the agent computes from it at start must not overflow.
            let _ = std::time::Instant::now() + c.proxy.idle_timeout + c.task_cleanup_wait;
            Ok(true)
        }
    }
}

/// A service file: rejected with errors, or accepted and then usable by
/// everything the agent does with it.
fn check_service(input: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(input);
    match ServiceSpec::parse(&text) {
        Err(e) if e.is_empty() => Err("rejected with no error".into()),
        Err(_) => Ok(false),
        Ok(parsed) => {
            let spec = parsed.spec;
            let td = &spec.task_definition;
            let _ = td.digest();
            let _ = spec.wanted_tasks();
            if td.memory_mib() > 16 * 1024 * 1024 * 10 {
                return Err(format!("accepted memory {} MiB", td.memory_mib()));
            }
            for r in spec.routes() {
                let _ = std::time::Instant::now()
                    + r.deregistration_delay
                    + r.grace
                    + r.health_check.interval * 20
                    + r.health_check.timeout;
                if dockhand_model::route::check_origin_form(&r.health_check.path).is_err() {
                    return Err(format!(
                        "a route's health path is not a request path: {:?}",
                        r.health_check.path
                    ));
                }
            }
            let order = td.start_order().ok_or("accepted a dependsOn cycle")?;
            let dynamic = std::collections::BTreeMap::new();
            let launch = dockhand_agent::containers::TaskLaunch {
                instance: "i",
                cluster: "c",
                service: &spec.service_name,
                task_id: "0123456789abcdef",
                task_arn: "arn",
                revision: 1,
                digest: "d",
                def: td,
                bind_address: std::net::IpAddr::from([127, 0, 0, 1]),
                default_stop_timeout: Duration::from_secs(30),
                dynamic_ports: &dynamic,
            };
            for (pos, &i) in order.iter().enumerate() {
                let c = launch.container_spec(i, pos);
                if c.env.iter().any(|e| e.contains('\0') || e.starts_with('=')) {
                    return Err(format!(
                        "an environment entry Docker would refuse: {:?}",
                        c.env
                    ));
                }
                if c.memory_bytes.is_some_and(|m| m <= 0) {
                    return Err("memory became no limit".into());
                }
            }
            Ok(true)
        }
    }
}

/// Shared by the server targets: whether `answer` is an HTTP response or
/// a clean close.
pub(crate) fn is_http_or_closed(answer: &[u8]) -> bool {
    answer.is_empty() || answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 ")
}

/// The first line of an answer, for a failure message.
pub(crate) fn first_line(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer)
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(120)
        .collect()
}

/// Runs `f` on a fresh runtime with two workers.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A shared count of cases, for the server targets' client loops.
pub(crate) type Shared = Arc<Mutex<Outcome>>;
