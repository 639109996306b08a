//! The file-mode source: a cluster folder, watched for changes.
//!
//! The folder itself is watched (not its files: editors save by writing a
//! temporary file and renaming it over the old one). Events about hidden
//! files, subfolders and files that are not input are dropped; the others
//! only say "look again": after a short quiet period the folder is read again
//! by [`FolderState::poll`], which compares contents, so a burst of events
//! becomes one [`Update`], and an edit that changes nothing sends none.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meshpeer_model::Change;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::file::{FolderState, LoadError, check_cluster_dir, is_input_name};
use crate::source::{ClusterSource, SourceError, Update};

/// Quiet time after the last file event before the folder is read again.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);

/// A burst of events that never goes quiet (a file written continuously) is
/// still read at least this many debounce periods after it started.
const MAX_BURST_PERIODS: u32 = 10;

/// Quiet time after events that deliver whole files (a rename into place, a
/// close after writing, a removal): no partial file can be read then.
const SETTLE: Duration = Duration::from_millis(2);

/// How long a manifest rewritten in place with fewer objects must stay
/// unchanged before it is used (see [`FolderState::set_settle`]).
pub const DEFAULT_WRITE_SETTLE: Duration = Duration::from_secs(1);

/// What the watcher saw since the source last looked.
#[derive(Default)]
struct Seen {
    wake: Notify,
    /// An event of a write in progress (data written, file created): wait
    /// the whole debounce before reading.
    in_progress: std::sync::atomic::AtomicBool,
}

/// Reads the folder of `state` again and returns the changes since the last
/// read (nothing when nothing changed). What [`FileSource`] does after each
/// burst of file events; tests and a controller without a watcher can call
/// it directly.
pub fn poll_changes(state: &mut FolderState) -> Result<Vec<Change>, LoadError> {
    state.poll()
}

/// A cluster folder (`cluster.yaml` plus manifests) as a [`ClusterSource`].
///
/// Sends the whole folder first, then one [`Update`] per burst of edits
/// (bursts end after `debounce` without file events). A missing folder or a
/// missing or invalid `cluster.yaml` at start is an error; later problems
/// (bad documents, a broken `cluster.yaml`) are diagnostics and the last good
/// state is kept. A folder that is removed or moved while watched ends the
/// source with an error.
#[derive(Clone, Debug)]
pub struct FileSource {
    dir: PathBuf,
    debounce: Duration,
    settle: Duration,
}

impl FileSource {
    /// `debounce`: see [`DEFAULT_DEBOUNCE`]; in-place writes that shrink a
    /// file settle for [`DEFAULT_WRITE_SETTLE`].
    pub fn new(dir: PathBuf, debounce: Duration) -> Self {
        FileSource {
            dir,
            debounce,
            settle: DEFAULT_WRITE_SETTLE,
        }
    }

    /// How long a manifest rewritten in place with fewer objects than
    /// before must stay unchanged before it is used (slow writers: a
    /// truncate, a pause, the rest; zero: at once). A file renamed into
    /// place is used at once.
    pub fn with_write_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    async fn watch(self, tx: mpsc::Sender<Update>) -> Result<(), SourceError> {
        let dir = self.dir;
        check_cluster_dir(&dir)?;
        // Watch before reading, so that no edit falls between the two.
        let seen = Arc::new(Seen::default());
        let _watcher = start_watcher(&dir, seen.clone())?;

        let load_dir = dir.clone();
        let (mut state, initial) = blocking(&dir, move || {
            let state = FolderState::load(&load_dir)?;
            let initial = state.full_state();
            Ok((state, initial))
        })
        .await?;
        info!(
            folder = %dir.display(),
            cluster = %state.config().name,
            objects = state.objects().count(),
            diagnostics = state.diagnostics().len(),
            "cluster folder loaded"
        );
        state.set_settle(self.settle);
        if tx.send(Update { changes: initial }).await.is_err() {
            return Ok(());
        }

        let max_burst = self.debounce * MAX_BURST_PERIODS;
        let in_progress = || {
            seen.in_progress
                .swap(false, std::sync::atomic::Ordering::SeqCst)
        };
        loop {
            // A file held while it settles is read again when it may be
            // taken, events or not.
            let settle_at = state.next_check().map(Instant::from_std);
            let settling = async {
                match settle_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let woken = tokio::select! {
                () = tx.closed() => return Ok(()),
                () = seen.wake.notified() => true,
                () = settling => false,
            };
            if !woken {
                let (returned, changes) = blocking(&dir, move || {
                    let changes = state.poll();
                    Ok((state, changes))
                })
                .await?;
                state = returned;
                let changes = changes?;
                if !changes.is_empty() && tx.send(Update { changes }).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            // Wait until the burst is over: the debounce after writes in
            // progress, a short settle after whole-file events only.
            let start = Instant::now();
            let mut partial = in_progress();
            loop {
                let quiet = if partial {
                    self.debounce
                } else {
                    SETTLE.min(self.debounce)
                };
                let wait = quiet.min(max_burst.saturating_sub(start.elapsed()));
                if wait.is_zero() {
                    break;
                }
                tokio::select! {
                    () = tx.closed() => return Ok(()),
                    woke = tokio::time::timeout(wait, seen.wake.notified()) => {
                        partial |= in_progress();
                        if woke.is_err() {
                            break;
                        }
                    }
                }
            }
            let (returned, changes) = blocking(&dir, move || {
                let changes = state.poll();
                Ok((state, changes))
            })
            .await?;
            state = returned;
            let changes = changes?;
            debug!(folder = %dir.display(), changes = changes.len(), "folder read again");
            if changes.is_empty() {
                continue;
            }
            if tx.send(Update { changes }).await.is_err() {
                return Ok(());
            }
        }
    }
}

impl ClusterSource for FileSource {
    fn describe(&self) -> String {
        format!("folder {}", self.dir.display())
    }

    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Update>,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>> {
        Box::pin(self.watch(tx))
    }
}

/// Runs file reading off the async threads.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce() -> Result<T, LoadError> + Send + 'static,
) -> Result<T, SourceError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(SourceError::Watch {
            what: format!("folder {}", dir.display()),
            message: format!("reading the folder failed: {e}"),
        }),
    }
}

/// Watches `dir` (not its subfolders); every event that may concern the
/// cluster's input wakes `wake`.
fn start_watcher(dir: &Path, seen: Arc<Seen>) -> Result<notify::RecommendedWatcher, SourceError> {
    let watch_err = |e: notify::Error| SourceError::Watch {
        what: format!("folder {}", dir.display()),
        message: e.to_string(),
    };
    // notify reports absolute paths; compare against every form of `dir`.
    let mut forms = vec![dir.to_owned()];
    forms.extend(std::path::absolute(dir).ok());
    forms.extend(dir.canonicalize().ok());
    forms.dedup();
    let watched = dir.to_owned();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) if forms.iter().any(|d| concerns_input(d, &event)) => {
                if !delivers_whole_files(&event) {
                    seen.in_progress
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                seen.wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => {
                // Possibly lost events: read the folder again to be sure.
                warn!(folder = %watched.display(), error = %e, "file watch error");
                seen.in_progress
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                seen.wake.notify_one();
            }
        }
    })
    .map_err(watch_err)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(watch_err)?;
    Ok(watcher)
}

/// Events after which the files they name are complete: a rename into
/// place, a close after writing, a removal.
fn delivers_whole_files(event: &notify::Event) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    matches!(
        event.kind,
        EventKind::Modify(ModifyKind::Name(
            RenameMode::To | RenameMode::Both | RenameMode::From
        )) | EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Remove(_)
    )
}

/// Whether a file event may change the cluster's input: it is about
/// `cluster.yaml`, a manifest, or the folder itself, and it is not a mere
/// read (reading the folder must not trigger another read).
fn concerns_input(dir: &Path, event: &notify::Event) -> bool {
    if event.need_rescan() {
        return true;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    if event.paths.is_empty() {
        return true;
    }
    event.paths.iter().any(|p| {
        p == dir
            || (p.parent() == Some(dir)
                && p.file_name()
                    .is_some_and(|n| is_input_name(&n.to_string_lossy())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    #[test]
    fn only_events_about_input_count() {
        let dir = Path::new("/c");
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(concerns_input(dir, &event(modify, &["/c/a.yaml"])));
        assert!(concerns_input(dir, &event(modify, &["/c/cluster.yaml"])));
        assert!(concerns_input(dir, &event(modify, &["/c/a.json"])));
        assert!(!concerns_input(dir, &event(modify, &["/c/.a.yaml.swp"])));
        assert!(!concerns_input(dir, &event(modify, &["/c/notes.txt"])));
        assert!(!concerns_input(
            dir,
            &event(modify, &["/c/.meshpeer/x.yaml"])
        ));
        assert!(!concerns_input(dir, &event(modify, &["/c/sub/x.yaml"])));
        // An editor's save: temporary file renamed over the manifest.
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(concerns_input(
            dir,
            &event(rename, &["/c/.a.yaml.tmp", "/c/a.yaml"])
        ));
        assert!(!concerns_input(
            dir,
            &event(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                &["/c/a.yaml"]
            )
        ));
        assert!(concerns_input(
            dir,
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/c/a.yaml"]
            )
        ));
        assert!(concerns_input(
            dir,
            &event(
                EventKind::Remove(notify::event::RemoveKind::Folder),
                &["/c"]
            )
        ));
        assert!(!concerns_input(
            dir,
            &event(EventKind::Create(CreateKind::Folder), &["/c/.meshpeer"])
        ));
    }
}
