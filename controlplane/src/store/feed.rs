//! The change feed of one replica: reads the store's `changes` table in version order and
//! broadcasts each change to this replica's watchers.
//!
//! The store's change signal (a local write, or a Postgres NOTIFY from any replica) says "look
//! again"; the table says what changed. A periodic poll covers a notification lost while the
//! listener reconnects. Because versions are handed out in commit order, reading
//! `version > last` never skips a change.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::{Change, Store};

/// How many changes a slow watcher may fall behind before it is told to re-list.
const CHANNEL_CAPACITY: usize = 4096;
/// Poll even without a signal this often.
const POLL: Duration = Duration::from_secs(2);

/// A running feed. Dropping it stops the task.
pub struct Feed {
    tx: broadcast::Sender<Arc<Change>>,
    task: tokio::task::JoinHandle<()>,
}

impl Feed {
    /// Start following the store from its current version.
    pub async fn start(store: Arc<dyn Store>) -> Result<Self, super::StoreError> {
        let from = store.current_version().await?;
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        let task = tokio::spawn(run(store, from, tx.clone()));
        Ok(Self { tx, task })
    }

    /// Changes committed after this call (and possibly a few just before it: callers skip
    /// versions they already have).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(store: Arc<dyn Store>, mut last: u64, tx: broadcast::Sender<Arc<Change>>) {
    let signal = store.change_signal();
    loop {
        match store.changes_since(last, 1000).await {
            Ok(changes) => {
                let full = changes.len() == 1000;
                for change in changes {
                    last = change.resource_version;
                    // No receivers is fine: nobody is watching.
                    let _ = tx.send(Arc::new(change));
                }
                if full {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the change feed failed; retrying"),
        }
        let _ = tokio::time::timeout(POLL, signal.notified()).await;
    }
}
