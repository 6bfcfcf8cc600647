//! Wake-ups for the agent's loop: inotify (through `notify`) when it works, timeouts always.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};

/// Wakes the agent when something changes under the log root.
///
/// Events are not interpreted: any change means "poll the followers and rescan now". They are
/// coalesced into at most one pending wake-up, so a busy node (every log write is an event) costs
/// the watcher thread some work but never queues memory. The agent polls on a timer anyway, so a
/// watcher that cannot start (no inotify, watch limit reached, root missing) only costs latency:
/// it is logged and [`Watcher::wait`] then just sleeps until its timeout.
pub struct Watcher {
    /// Kept alive for its thread; `None` when watching failed and only timeouts remain.
    inner: Option<notify::RecommendedWatcher>,
    rx: Receiver<()>,
    /// Keeps the channel open without a watcher, so `wait` sleeps instead of failing at once.
    _tx: SyncSender<()>,
}

impl Watcher {
    /// Watches `root` recursively; never fails, degrades to timeouts with a warning.
    pub fn new(root: &Path) -> Self {
        // One slot: a full channel already means "something changed".
        let (tx, rx) = sync_channel(1);
        let wake = tx.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            // Opens and closes include our own reads: waking on them would spin the agent.
            if let Ok(event) = &event {
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
            }
            // Errors (e.g. the kernel queue overflowed) wake too: a rescan recovers from them.
            let _ = wake.try_send(());
        };
        let inner = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(root, RecursiveMode::Recursive)?;
            Ok(watcher)
        });
        let inner = match inner {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(
                    path = %root.display(),
                    error = %e,
                    "Could not watch the log directory; falling back to polling."
                );
                None
            }
        };
        Self { inner, rx, _tx: tx }
    }

    /// False when the watcher could not start and [`Watcher::wait`] only sleeps.
    pub fn is_watching(&self) -> bool {
        self.inner.is_some()
    }

    /// Blocks until a filesystem event arrives or `timeout` passes; true if an event arrived.
    /// Drains queued events, so the next call waits for a new change.
    pub fn wait(&self, timeout: Duration) -> bool {
        if self.rx.recv_timeout(timeout).is_err() {
            return false;
        }
        while self.rx.try_recv().is_ok() {}
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Long enough for the slowest CI machine; the test returns as soon as the event arrives.
    const GENEROUS: Duration = Duration::from_secs(30);

    #[test]
    fn wakes_on_new_files_and_directories() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("ns_a_u/istio-proxy")).unwrap();
        let w = Watcher::new(root.path());
        assert!(w.is_watching());
        fs::write(root.path().join("ns_a_u/istio-proxy/0.log"), b"x\n").unwrap();
        assert!(w.wait(GENEROUS));
        // A new pod directory wakes it too.
        fs::create_dir_all(root.path().join("ns_b_u/istio-proxy")).unwrap();
        assert!(w.wait(GENEROUS));
    }

    #[test]
    fn times_out_without_changes() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("0.log"), b"x\n").unwrap();
        let w = Watcher::new(root.path());
        // Reading does not count as a change.
        fs::read(root.path().join("0.log")).unwrap();
        assert!(!w.wait(Duration::from_millis(200)));
    }

    #[test]
    fn missing_root_degrades_to_sleeping() {
        let root = tempfile::tempdir().unwrap();
        let w = Watcher::new(&root.path().join("missing"));
        assert!(!w.is_watching());
        let t = std::time::Instant::now();
        assert!(!w.wait(Duration::from_millis(50)));
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
