//! Durable agent state in `ECS_DATADIR/state.json`.
//!
//! What must outlive the agent process: the instance id (it labels every
//! container, so a restarted agent finds its own), the revision numbers given
//! to each task-definition digest, each task's desired status (a stop the
//! agent began is finished by the next agent), crash counts and backoff, and
//! each service's last good spec (so a broken service file does not lose it).
//!
//! Every save writes a temporary file, fsyncs it, renames it over the old
//! one and fsyncs the directory: a crash at any point leaves either the old or
//! the new state, never a torn one. The state is small (a record per task), so
//! rewriting it whole is cheaper than running an embedded database.
//!
//! The instance id is also kept alone in `instance-id`, written once. If
//! `state.json` is ever unreadable (a disk error, a hand edit), it is moved
//! aside and the state is rebuilt from the engine's labels under the same
//! instance id, so the host's containers are adopted, not orphaned; the
//! agent says so in its log and in `dockhand status`.

use dockhand_model::ServiceSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "state.json";
const INSTANCE_ID_FILE: &str = "instance-id";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid agent state ({source}) and no instance-id file says which containers are this agent's; move it away to start with a new instance id, which orphans this host's containers")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} is locked by another running agent; one agent per ECS_DATADIR")]
    Locked { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether the agent wants a task running or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DesiredStatus {
    Running,
    Stopped,
}

/// What the agent knows of one task beyond what Docker's labels say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub service: String,
    pub family: String,
    pub revision: u32,
    pub digest: String,
    pub desired: DesiredStatus,
    /// Why the task was stopped, for status and events.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// Remove the containers once stopped (scale-in, removed service,
    /// replaced revision); crashed tasks stay for inspection until cleanup.
    #[serde(default)]
    pub remove_when_stopped: bool,
    /// The task's failure was counted toward its service's crash backoff.
    #[serde(default)]
    pub crash_counted: bool,
    /// Unix milliseconds when the agent created the task.
    pub created_at_ms: u64,
    /// In-place restarts by the restart policy, per container name.
    #[serde(default)]
    pub restarts: BTreeMap<String, u32>,
}

/// Per-service state that must survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The last spec that parsed and validated.
    #[serde(default)]
    pub last_good: Option<ServiceSpec>,
    /// Failures since the last task that ran long enough to reset backoff.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// No replacement task starts before this (unix milliseconds).
    #[serde(default)]
    pub next_start_at_ms: u64,
    /// Tasks of this service that failed, ever.
    #[serde(default)]
    pub total_failures: u64,
    /// Why the last task failed.
    #[serde(default)]
    pub last_failure: Option<String>,
    /// The last spec whose revision reached its desired count, all healthy,
    /// with no older task left: what a failed rollout goes back to.
    #[serde(default)]
    pub stable: Option<ServiceSpec>,
    /// The task-definition digest being rolled out, and its task failures.
    #[serde(default)]
    pub rollout_digest: Option<String>,
    #[serde(default)]
    pub rollout_failures: u32,
    /// A digest whose rollout failed (the circuit breaker tripped), and why.
    /// It is not tried again until the task definition changes.
    #[serde(default)]
    pub failed_digest: Option<String>,
    #[serde(default)]
    pub failed_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub instance_id: String,
    /// family -> task-definition digests; revision N is at index N-1.
    #[serde(default)]
    pub revisions: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskRecord>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRecord>,
    /// Images this agent pulled or ran → when last used (unix ms): the
    /// candidates for image cleanup.
    #[serde(default)]
    pub images: BTreeMap<String, u64>,
}

impl ServiceRecord {
    /// What the service runs for `file_spec`: the file's spec, unless its
    /// rollout failed (the circuit breaker tripped), then the stable one.
    pub fn runs<'a>(&'a self, file_spec: &'a ServiceSpec) -> &'a ServiceSpec {
        match (&self.failed_digest, &self.stable) {
            (Some(failed), Some(stable)) if file_spec.task_definition.digest() == *failed => stable,
            _ => file_spec,
        }
    }
}

impl State {
    /// An empty state for instance `id`.
    pub fn new(id: String) -> State {
        State {
            instance_id: id,
            revisions: BTreeMap::new(),
            tasks: BTreeMap::new(),
            services: BTreeMap::new(),
            images: BTreeMap::new(),
        }
    }

    /// The revision number of `digest` in `family`, numbering it if new.
    pub fn revision_of(&mut self, family: &str, digest: &str) -> u32 {
        let list = self.revisions.entry(family.to_string()).or_default();
        let index = match list.iter().position(|d| d == digest) {
            Some(i) => i,
            None => {
                list.push(digest.to_string());
                list.len() - 1
            }
        };
        u32::try_from(index + 1).unwrap_or(u32::MAX)
    }
}

/// The state and where it lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Held for the store's life: a second agent on the same directory
    /// would fight this one over the same containers.
    _lock: std::fs::File,
    pub state: State,
    saved: State,
    /// Set when `state.json` was unreadable and the state was rebuilt:
    /// what happened, for the log and the status screen.
    pub recovered: Option<String>,
}

impl Store {
    /// Opens the state in `dir`, creating the directory and a new instance
    /// id on first start.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Write {
                path: lock_path.clone(),
                source,
            })?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked { path: lock_path });
        }
        let id_path = dir.join(INSTANCE_ID_FILE);
        let known_id = std::fs::read_to_string(&id_path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
        let path = dir.join(STATE_FILE);
        let mut recovered = None;
        let mut fresh = false;
        let state = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(state) => state,
                Err(source) => {
                    let Some(id) = known_id.clone() else {
                        return Err(StoreError::Corrupt { path, source });
                    };
                    let secs = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let aside = dir.join(format!("{STATE_FILE}.corrupt-{secs}"));
                    let moved = match std::fs::rename(&path, &aside) {
                        Ok(()) => format!("moved to {}", aside.display()),
                        Err(e) => format!("could not be moved aside ({e})"),
                    };
                    let why = format!(
                        "{} was not valid agent state ({source}); it {moved}; the state was rebuilt from the engine's labels (instance {id}): tasks are adopted, crash counts and the last good specs are lost",
                        path.display()
                    );
                    tracing::error!("{why}");
                    recovered = Some(why);
                    fresh = true;
                    State::new(id)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fresh = true;
                State::new(known_id.clone().unwrap_or_else(|| random_hex(16)))
            }
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        // The identity is durable before any container carries it.
        if known_id.as_deref() != Some(state.instance_id.as_str()) {
            write_atomic(dir, INSTANCE_ID_FILE, state.instance_id.as_bytes())?;
        }
        let mut store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            saved: state.clone(),
            state,
            recovered,
        };
        if fresh {
            // Not fatal: the identity is saved, and a full disk must not
            // stop the agent from serving what runs.
            if let Err(e) = store.save_forced() {
                tracing::error!(cause = %e, "cannot write the agent state");
            }
        }
        Ok(store)
    }

    /// Writes the state if it changed since the last save.
    pub fn save(&mut self) -> Result<(), StoreError> {
        if self.state == self.saved {
            return Ok(());
        }
        self.save_forced()
    }

    fn save_forced(&mut self) -> Result<(), StoreError> {
        // Serializing plain data with string keys cannot fail.
        let bytes = serde_json::to_vec_pretty(&self.state).unwrap_or_default();
        write_atomic(&self.dir, STATE_FILE, &bytes)?;
        self.saved = self.state.clone();
        Ok(())
    }
}

/// Writes `name` in `dir` whole: a temporary file, fsynced, renamed over
/// the old one, then the directory fsynced. A crash at any point leaves the
/// old or the new content, never a torn one.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let write_err = |source| StoreError::Write {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(write_err)?;
    f.write_all(bytes).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(write_err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)?;
    Ok(())
}

/// `n` random bytes from the kernel, as lowercase hex.
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    // /dev/urandom exists on every Linux the agent supports; without it the
    // fallback still gives ids unique per process and moment.
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            ^ u128::from(std::process::id());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dockhand-store-{name}-{}", random_hex(6)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn instance_id_survives_reopen() {
        let dir = temp_dir("reopen");
        let id = Store::open(&dir).unwrap().state.instance_id;
        assert_eq!(id.len(), 32);
        assert_eq!(Store::open(&dir).unwrap().state.instance_id, id);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn one_agent_per_data_dir() {
        let dir = temp_dir("lock");
        let first = Store::open(&dir).unwrap();
        assert!(matches!(Store::open(&dir), Err(StoreError::Locked { .. })));
        drop(first);
        assert!(Store::open(&dir).is_ok(), "the lock goes with its holder");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_leftover_temp_file_does_not_replace_good_state() {
        let dir = temp_dir("torn");
        let mut s = Store::open(&dir).unwrap();
        s.state.revision_of("web", "aaaa");
        s.save().unwrap();
        // A crash in the middle of the next save leaves a torn temp file.
        std::fs::write(dir.join("state.json.tmp"), b"{\"instance_id\": \"trunc").unwrap();
        drop(s);
        let again = Store::open(&dir).unwrap();
        assert_eq!(again.state.revisions["web"], vec!["aaaa".to_string()]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn corrupt_state_without_an_identity_is_an_error_not_a_new_identity() {
        let dir = temp_dir("corrupt");
        std::fs::write(dir.join("state.json"), b"not json").unwrap();
        let err = Store::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn corrupt_state_is_moved_aside_and_rebuilt_under_the_same_identity() {
        let dir = temp_dir("rebuild");
        let id = {
            let mut s = Store::open(&dir).unwrap();
            s.state.revision_of("web", "aaaa");
            s.save().unwrap();
            s.state.instance_id.clone()
        };
        std::fs::write(dir.join("state.json"), b"{\"instance_id\": tru").unwrap();
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.state.instance_id, id);
        assert!(s.state.revisions.is_empty());
        let why = s.recovered.clone().unwrap();
        assert!(why.contains("was not valid agent state"), "{why}");
        let aside = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            });
        assert!(aside, "the bad file is kept for a look");
        drop(s);
        // And the rebuilt state is a good state from then on.
        assert!(Store::open(&dir).unwrap().recovered.is_none());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn revisions_are_numbered_by_content() {
        let mut s = State::new(String::new());
        assert_eq!(s.revision_of("web", "a"), 1);
        assert_eq!(s.revision_of("web", "b"), 2);
        assert_eq!(s.revision_of("web", "a"), 1);
        assert_eq!(s.revision_of("api", "a"), 1);
    }
}
