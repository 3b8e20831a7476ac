//! Where the desired state comes from.
//!
//! The supervisor asks a [`DesiredSource`] for the services this host should
//! run and does not care where they come from. Today the only source is
//! [`ServiceDir`], the standalone mode's directory of service files; the
//! control endpoint (later) is another source behind the same trait.

use crate::taskdef::{ServiceSpec, SpecError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The services this host should run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub services: BTreeMap<String, ServiceSpec>,
    /// Services whose definition exists but is invalid right now. Their
    /// running tasks are left as they are (or kept at their last good spec).
    pub broken: BTreeSet<String>,
}

/// A source of desired state.
pub trait DesiredSource: Send {
    /// Returns the desired state if it changed since the last call (always
    /// on the first call).
    fn poll(&mut self) -> Option<Desired>;
}

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

/// Reads `<serviceName>.json` files from a directory.
///
/// A file is re-read when its size or modification time changes. Hidden
/// files and files not ending in `.json` are skipped, so an editor's or an
/// atomic installer's temporary file is never half-read.
pub struct ServiceDir {
    dir: PathBuf,
    fingerprint: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

/// The outcome of reading a whole directory once.
#[derive(Debug, Default)]
pub struct DirReading {
    pub desired: Desired,
    pub errors: Vec<FileError>,
    pub warnings: Vec<(PathBuf, SpecError)>,
}

impl ServiceDir {
    pub fn new(dir: PathBuf) -> ServiceDir {
        ServiceDir {
            dir,
            fingerprint: None,
        }
    }

    fn current_fingerprint(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let mut list: Vec<_> = service_files(&self.dir)
            .into_iter()
            .map(|p| {
                let meta = std::fs::metadata(&p).ok();
                let len = meta.as_ref().map_or(0, |m| m.len());
                let mtime = meta.and_then(|m| m.modified().ok());
                (p, len, mtime)
            })
            .collect();
        list.sort();
        list
    }
}

/// The service files in `dir`, sorted; a missing directory has none.
fn service_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".json") && p.is_file()
        })
        .collect();
    files.sort();
    files
}

/// Reads and validates one service file; its name must be `<serviceName>.json`.
pub fn read_service_file(path: &Path) -> Result<crate::taskdef::Parsed, FileError> {
    let fail = |why: String| FileError {
        file: path.to_path_buf(),
        errors: vec![SpecError {
            path: String::new(),
            why,
        }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let parsed = ServiceSpec::parse(&text).map_err(|errors| FileError {
        file: path.to_path_buf(),
        errors,
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem != parsed.spec.service_name {
        return Err(FileError {
            file: path.to_path_buf(),
            errors: vec![SpecError {
                path: "serviceName".into(),
                why: format!(
                    "is {:?} but the file is named {stem:?}.json; name the file <serviceName>.json",
                    parsed.spec.service_name
                ),
            }],
        });
    }
    Ok(parsed)
}

/// Reads every service file in `dir`.
pub fn read_dir(dir: &Path) -> DirReading {
    let mut reading = DirReading::default();
    for path in service_files(dir) {
        match read_service_file(&path) {
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
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    reading.desired.broken.insert(stem.to_string());
                }
                reading.errors.push(e);
            }
        }
    }
    reading
}

impl DesiredSource for ServiceDir {
    fn poll(&mut self) -> Option<Desired> {
        let fp = self.current_fingerprint();
        if self.fingerprint.as_ref() == Some(&fp) {
            return None;
        }
        self.fingerprint = Some(fp);
        let reading = read_dir(&self.dir);
        for (file, w) in &reading.warnings {
            tracing::warn!(file = %file.display(), "{w}");
        }
        for e in &reading.errors {
            for line in e.to_string().lines() {
                tracing::error!("service file skipped: {line}");
            }
        }
        Some(reading.desired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"serviceName": "web", "desiredCount": 2, "taskDefinition": {
        "family": "web", "containerDefinitions": [{"name": "app", "image": "x", "memory": 64}]}}"#;

    #[test]
    fn bad_and_misnamed_files_are_skipped_and_marked_broken() {
        let dir =
            std::env::temp_dir().join(format!("dockhand-dir-{}", crate::store::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("web.json"), GOOD).unwrap();
        std::fs::write(dir.join("api.json"), "{").unwrap();
        std::fs::write(dir.join("other.json"), GOOD).unwrap();
        std::fs::write(dir.join(".web.json.tmp"), "{").unwrap();
        std::fs::write(dir.join("README"), "x").unwrap();

        let mut src = ServiceDir::new(dir.clone());
        let d = src.poll().unwrap();
        assert_eq!(d.services.keys().collect::<Vec<_>>(), vec!["web"]);
        assert_eq!(d.broken.iter().collect::<Vec<_>>(), vec!["api", "other"]);
        assert!(
            src.poll().is_none(),
            "unchanged directory reports no change"
        );

        let errs = read_dir(&dir).errors;
        assert!(errs[1]
            .to_string()
            .contains("other.json: serviceName: is \"web\" but the file is named \"other\".json"));
        std::fs::remove_dir_all(dir).ok();
    }
}
