//! Pacing launches, so a hundred tasks started at once do not overwhelm
//! the engine (or the registry) and then fail for being slow.
//!
//! - [`Pulls`]: one pull per image at a time. Launches of the same image
//!   wait for the pull under way and take its outcome, and an outcome is
//!   remembered for [`PULL_MEMORY`], so a hundred launches make one pull,
//!   and with a registry that cannot be reached (ECS_IMAGE_PULL_BEHAVIOR
//!   `default`, image cached) they wait for one failure, not a hundred.
//! - [`Pacer`]: at most `limit` engine calls that create or start
//!   containers at once. The limit adapts to how fast the engine answers
//!   (additive increase while calls are quick, halved when one is slow).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How long a pull's outcome stands for the next launches of its image.
pub const PULL_MEMORY: Duration = Duration::from_secs(60);

/// The outcome of the last pull of an image.
#[derive(Clone)]
struct Pulled {
    at: Instant,
    result: Result<(), String>,
}

/// One pull per image at a time, outcomes remembered briefly.
#[derive(Default)]
pub struct Pulls {
    images: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Pulled>>>>>,
}

impl Pulls {
    /// Runs `pull` for `image` unless another launch is pulling it (then
    /// waits for that one) or a pull of it ended less than
    /// [`PULL_MEMORY`] ago; returns the outcome.
    pub async fn pull<F, Fut>(&self, image: &str, pull: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let slot = {
            let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(images.entry(image.to_string()).or_default())
        };
        let mut last = slot.lock().await;
        if let Some(p) = last.as_ref().filter(|p| p.at.elapsed() < PULL_MEMORY) {
            return p.result.clone();
        }
        let result = pull().await;
        *last = Some(Pulled {
            at: Instant::now(),
            result: result.clone(),
        });
        result
    }
}

/// Engine calls that create or start containers, at most `limit` at once.
pub struct Pacer {
    permits: Arc<Semaphore>,
    limit: Mutex<usize>,
}

/// The concurrency a pacer starts at, and its bounds.
const START_LIMIT: usize = 4;
const MIN_LIMIT: usize = 1;
const MAX_LIMIT: usize = 32;
/// A call this quick lets one more run at once; one this slow halves them.
const QUICK: Duration = Duration::from_millis(500);
const SLOW: Duration = Duration::from_secs(3);

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            permits: Arc::new(Semaphore::new(START_LIMIT)),
            limit: Mutex::new(START_LIMIT),
        }
    }
}

impl Pacer {
    /// Runs `call` when a place is free, and adapts the limit to how long
    /// it took.
    pub async fn run<T, Fut>(&self, call: Fut) -> T
    where
        Fut: std::future::Future<Output = T>,
    {
        // The semaphore is never closed, so acquiring cannot fail; if it
        // somehow did, running unpaced is the safe degradation.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        let started = Instant::now();
        let out = call.await;
        let took = started.elapsed();
        drop(permit);
        self.adapt(took);
        out
    }

    fn adapt(&self, took: Duration) {
        let mut limit = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        if took <= QUICK && *limit < MAX_LIMIT {
            *limit += 1;
            self.permits.add_permits(1);
        } else if took >= SLOW && *limit > MIN_LIMIT {
            let new = (*limit / 2).max(MIN_LIMIT);
            // Permits in use come back later; forget what is free now and
            // the rest as it returns (forget_permits takes what it can).
            let drop_n = *limit - new;
            let forgotten = self.permits.forget_permits(drop_n);
            *limit -= forgotten;
            tracing::debug!(
                took_ms = took.as_millis() as u64,
                limit = *limit,
                "engine slow: fewer starts at once"
            );
        }
    }

    /// The current limit.
    #[cfg(test)]
    pub fn limit(&self) -> usize {
        *self.limit.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn one_pull_serves_many_launches_and_its_outcome_is_remembered() {
        let pulls = Arc::new(Pulls::default());
        let count = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let pulls = Arc::clone(&pulls);
            let count = Arc::clone(&count);
            handles.push(tokio::spawn(async move {
                pulls
                    .pull("app:1", || async {
                        count.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Err("registry unreachable".to_string())
                    })
                    .await
            }));
        }
        for h in handles {
            assert!(h.await.unwrap().is_err());
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        tokio::time::sleep(PULL_MEMORY).await;
        let again = pulls.pull("app:1", || async { Ok(()) }).await;
        assert!(again.is_ok(), "pulled again once the memory is over");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_grows_while_quick_and_halves_when_slow() {
        let pacer = Pacer::default();
        for _ in 0..10 {
            pacer.run(async {}).await;
        }
        assert_eq!(pacer.limit(), START_LIMIT + 10);
        pacer.run(tokio::time::sleep(Duration::from_secs(5))).await;
        assert_eq!(pacer.limit(), (START_LIMIT + 10) / 2);
    }
}
