//! The agent's checkpoint: for every container log stream, the position to resume reading at and
//! the pipeline state at that position (partial lines, joined messages, pending exchanges), plus
//! the file sink's position. It is written only after the sink acknowledged every exchange emitted
//! before that position, so a restart loses nothing; because the pending exchanges travel with
//! it, an exchange spanning the position is completed after a restart, not emitted twice or torn.
//!
//! One versioned JSON file, written atomically: temp file, `sync_all`, rename, directory sync.

pub mod encoding;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pipeline::LogStreamState;

pub use crate::tail::Position;

/// What is saved for one container log stream (one container, one restart count).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamCheckpoint {
    /// The container log directory.
    pub dir: PathBuf,
    pub restart: u32,
    /// Where to resume reading; `None` before the first line of the stream was read.
    pub position: Option<Position>,
    /// The pipeline's state at `position`.
    pub state: LogStreamState,
}

/// The whole checkpoint file.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Checkpoint {
    /// Streams, keyed by `<dir>#<restart>`.
    pub streams: BTreeMap<String, StreamCheckpoint>,
    /// The file sink's position once the checkpointed exchanges were written (it truncates back
    /// to it on restart, which makes the file sink exactly-once).
    pub sink_position: Option<crate::sink::FilePosition>,
}

/// The checkpoint file's versions; a newer agent reads older files.
#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum Versioned {
    #[serde(rename = "1")]
    V1(Checkpoint),
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is unreadable ({source}); move it away to start over")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads and writes the checkpoint file in a state directory.
pub struct Store {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

impl Store {
    /// A store in `state_dir` (created if missing).
    pub fn open(state_dir: &Path) -> Result<Self, CheckpointError> {
        fs::create_dir_all(state_dir).map_err(|source| CheckpointError::Write {
            path: state_dir.to_path_buf(),
            source,
        })?;
        Ok(Store {
            path: state_dir.join("checkpoints.json"),
            tmp: state_dir.join(".checkpoints.json.tmp"),
            dir: state_dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved checkpoint, or an empty one on first start.
    ///
    /// (The file is written with mode 0600; see [`Store::save`].)
    pub fn load(&self) -> Result<Checkpoint, CheckpointError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        match serde_json::from_slice::<Versioned>(&bytes) {
            Ok(Versioned::V1(c)) => Ok(c),
            Err(source) => Err(CheckpointError::Corrupt {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Replaces the checkpoint atomically: readers (and a crash) see the old or the new file whole.
    pub fn save(&self, checkpoint: Checkpoint) -> Result<Checkpoint, CheckpointError> {
        let wrap = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        let versioned = Versioned::V1(checkpoint);
        let bytes = serde_json::to_vec(&versioned).map_err(|e| wrap(e.into()))?;
        // Owner-only: pending exchanges are saved before the stages run, so the file can hold
        // payloads not yet redacted (the node's container logs hold the same, also root-only).
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.tmp)
                .map_err(wrap)?
        };
        file.write_all(&bytes).map_err(wrap)?;
        file.sync_all().map_err(wrap)?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(wrap)?;
        // The rename is durable only once the directory entry is.
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(wrap)?;
        let Versioned::V1(checkpoint) = versioned;
        Ok(checkpoint)
    }
}

/// The key of a stream in [`Checkpoint::streams`].
pub fn stream_key(dir: &Path, restart: u32) -> String {
    format!("{}#{restart}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        assert!(store.load().unwrap().streams.is_empty());
        let sink = crate::sink::FilePosition {
            path: PathBuf::from("/out/x.ndjson"),
            size: 42,
            inode: 7,
        };
        let mut c = Checkpoint {
            sink_position: Some(sink.clone()),
            ..Default::default()
        };
        c.streams.insert(
            stream_key(Path::new("/l/ns_p_u/istio-proxy"), 0),
            StreamCheckpoint {
                dir: PathBuf::from("/l/ns_p_u/istio-proxy"),
                restart: 0,
                position: Some(Position {
                    fingerprint: 7,
                    offset: 99,
                }),
                state: crate::pipeline::LogStream::new(&Default::default(), None).snapshot(),
            },
        );
        store.save(c).unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.starts_with(r#"{"version":"1","#), "{text}");
        let back = store.load().unwrap();
        assert_eq!(back.sink_position, Some(sink));
        let s = &back.streams["/l/ns_p_u/istio-proxy#0"];
        assert_eq!(s.position.unwrap().offset, 99);
        assert!(!dir.path().join("state/.checkpoints.json.tmp").exists());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "pending payloads are owner-only");
    }

    #[test]
    fn a_corrupt_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.path(), b"{not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.contains("checkpoints.json") && e.contains("move it away"),
            "{e}"
        );
    }
}
