//! Task state changes on their way up: every change the supervisor
//! publishes is numbered with this agent's own sequence, kept in
//! `ECS_DATADIR/reports.json` until the control endpoint acknowledges it,
//! and sent in order, in batches, again until acknowledged. An agent
//! restarted meanwhile sends what was not acknowledged, and then the
//! current state of every task (the supervisor publishes it again at
//! start), so nothing is lost.

use crate::changes::Changes;
use dockhand_model::protocol::MAX_REPORT_BATCH;
use dockhand_model::task::TaskStateChange;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const FILE: &str = "reports.json";
/// Reports kept at most while the control endpoint cannot be reached; the
/// oldest go first (the current state is sent again after a reconnect).
const MAX_KEPT: usize = 20_000;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// The sequence the next report gets.
    next: u64,
    pending: Vec<TaskStateChange>,
}

/// The reports not yet acknowledged.
pub struct Outbox {
    dir: PathBuf,
    saved: Saved,
    /// The last change of the supervisor's stream taken in.
    read: u64,
}

impl Outbox {
    /// Opens the outbox of `dir`. Sequences continue from the saved one,
    /// and never from below the clock in microseconds, so they grow across
    /// restarts even if the file was lost (no agent reports a million
    /// changes a second).
    pub fn open(dir: &Path) -> Outbox {
        let path = dir.join(FILE);
        let mut saved: Saved = match crate::files::read_regular(&path, 256 * 1024 * 1024) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), cause = %e, "unreadable report outbox; starting a new one (the current state is reported again)");
                Saved::default()
            }),
            Err(_) => Saved::default(),
        };
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        saved.next = saved.next.max(now_us).max(1);
        Outbox {
            dir: dir.to_path_buf(),
            saved,
            read: 0,
        }
    }

    /// Takes in the changes published since the last call; returns how many.
    pub fn take(&mut self, changes: &Changes) -> usize {
        let mut n = 0;
        loop {
            let (list, oldest) = changes.since(self.read, 1000);
            if oldest > self.read + 1 && self.read > 0 {
                tracing::warn!(missed = oldest - self.read - 1, "task state changes were dropped before they could be queued; the next pass reports the current state");
            }
            if list.is_empty() {
                break;
            }
            for c in list {
                self.read = c.report.sequence;
                let mut r = c.report;
                // The control endpoint knows the task by its id.
                r.task = c.task_id;
                r.sequence = self.saved.next;
                self.saved.next += 1;
                self.saved.pending.push(r);
                n += 1;
            }
        }
        if self.saved.pending.len() > MAX_KEPT {
            let drop = self.saved.pending.len() - MAX_KEPT;
            self.saved.pending.drain(..drop);
        }
        if n > 0 {
            self.save();
        }
        n
    }

    /// The next batch to send, oldest first.
    pub fn batch(&self) -> &[TaskStateChange] {
        let n = self.saved.pending.len().min(MAX_REPORT_BATCH);
        &self.saved.pending[..n]
    }

    pub fn is_empty(&self) -> bool {
        self.saved.pending.is_empty()
    }

    /// Drops what the control endpoint acknowledged.
    pub fn acknowledged(&mut self, up_to: u64) {
        let before = self.saved.pending.len();
        self.saved.pending.retain(|r| r.sequence > up_to);
        if self.saved.pending.len() != before {
            self.save();
        }
    }

    fn save(&self) {
        let bytes = serde_json::to_vec(&self.saved).unwrap_or_default();
        if let Err(e) = crate::store::write_atomic(&self.dir, FILE, &bytes) {
            tracing::warn!(cause = %e, "cannot save the report outbox; reports are kept in memory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Change;
    use dockhand_model::task::{HealthStatus, TaskStatus};

    fn change(task: &str, status: TaskStatus) -> Change {
        Change {
            service: "web".into(),
            task_id: task.into(),
            revision: 1,
            desired: TaskStatus::Running,
            report: TaskStateChange {
                sequence: 0,
                task: format!("arn:local/{task}"),
                status,
                reason: None,
                stop_code: None,
                health_status: HealthStatus::Unknown,
                containers: Vec::new(),
                at_ms: 1,
                engine_failure: false,
            },
        }
    }

    #[test]
    fn reports_survive_a_restart_until_acknowledged_and_sequences_grow() {
        let dir =
            std::env::temp_dir().join(format!("dockhand-outbox-{}", crate::store::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let changes = Changes::default();
        changes.push(change("a", TaskStatus::Pending));
        changes.push(change("a", TaskStatus::Running));
        let mut o = Outbox::open(&dir);
        assert_eq!(o.take(&changes), 2);
        let seqs: Vec<u64> = o.batch().iter().map(|r| r.sequence).collect();
        assert_eq!(seqs[1], seqs[0] + 1);
        assert_eq!(o.batch()[0].task, "a", "reported by task id");
        o.acknowledged(seqs[0]);
        drop(o);
        // A new agent process: what was not acknowledged is still there.
        let mut o = Outbox::open(&dir);
        assert_eq!(o.batch().len(), 1);
        assert_eq!(o.batch()[0].sequence, seqs[1]);
        let fresh = Changes::default();
        fresh.push(change("b", TaskStatus::Running));
        o.take(&fresh);
        assert!(o.batch()[1].sequence > seqs[1]);
        // A lost file still never reuses a sequence.
        std::fs::remove_file(dir.join(FILE)).unwrap();
        let o2 = Outbox::open(&dir);
        assert!(o2.saved.next > seqs[1]);
        std::fs::remove_dir_all(dir).ok();
    }
}
