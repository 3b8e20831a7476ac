//! Image bookkeeping and the image cleanup cycle.

use super::Supervisor;
use crate::engine::Engine;
use crate::router::Router;
use std::collections::BTreeSet;

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
        let removed = crate::images::cycle(
            &self.engine,
            &self.cfg.image_cleanup,
            &mut tracked,
            &referenced,
            self.now_ms(),
        )
        .await;
        self.store.state.images = tracked;
        if !removed.is_empty() {
            self.save();
        }
    }
}
