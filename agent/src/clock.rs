//! Wall-clock time for the supervisor and its engine.
//!
//! Deadlines inside the agent run on tokio's monotonic clock; wall time is
//! needed where it is persisted or compared with the engine's timestamps
//! (backoff deadlines in `state.json`, a container's start time). Tests run
//! the supervisor with tokio's clock paused, so wall time must follow
//! tokio's clock there: [`Clock::paused`] derives it from tokio's `Instant`.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// Wall time that advances with tokio's clock (tests with paused time).
    Tokio {
        base: SystemTime,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that starts at the current wall time and then advances with
    /// tokio's (possibly paused) clock.
    pub fn paused() -> Clock {
        Clock::Tokio {
            base: SystemTime::now(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Tokio { base, start } => *base + start.elapsed(),
        }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> u64 {
        ms_of(self.now())
    }
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
