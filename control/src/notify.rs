//! Wake-ups for agents' polls: each container instance has a watch of its
//! desired sequence. A change that alters an instance's task set bumps the
//! sequence in the database and, after commit, here, so a poll held open
//! answers at once. On PostgreSQL, polls also look at the database every
//! [`RECHECK`] (a change made by another replica of the control endpoint
//! reaches them that way); an SQLite file has one process, whose changes
//! all come through here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// How often a held poll looks at the database for changes it was not told
/// about.
pub const RECHECK: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct Notifier {
    instances: Mutex<HashMap<String, watch::Sender<i64>>>,
}

impl Notifier {
    /// Tells the polls of `arn` that its desired sequence is now `seq`.
    pub fn desired_changed(&self, arn: &str, seq: i64) {
        let map = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(arn) {
            tx.send_if_modified(|v| {
                if seq > *v {
                    *v = seq;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// A receiver of `arn`'s desired sequence.
    pub fn subscribe(&self, arn: &str, current: i64) -> watch::Receiver<i64> {
        let mut map = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(arn.to_string())
            .or_insert_with(|| watch::channel(current).0)
            .subscribe()
    }
}
