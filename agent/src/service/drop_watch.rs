//! Wakes a file drop resource's pulls when something changes in its directory (`notify`:
//! inotify on Linux), so a dropped file is read within its `settle` interval rather than at
//! the next scheduled pull. The schedule stays the fallback: where events are lost (network
//! filesystems, a watch that cannot be set), the resource is still polled every `every`.

use std::sync::Arc;
use std::time::Duration;

use exchange_connectors::files::Ready;
use tokio::sync::Notify;

use crate::config::FileResource;

/// A watch on one resource's drop directory.
pub struct DropWatch {
    _watcher: notify::RecommendedWatcher,
    changed: Arc<Notify>,
    /// How long after a change the file may be complete.
    settle: Duration,
}

impl DropWatch {
    /// Watches the resource's directory (created if missing); `None`, with a warning, when it
    /// cannot be watched: the schedule then polls alone.
    pub fn new(code: &str, file: &FileResource) -> Option<DropWatch> {
        use notify::Watcher;
        let dir = file.dir();
        let changed = Arc::new(Notify::new());
        let signal = changed.clone();
        let watched = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                        signal.notify_one();
                    }
                })
                .map_err(|e| e.to_string())
            })
            .and_then(|mut w| {
                w.watch(&dir, notify::RecursiveMode::NonRecursive)
                    .map(|()| w)
                    .map_err(|e| e.to_string())
            });
        match watched {
            Ok(watcher) => Some(DropWatch {
                _watcher: watcher,
                changed,
                settle: match file.drop.ready {
                    Ready::Stable(settle) => settle,
                    Ready::Marker => Duration::ZERO,
                },
            }),
            Err(error) => {
                tracing::warn!(resource = %code, directory = %dir.display(), %error, "Cannot watch the drop directory; files are read at the scheduled pulls only.");
                None
            }
        }
    }

    /// Returns once something changed in the directory and the settle interval (plus a
    /// margin for the file system's clock) has passed; never without a watch.
    pub async fn changed(watch: Option<&DropWatch>) {
        match watch {
            Some(w) => {
                w.changed.notified().await;
                tokio::time::sleep(w.settle + Duration::from_millis(100)).await;
            }
            None => std::future::pending().await,
        }
    }
}
