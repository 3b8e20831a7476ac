//! Image bookkeeping and the image cleanup cycle.

use super::Supervisor;
use crate::engine::Engine;
use crate::router::Router;
use std::collections::BTreeSet;
use std::time::Duration;

/// The longest one image cleanup cycle may hold the reconcile loop.
const IMAGE_CLEANUP_LIMIT: Duration = Duration::from_secs(20);

impl<E: Engine, R: Router> Supervisor<E, R> {
    /// Marks images as in use now. A timestamp less than a minute old is
    /// left alone, so the state file is not rewritten on every pass.
    pub(super) fn track_images<'a>(&mut self, images: impl Iterator<Item = &'a str>) {
        let now = self.now_ms();
        for image in images {
            let used = self
                .store
                .state
                .images
                .entry(image.to_string())
                .or_insert(0);
            if now.saturating_sub(*used) > 60_000 {
                *used = now;
            }
        }
    }

    /// Every image some known spec of a service (current, last good,
    /// stable) uses.
    fn referenced_images(&self) -> BTreeSet<String> {
        let specs = self.desired.services.values().chain(
            self.store
                .state
                .services
                .values()
                .flat_map(|r| r.last_good.iter().chain(r.stable.iter())),
        );
        specs
            .flat_map(|s| {
                s.task_definition
                    .container_definitions
                    .iter()
                    .map(|c| c.image.clone())
            })
            .collect()
    }

    pub(super) async fn clean_images(&mut self) {
        // In use: what any known spec names, and what the last pass saw in
        // this agent's containers (no second listing of the engine here).
        let mut referenced = self.referenced_images();
        referenced.extend(self.images_seen.iter().cloned());
        let mut tracked = std::mem::take(&mut self.store.state.images);
        // It runs in the reconcile loop: a hung image delete must not hold
        // every pass (and the watchdog's kick) for the client's 120 s per
        // image. What was removed before the limit stays removed; the rest
        // waits for the next cycle.
        let cycle = crate::images::cycle(
            &self.engine,
            &self.cfg.image_cleanup,
            &mut tracked,
            &referenced,
            self.now_ms(),
        );
        // (Cut short, some images may have gone: saved as if.)
        let changed = match tokio::time::timeout(IMAGE_CLEANUP_LIMIT, cycle).await {
            Ok(removed) => !removed.is_empty(),
            Err(_) => {
                tracing::warn!(
                    limit_s = IMAGE_CLEANUP_LIMIT.as_secs(),
                    "image cleanup did not finish in time; the rest waits for the next cycle"
                );
                true
            }
        };
        self.store.state.images = tracked;
        if changed {
            self.save();
        }
    }
}
