//! Image cleanup with the ECS agent's knobs: every
//! `ECS_IMAGE_CLEANUP_INTERVAL`, remove up to `ECS_NUM_IMAGES_DELETE_PER_CYCLE`
//! images, oldest first, that no task definition on this host uses and that
//! have been unused for `ECS_IMAGE_MINIMUM_CLEANUP_AGE`. Only images this
//! agent pulled or ran are candidates unless `ECS_EXCLUDE_UNTRACKED_IMAGE`
//! is false. Docker refuses to remove an image a container uses; that image
//! is simply skipped.

use crate::config::ImageCleanup;
use crate::engine::Engine;
use std::collections::{BTreeMap, BTreeSet};

/// Picks this cycle's images: unreferenced, unused long enough, oldest first.
pub fn select(
    last_used: &BTreeMap<String, u64>,
    referenced: &BTreeSet<String>,
    minimum_age_ms: u64,
    per_cycle: usize,
    now_ms: u64,
) -> Vec<String> {
    let mut candidates: Vec<(&u64, &String)> = last_used
        .iter()
        .filter(|(image, used)| {
            !referenced.contains(*image) && now_ms.saturating_sub(**used) >= minimum_age_ms
        })
        .map(|(image, used)| (used, image))
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .take(per_cycle)
        .map(|(_, i)| i.clone())
        .collect()
}

/// One cleanup cycle. `tracked` is the agent's record of images it used
/// (updated: removed images are forgotten). Returns what was removed.
pub async fn cycle<E: Engine>(
    engine: &E,
    cfg: &ImageCleanup,
    tracked: &mut BTreeMap<String, u64>,
    referenced: &BTreeSet<String>,
    now_ms: u64,
) -> Vec<String> {
    let mut last_used = tracked.clone();
    if !cfg.exclude_untracked {
        // Every tagged image, aged by its creation time, unless some
        // container (of any owner) uses it.
        let in_use = engine.images_in_use().await.unwrap_or_default();
        for img in engine.images().await.unwrap_or_default() {
            for tag in img.tags {
                if !in_use.contains(&tag) {
                    last_used
                        .entry(tag)
                        .or_insert((img.created.max(0) as u64).saturating_mul(1000));
                }
            }
        }
    }
    let chosen = select(
        &last_used,
        referenced,
        cfg.minimum_age.as_millis() as u64,
        cfg.per_cycle,
        now_ms,
    );
    let mut removed = Vec::new();
    for image in chosen {
        match engine.remove_image(&image).await {
            Ok(()) => {
                tracing::info!(image = %image, "removed unused image");
                tracked.remove(&image);
                removed.push(image);
            }
            Err(e) => tracing::debug!(image = %image, cause = %e, "image not removed (in use?)"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_unreferenced_old_enough_first_capped() {
        let used: BTreeMap<String, u64> = [("a", 100), ("b", 50), ("c", 10), ("d", 990), ("e", 20)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let referenced: BTreeSet<String> = ["e".to_string()].into();
        // now 1000, minimum age 100: d (10 ms old) is too young, e is used.
        assert_eq!(select(&used, &referenced, 100, 2, 1000), vec!["c", "b"]);
        assert_eq!(
            select(&used, &referenced, 100, 10, 1000),
            vec!["c", "b", "a"]
        );
    }
}
