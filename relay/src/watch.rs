//! Follows the `--allow-file` as it changes, however it is changed.
//!
//! It watches the file's *directory*, not the file: kubelet replaces a ConfigMap volume by swapping
//! the `..data` symlink, and editors rename a temporary file over the original. Both leave a watch
//! on the file itself pointing at a deleted inode. A slow periodic re-read backs up the events.
//! Only events that may concern the file wake it: another file written in the same directory
//! (a log, say) would otherwise have a large key file re-read and compared at every write.
//! When the path is a directory of key files (`keyfile::read`), that directory is watched, and
//! every event in it concerns the list.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use wpex_proto::keyfile::{self, KeyFileError};
use wpex_proto::keys::PublicKey;

/// How long events must stop before the file is read, so a write in progress is not read half-way.
pub const SETTLE: Duration = Duration::from_millis(100);
/// The safety net: re-read this often even without events.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);

/// Why the key file cannot be watched.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are named by the message
pub enum WatchError {
    /// notify refused to watch the file's directory.
    #[error("cannot watch directory {dir} of the key file: {source}")]
    Notify { dir: PathBuf, source: notify::Error },
}

/// What a re-read found, reported once per distinct file content.
#[derive(Debug)]
pub enum Update {
    /// The file parsed; these are its keys.
    Loaded(Vec<PublicKey>),
    /// The file did not parse; the relay keeps the keys it had.
    Rejected(KeyFileError),
}

/// Stops watching when dropped.
pub struct KeyWatcher {
    _watcher: RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for KeyWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Watches `path`, whose current content the caller has already loaded as `current`, and calls
/// `on_update` each time the content changes. Must be called within a tokio runtime.
pub fn watch(
    path: PathBuf,
    current: Option<Vec<u8>>,
    poll_every: Duration,
    on_update: impl FnMut(Update) + Send + 'static,
) -> Result<KeyWatcher, WatchError> {
    // Capacity 1: a pending wake-up already covers any later event.
    let (wake, woken) = mpsc::channel::<()>(1);
    let watcher = if path.is_dir() {
        watch_directory(path.clone(), None, wake)?
    } else {
        let name = path.file_name().map(OsStr::to_owned);
        watch_directory(directory_of(&path), name, wake)?
    };
    let task = tokio::spawn(follow(path, current, poll_every, woken, on_update));
    Ok(KeyWatcher {
        _watcher: watcher,
        task,
    })
}

/// Whether an event about `changed` may concern the key file `name`: the file itself, or a
/// name of kubelet's ConfigMap volume machinery (`..data`, `..data_tmp`, `..<timestamp>`). A
/// path with no file name, or no `name` (a directory of key files), is taken to concern it.
fn concerns(changed: &Path, name: Option<&OsStr>) -> bool {
    match (changed.file_name(), name) {
        (Some(changed), Some(name)) => {
            changed == name || changed.as_encoded_bytes().starts_with(b"..")
        }
        _ => true,
    }
}

/// Watches `dir`, waking `wake` at every event that may concern the file `name` in it.
fn watch_directory(
    dir: PathBuf,
    name: Option<OsString>,
    wake: mpsc::Sender<()>,
) -> Result<RecommendedWatcher, WatchError> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error or an event without paths (a rescan) may hide a change: read again.
        let relevant = event.map_or(true, |e| {
            e.paths.is_empty() || e.paths.iter().any(|p| concerns(p, name.as_deref()))
        });
        if relevant {
            let _ = wake.try_send(());
        }
    })
    .map_err(|source| WatchError::Notify {
        dir: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Notify {
            dir: dir.clone(),
            source,
        })?;
    Ok(watcher)
}

/// Re-reads `path` after each burst of events `woken` reports and every `poll_every`, and
/// passes each distinct content to `on_update`; `current` is the content already loaded.
async fn follow(
    path: PathBuf,
    current: Option<Vec<u8>>,
    poll_every: Duration,
    mut woken: mpsc::Receiver<()>,
    mut on_update: impl FnMut(Update),
) {
    let mut last_seen = current;
    let mut poll = tokio::time::interval(poll_every);
    poll.tick().await; // the first tick is immediate; the caller has just read the file
    loop {
        tokio::select! {
            _ = woken.recv() => {
                // Let a burst of events (a write, a symlink swap) finish first.
                while let Ok(Some(())) = tokio::time::timeout(SETTLE, woken.recv()).await {}
            }
            _ = poll.tick() => {}
        }
        // A directory of 100,000 keys is megabytes of files: read off the runtime's threads.
        let reading = path.clone();
        let Ok(read) = tokio::task::spawn_blocking(move || keyfile::read(&reading)).await else {
            continue; // the read panicked or was cancelled; the next event or poll reads again
        };
        // Report each distinct content (or read failure) once, not on every poll.
        let fingerprint = match &read {
            Ok((raw, _)) => raw.clone(),
            Err(e) => format!("\0{e}").into_bytes(),
        };
        if last_seen.as_ref() == Some(&fingerprint) {
            continue;
        }
        last_seen = Some(fingerprint);
        on_update(match read {
            Ok((_, keys)) => Update::Loaded(keys),
            Err(e) => Update::Rejected(e),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_file_and_kubelets_names_concern_it() {
        let name = Some(OsStr::new("allowed-keys"));
        for (path, expected) in [
            ("/etc/wpex/allowed-keys", true),
            // kubelet's ConfigMap swap: a new timestamped directory, then `..data_tmp`
            // renamed over `..data`.
            ("/etc/wpex/..2026_12_07_04_27_50.123456789", true),
            ("/etc/wpex/..data_tmp", true),
            ("/etc/wpex/..data", true),
            // An editor's swap file, a log beside the key file.
            ("/etc/wpex/.allowed-keys.swp", false),
            ("/etc/wpex/relay.log", false),
            ("/", true),
        ] {
            assert_eq!(concerns(Path::new(path), name), expected, "{path}");
        }
        assert!(concerns(Path::new("/etc/wpex/relay.log"), None));
    }
}
