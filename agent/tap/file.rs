//! Tap files: a directory that Envoy's `file_per_tap` sink writes one file per tapped stream into
//! (`<path_prefix>_<id>.json`, `.pb` or `.pb_length_delimited`). Each complete file becomes one
//! record per trace; the caller marks the file done (moved to `done/`, or deleted) only after the
//! records were delivered, so a crash before delivery reads it again (at least once, no loss; the
//! record ids are a hash of the file's name and content, so repeats are removable by id).
//!
//! Envoy writes a buffered trace when its stream ends, but nothing marks a file as finished, and a
//! binary protobuf cut short can still decode. A file is therefore read only when its size and
//! modification time are unchanged across two polls at least `settle` apart, and it parses
//! completely. A file that stays unreadable for `give_up` is moved to `failed/` with a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::trace::{self, BufferedTrace, Origin, TraceError};
use crate::record::{Exchange, K8sMeta};

/// What to do with a file once its records were delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DoneAction {
    /// Move it into `<dir>/done/` (kept for forensics; the operator prunes it).
    #[default]
    Move,
    /// Delete it.
    Delete,
}

#[derive(Debug, Clone)]
pub struct TapDirSettings {
    pub dir: PathBuf,
    pub done: DoneAction,
    /// Minimum time a file's size and mtime must stay unchanged before it is read.
    pub settle: Duration,
    /// How long a stable file may stay unreadable before it is moved to `failed/`.
    pub give_up: Duration,
    /// Identity of the pod whose Envoy writes here, when known.
    pub k8s: Option<K8sMeta>,
}

impl TapDirSettings {
    pub fn new(dir: PathBuf) -> Self {
        TapDirSettings {
            dir,
            done: DoneAction::Move,
            settle: Duration::from_millis(200),
            give_up: Duration::from_secs(30),
            k8s: None,
        }
    }
}

/// The formats a `file_per_tap` sink writes, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Proto,
    ProtoDelimited,
}

fn format_of(path: &Path) -> Option<Result<Format, String>> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    let ext = name.rsplit_once('.')?.1;
    Some(match ext {
        "json" => Ok(Format::Json),
        "pb" => Ok(Format::Proto),
        "pb_length_delimited" => Ok(Format::ProtoDelimited),
        other => Err(other.to_string()),
    })
}

fn parse(format: Format, bytes: &[u8]) -> Result<Vec<BufferedTrace>, TraceError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TraceError::Invalid("empty file".into()));
    }
    match format {
        Format::Json => trace::parse_json_traces(bytes),
        Format::Proto => trace::parse_proto_trace(bytes).map(|t| vec![t]),
        Format::ProtoDelimited => trace::parse_proto_delimited_traces(bytes),
    }
}

/// A complete file and its records.
#[derive(Debug)]
pub struct ReadyFile {
    pub path: PathBuf,
    pub exchanges: Vec<Exchange>,
}

#[derive(Debug)]
struct Seen {
    len: u64,
    modified: Option<SystemTime>,
    /// When the file was first seen with this size and mtime.
    since: Instant,
}

/// Counters for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirStats {
    pub files: u64,
    pub traces: u64,
    /// Files moved to `failed/` (unreadable after `give_up`).
    pub failed: u64,
    /// Files of a format meshtap does not read (`.pb_text`), left in place.
    pub unsupported: u64,
}

/// The tap-file source for one directory.
#[derive(Debug)]
pub struct TapDir {
    settings: TapDirSettings,
    seen: BTreeMap<PathBuf, Seen>,
    /// Files handed out by [`TapDir::poll`] and not yet marked done.
    in_flight: BTreeSet<PathBuf>,
    unsupported: BTreeSet<PathBuf>,
    pub stats: DirStats,
}

impl TapDir {
    pub fn new(settings: TapDirSettings) -> std::io::Result<TapDir> {
        if !settings.dir.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a directory", settings.dir.display()),
            ));
        }
        Ok(TapDir {
            settings,
            seen: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            unsupported: BTreeSet::new(),
            stats: DirStats::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// Files seen but not yet read (still being written, or not yet parseable).
    pub fn pending(&self) -> usize {
        self.seen.len()
    }

    /// Scans the directory; returns the files that are complete now, in name order. Each is handed
    /// out once; call [`TapDir::mark_done`] after its records were delivered.
    pub fn poll(&mut self) -> std::io::Result<Vec<ReadyFile>> {
        let now = Instant::now();
        let mut present = BTreeSet::new();
        let mut ready = Vec::new();
        for entry in std::fs::read_dir(&self.settings.dir)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || self.in_flight.contains(&path) {
                continue;
            }
            let format = match format_of(&path) {
                None => continue,
                Some(Ok(format)) => format,
                Some(Err(ext)) => {
                    if self.unsupported.insert(path.clone()) {
                        self.stats.unsupported += 1;
                        tracing::warn!(path = %path.display(), extension = %ext, "Tap file format not supported (use JSON_BODY_AS_BYTES or PROTO_BINARY); left in place.");
                    }
                    continue;
                }
            };
            present.insert(path.clone());
            let (len, modified) = (meta.len(), meta.modified().ok());
            let seen = match self.seen.entry(path.clone()) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    // First sight: read it once a later poll finds it unchanged.
                    v.insert(Seen {
                        len,
                        modified,
                        since: now,
                    });
                    continue;
                }
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            };
            if seen.len != len || seen.modified != modified {
                *seen = Seen {
                    len,
                    modified,
                    since: now,
                };
                continue;
            }
            let stable_for = now.duration_since(seen.since);
            if stable_for < self.settings.settle {
                continue;
            }
            // Unreadable right now (e.g. removed meanwhile): the next poll tries again.
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match parse(format, &bytes) {
                Ok(traces) => {
                    self.seen.remove(&path);
                    self.in_flight.insert(path.clone());
                    ready.push(self.records(&path, &bytes, traces));
                }
                Err(e) if stable_for >= self.settings.give_up => {
                    self.seen.remove(&path);
                    self.quarantine(&path, &e.to_string());
                }
                // Not complete yet (or never will be: quarantined after `give_up`).
                Err(_) => {}
            }
        }
        // Files that went away (moved by someone else) are no longer pending.
        self.seen.retain(|path, _| present.contains(path));
        Ok(ready)
    }

    fn records(&mut self, path: &Path, bytes: &[u8], traces: Vec<BufferedTrace>) -> ReadyFile {
        self.stats.files += 1;
        self.stats.traces += traces.len() as u64;
        let name = path.to_string_lossy();
        let received = chrono::Utc::now();
        let exchanges = traces
            .into_iter()
            .enumerate()
            .map(|(ordinal, trace)| {
                let ordinal = ordinal as u64;
                let origin = Origin {
                    file: name.to_string(),
                    ordinal,
                    id: trace::trace_id(&[name.as_bytes(), bytes, &ordinal.to_le_bytes()]),
                    k8s: self.settings.k8s.clone(),
                    received,
                };
                trace::to_exchange(trace, origin)
            })
            .collect();
        ReadyFile {
            path: path.to_path_buf(),
            exchanges,
        }
    }

    fn quarantine(&mut self, path: &Path, error: &str) {
        self.stats.failed += 1;
        let failed = self.settings.dir.join("failed");
        let result = std::fs::create_dir_all(&failed).and_then(|()| {
            std::fs::rename(path, failed.join(path.file_name().unwrap_or_default()))
        });
        match result {
            Ok(()) => {
                tracing::warn!(path = %path.display(), %error, "Unreadable tap file moved to failed/.")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), %error, move_error = %e, "Unreadable tap file could not be moved to failed/.")
            }
        }
    }

    /// Marks a file handed out by [`TapDir::poll`] as delivered: moves it to `done/` or deletes it.
    pub fn mark_done(&mut self, path: &Path) -> std::io::Result<()> {
        self.in_flight.remove(path);
        match self.settings.done {
            DoneAction::Delete => std::fs::remove_file(path),
            DoneAction::Move => {
                let done = self.settings.dir.join("done");
                std::fs::create_dir_all(&done)?;
                std::fs::rename(path, done.join(path.file_name().unwrap_or_default()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"{"http_buffered_trace":{"request":{"headers":[{"key":":method","value":"GET"},{"key":":path","value":"/a"}]},"response":{"headers":[{"key":":status","value":"204"}]}}}"#;

    fn dir_with_settle(settle: Duration, give_up: Duration) -> (tempfile::TempDir, TapDir) {
        let tmp = tempfile::tempdir().unwrap();
        let mut settings = TapDirSettings::new(tmp.path().to_path_buf());
        settings.settle = settle;
        settings.give_up = give_up;
        let dir = TapDir::new(settings).unwrap();
        (tmp, dir)
    }

    #[test]
    fn files_are_read_once_stable_and_moved_when_done() {
        let (tmp, mut dir) = dir_with_settle(Duration::ZERO, Duration::from_secs(60));
        let path = tmp.path().join("tap_1.json");
        std::fs::write(&path, TRACE).unwrap();
        assert!(
            dir.poll().unwrap().is_empty(),
            "first sight: not yet stable"
        );
        assert_eq!(dir.pending(), 1);
        let ready = dir.poll().unwrap();
        assert_eq!(ready.len(), 1);
        let e = &ready[0].exchanges[0];
        assert_eq!(e.request.as_ref().unwrap().path.as_deref(), Some("/a"));
        assert_eq!(e.response.as_ref().unwrap().status, Some(204));
        assert_eq!(e.log.file, path.to_string_lossy());
        assert!(dir.poll().unwrap().is_empty(), "handed out once");
        dir.mark_done(&path).unwrap();
        assert!(!path.exists());
        assert!(tmp.path().join("done/tap_1.json").exists());
        assert_eq!(dir.pending(), 0);
        assert!(dir.poll().unwrap().is_empty(), "done/ is not read again");
    }

    #[test]
    fn partial_files_wait_and_hopeless_ones_are_quarantined() {
        let (tmp, mut dir) = dir_with_settle(Duration::ZERO, Duration::from_millis(50));
        let partial = tmp.path().join("tap_2.json");
        std::fs::write(&partial, &TRACE[..40]).unwrap();
        std::fs::write(tmp.path().join("tap_3.pb_text"), "x").unwrap();
        std::fs::write(tmp.path().join(".hidden.json"), "x").unwrap();
        assert!(dir.poll().unwrap().is_empty());
        assert!(
            dir.poll().unwrap().is_empty(),
            "incomplete JSON is not read"
        );
        assert_eq!(dir.stats.unsupported, 1);
        std::thread::sleep(Duration::from_millis(60)); // past give_up, a test of the timer itself
        assert!(dir.poll().unwrap().is_empty());
        assert_eq!(dir.stats.failed, 1);
        assert!(tmp.path().join("failed/tap_2.json").exists());
        assert_eq!(dir.pending(), 0);
    }

    #[test]
    fn growing_files_are_not_read_and_ids_follow_content() {
        let (tmp, mut dir) = dir_with_settle(Duration::ZERO, Duration::from_secs(60));
        let path = tmp.path().join("tap_4.json");
        std::fs::write(&path, TRACE).unwrap();
        dir.poll().unwrap();
        std::fs::write(&path, format!("{TRACE}\n{TRACE}")).unwrap();
        assert!(
            dir.poll().unwrap().is_empty(),
            "size changed since the last poll"
        );
        let ready = dir.poll().unwrap();
        assert_eq!(ready[0].exchanges.len(), 2);
        assert_ne!(ready[0].exchanges[0].id, ready[0].exchanges[1].id);
        assert_eq!(ready[0].exchanges[1].log.offset, 1);
        let mut again = TapDir::new(TapDirSettings::new(tmp.path().to_path_buf())).unwrap();
        again.settings.settle = Duration::ZERO;
        again.poll().unwrap();
        let ready2 = again.poll().unwrap();
        assert_eq!(
            ready2[0].exchanges[0].id, ready[0].exchanges[0].id,
            "same file, same id"
        );
    }
}
