//! Identifiers the control endpoint makes: task and container-instance ids
//! (32 hex digits, as ECS's), deployment ids (`ecs-svc/` and 19 digits),
//! request ids, and time-ordered event ids.

use std::sync::atomic::{AtomicU64, Ordering};

/// `n` random bytes, from the kernel; a time-and-counter fallback keeps ids
/// unique if /dev/urandom cannot be read.
pub fn random(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed =
            now_ms() as u128 * 1_000_003 + u128::from(COUNTER.fetch_add(1, Ordering::Relaxed));
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    buf
}

pub fn hex(n: usize) -> String {
    random(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// A task or container-instance id: 32 hex digits.
pub fn task_id() -> String {
    hex(16)
}

/// A deployment id: `ecs-svc/` and 19 digits.
pub fn deployment_id() -> String {
    let digits: String = random(19)
        .iter()
        .map(|b| char::from(b'0' + b % 10))
        .collect();
    format!("ecs-svc/{digits}")
}

/// An `x-amzn-RequestId`: a UUID-shaped random id.
pub fn request_id() -> String {
    let h = hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An event id that sorts by time, then by a per-process counter.
pub fn event_id(at_ms: i64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    format!("{at_ms:015}-{n:06}-{}", hex(2))
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
