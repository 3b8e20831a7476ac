//! Task state changes, published as an ordered stream.
//!
//! The supervisor compares each task's state (its status, health, and each
//! container's status and exit code) with what it published last, after
//! every reconcile, and appends a [`TaskStateChange`] for each difference.
//! Sequence numbers only grow, so a reader asks for what came after the last
//! one it saw. The local API serves the stream (`/v1/changes`), metrics
//! count it, and a managed agent sends it upward.
//!
//! The log keeps the most recent [`KEEP`] changes in memory; a reader that
//! fell further behind is told where the log now starts and reads the
//! current state instead.

use dockhand_model::task::{TaskStateChange, TaskStatus};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::watch;

/// Changes kept for readers.
pub const KEEP: usize = 4096;

/// One published change, with what a local reader needs to place it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub service: String,
    pub task_id: String,
    pub revision: u32,
    pub desired: TaskStatus,
    pub report: TaskStateChange,
}

pub struct Changes {
    log: Mutex<VecDeque<Change>>,
    last: watch::Sender<u64>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            log: Mutex::new(VecDeque::new()),
            last: watch::channel(0).0,
        }
    }
}

impl Changes {
    /// Appends a change, numbering it; returns its sequence number.
    pub fn push(&self, mut change: Change) -> u64 {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let seq = *self.last.borrow() + 1;
        change.report.sequence = seq;
        crate::metrics::state_change(change.report.status);
        if log.len() == KEEP {
            log.pop_front();
        }
        log.push_back(change);
        self.last.send_replace(seq);
        seq
    }

    /// Changes after `after`, at most `limit`, and the sequence number of
    /// the oldest change still kept (0 when none).
    pub fn since(&self, after: u64, limit: usize) -> (Vec<Change>, u64) {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = log.front().map_or(0, |c| c.report.sequence);
        let out = log
            .iter()
            .filter(|c| c.report.sequence > after)
            .take(limit)
            .cloned()
            .collect();
        (out, oldest)
    }

    /// The last sequence number handed out; changes with each push.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    pub fn last(&self) -> u64 {
        *self.last.borrow()
    }
}
