//! Standalone mode's source: a directory of `<serviceName>.json` files.
//!
//! A background task looks at the directory every quarter second (file
//! I/O runs on the blocking pool, never on the runtime's threads) and sends
//! the desired state when a file's name, size or modification time changed.
//! A directory that is missing or unreadable is [`DesiredState::Unknown`]
//! (a late mount, an operator moving it), never "no services"; a directory
//! that exists and is empty is empty.
//!
//! Hidden files and files not ending in `.json` are skipped, so an editor's
//! or an atomic installer's temporary file is never half-read. A `*.json`
//! entry that is not a regular file (a FIFO, a device, a directory, a
//! dangling symlink) is reported and marks its service broken.

use super::{Desired, DesiredState};
use crate::files::{not_regular, read_regular};
use dockhand_model::service::Parsed;
use dockhand_model::{ServiceSpec, SpecError};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often the directory is looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A service file larger than this is refused (they are a few KiB).
pub const MAX_SERVICE_FILE_BYTES: u64 = 1024 * 1024;

/// A problem with one service file: reported and skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    pub file: PathBuf,
    pub errors: Vec<SpecError>,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {e}", self.file.display())?;
        }
        Ok(())
    }
}

/// The outcome of reading a whole directory once.
#[derive(Debug, Default)]
pub struct DirReading {
    pub desired: Desired,
    pub errors: Vec<FileError>,
    pub warnings: Vec<(PathBuf, SpecError)>,
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The `*.json` entries of `dir`, sorted; an error if the directory
/// cannot be listed.
fn service_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".json")
        })
        .collect();
    files.sort();
    Ok(files)
}

fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    Ok(service_files(dir)?
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let mtime = meta.and_then(|m| m.modified().ok());
            (p, len, mtime)
        })
        .collect())
}

/// Reads and validates one service file; its name must be `<serviceName>.json`.
pub fn read_service_file(path: &Path) -> Result<Parsed, FileError> {
    let fail = |why: String| FileError {
        file: path.to_path_buf(),
        errors: vec![SpecError::new("", why)],
    };
    let text = read_regular(path, MAX_SERVICE_FILE_BYTES)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let parsed = ServiceSpec::parse(&text).map_err(|errors| FileError {
        file: path.to_path_buf(),
        errors,
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem != parsed.spec.service_name {
        return Err(FileError {
            file: path.to_path_buf(),
            errors: vec![SpecError::new(
                "serviceName",
                format!(
                    "is {:?} but the file is named {stem:?}.json; name the file <serviceName>.json",
                    parsed.spec.service_name
                ),
            )],
        });
    }
    Ok(parsed)
}

/// Reads every service file in `dir`; `None` if the directory cannot be
/// listed (desired state unknown).
pub fn read_dir(dir: &Path) -> Option<DirReading> {
    let files = service_files(dir).ok()?;
    let mut reading = DirReading::default();
    for path in files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let result = match not_regular(&path) {
            Some(why) => Err(FileError {
                file: path.clone(),
                errors: vec![SpecError::new("", why)],
            }),
            None => read_service_file(&path),
        };
        match result {
            Ok(parsed) => {
                for w in parsed.warnings {
                    reading.warnings.push((path.clone(), w));
                }
                reading
                    .desired
                    .services
                    .insert(parsed.spec.service_name.clone(), parsed.spec);
            }
            Err(e) => {
                let first = e
                    .errors
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                reading.desired.broken.insert(stem, first);
                reading.errors.push(e);
            }
        }
    }
    Some(reading)
}

/// Reads `dir` once and turns it into a desired state, logging what is
/// wrong with it.
fn read_state(dir: &Path) -> DesiredState {
    match read_dir(dir) {
        None => {
            tracing::warn!(dir = %dir.display(), "services directory is missing or unreadable: desired state unknown; running tasks are held as they are");
            DesiredState::Unknown
        }
        Some(reading) => {
            for (file, w) in &reading.warnings {
                tracing::warn!(file = %file.display(), "{w}");
            }
            for e in &reading.errors {
                for line in e.to_string().lines() {
                    tracing::error!("service file skipped: {line}");
                }
            }
            DesiredState::Known(reading.desired)
        }
    }
}

/// Watches `dir` and sends its desired state on `tx` at start and on every
/// change, until the receiver is gone.
pub async fn watch(dir: PathBuf, tx: tokio::sync::watch::Sender<DesiredState>) {
    let mut last: Option<std::io::Result<Fingerprint>> = None;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => return,
        }
        let d = dir.clone();
        let Ok(fp) = tokio::task::spawn_blocking(move || fingerprint(&d)).await else {
            continue;
        };
        let same = match (&last, &fp) {
            (Some(Ok(a)), Ok(b)) => a == b,
            (Some(Err(_)), Err(_)) => true,
            _ => false,
        };
        if same {
            continue;
        }
        last = Some(fp);
        let d = dir.clone();
        let Ok(state) = tokio::task::spawn_blocking(move || read_state(&d)).await else {
            continue;
        };
        tx.send_if_modified(|current| {
            if *current == state {
                false
            } else {
                *current = state;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"serviceName": "web", "desiredCount": 2, "taskDefinition": {
        "family": "web", "containerDefinitions": [{"name": "app", "image": "x", "memory": 64}]}}"#;

    fn temp_dir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dockhand-dir-{}", crate::store::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn bad_and_misnamed_files_are_skipped_and_marked_broken() {
        let dir = temp_dir();
        std::fs::write(dir.join("web.json"), GOOD).unwrap();
        std::fs::write(dir.join("api.json"), "{").unwrap();
        std::fs::write(dir.join("other.json"), GOOD).unwrap();
        std::fs::write(dir.join(".web.json.tmp"), "{").unwrap();
        std::fs::write(dir.join("README"), "x").unwrap();
        std::fs::create_dir(dir.join("sub.json")).unwrap();

        let r = read_dir(&dir).unwrap();
        assert_eq!(r.desired.services.keys().collect::<Vec<_>>(), vec!["web"]);
        assert_eq!(
            r.desired.broken.keys().collect::<Vec<_>>(),
            vec!["api", "other", "sub"]
        );
        assert!(r.desired.broken["sub"].contains("is a directory, not a regular file"));
        assert!(r.errors[1]
            .to_string()
            .contains("other.json: serviceName: is \"web\" but the file is named \"other\".json"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_missing_directory_is_unknown_and_an_empty_one_is_empty() {
        let dir = temp_dir();
        assert_eq!(read_state(&dir), DesiredState::Known(Desired::default()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_state(&dir), DesiredState::Unknown);
    }

    #[tokio::test]
    async fn the_watcher_sends_changes_only() {
        let dir = temp_dir();
        let (tx, mut rx) = crate::desired::channel();
        let task = tokio::spawn(watch(dir.clone(), tx));
        rx.changed().await.unwrap();
        assert_eq!(
            *rx.borrow_and_update(),
            DesiredState::Known(Desired::default())
        );
        std::fs::write(dir.join("web.json"), GOOD).unwrap();
        rx.changed().await.unwrap();
        let DesiredState::Known(d) = rx.borrow_and_update().clone() else {
            panic!("known")
        };
        assert_eq!(d.services.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), DesiredState::Unknown);
        drop(rx);
        task.await.unwrap();
    }
}
