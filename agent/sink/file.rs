//! The file sink: NDJSON in a local file, rotated by size, for a node-local collector or for `jq`
//! on the node.
//!
//! # Files
//!
//! Records are appended to `path` (e.g. `/var/lib/meshtap/out/exchanges.ndjson`). When the next
//! record would take the file past `max_bytes`, the file is rotated: `path.1` is the newest rotated
//! file and `path.<max_files>` the oldest; the one that would become `path.<max_files + 1>` is
//! deleted. A record is never split across files; one record larger than `max_bytes` gets a file
//! of its own. Parent directories are created.
//!
//! # Acknowledgement
//!
//! [`Sink::deliver`] returns `Ok` only after the whole batch was written, flushed and `sync_data`ed
//! (and the directory synced after a rotation). Until then the batch is not acknowledged, and the
//! next `deliver` first rolls the files back to the last acknowledged position, so a failed or
//! cancelled batch written again is never doubled nor left torn.
//!
//! # Exactly once across restarts
//!
//! The agent stores [`FileSink::position`] in each checkpoint. After a restart it re-reads the logs
//! from the checkpoint and emits again every exchange written since, so those lines must go:
//! [`FileSink::open_resuming`] rolls the files back to the recorded position. The position names
//! the file by inode as well as by path, because rotations may have happened since the checkpoint:
//! the checkpointed file is then `path.k`, and the `k` newer files hold only exchanges that will be
//! emitted again. They are deleted, `path.k` is truncated to the recorded size and becomes `path`
//! again, and the older files move back by `k`. With the position of the last checkpoint the file
//! sink is exactly-once; without one (a first start, or a lost checkpoint) it only drops a torn last
//! line left by a crash.
//!
//! If the checkpointed file is gone (more than `max_files` rotations since the checkpoint, or
//! someone removed it) or shorter than recorded, nothing can be rolled back: the sink says so in a
//! warning and appends. Lowering `max_files` leaves the files beyond the new count in place.
//!
//! File operations are blocking `std::fs` calls, run on tokio's blocking pool, one task per batch.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::config::FileSinkConfig;
use super::{encode_line, BoxFuture, Sink, SinkError};
use crate::record::Exchange;

const NAME: &str = "file";

/// How far the sink's output had been acknowledged: stored in the agent's checkpoint and given back
/// to [`FileSink::open_resuming`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// The sink's current file (`path` in the config) at the time.
    pub path: PathBuf,
    /// Its size in bytes after the last acknowledged batch.
    pub size: u64,
    /// Its inode, to find it again if it was rotated to `path.k` since.
    pub inode: u64,
}

/// Writes exchanges as NDJSON to a size-rotated local file.
#[derive(Debug)]
pub struct FileSink {
    /// Shared with the blocking task writing the current batch.
    files: Arc<Mutex<Files>>,
    /// The batch being written, reused between batches.
    buf: Vec<u8>,
    /// End offset in `buf` of each record's line.
    line_ends: Vec<usize>,
}

/// The sink's files, and how far they have been acknowledged.
#[derive(Debug)]
struct Files {
    config: FileSinkConfig,
    /// The open current file; `None` after a failed rotation (reopened by the rollback).
    file: Option<File>,
    /// Bytes in the current file, including any unacknowledged batch.
    size: u64,
    inode: u64,
    /// Where the last acknowledged batch ended.
    acked: FilePosition,
    /// A batch was (or is being) written but not acknowledged: roll back before the next one.
    dirty: bool,
}

impl FileSink {
    /// Opens (creating it and its directories if needed) the sink's current file for appending.
    pub async fn open(config: FileSinkConfig) -> Result<Self, SinkError> {
        Self::open_resuming(config, None).await
    }

    /// Opens the sink after rolling its files back to `resume`, the position recorded in the last
    /// checkpoint (see the module doc). A position for another path is ignored, with a warning.
    pub async fn open_resuming(
        config: FileSinkConfig,
        resume: Option<FilePosition>,
    ) -> Result<Self, SinkError> {
        let files = blocking(move || {
            if let Some(position) = &resume {
                restore(&config, position)?;
            }
            Files::open(config)
        })
        .await?;
        Ok(FileSink {
            files: Arc::new(Mutex::new(files)),
            buf: Vec::new(),
            line_ends: Vec::new(),
        })
    }

    /// The current file and its size after the last acknowledged batch, for the checkpoint.
    pub fn position(&self) -> FilePosition {
        lock(&self.files).acked.clone()
    }

    async fn write_batch(&mut self, batch: &[Exchange]) -> Result<(), SinkError> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut line_ends = std::mem::take(&mut self.line_ends);
        buf.clear();
        line_ends.clear();
        for record in batch {
            encode_line(NAME, record, &mut buf)?;
            line_ends.push(buf.len());
        }
        let files = Arc::clone(&self.files);
        let (written, buf, line_ends) = blocking(move || {
            let written = lock(&files).write(&buf, &line_ends);
            Ok((written, buf, line_ends))
        })
        .await?;
        self.buf = buf;
        self.line_ends = line_ends;
        let position = written?;
        // Acknowledged only here: if this future was dropped while the batch was being written, the
        // batch stays unacknowledged and the next one rolls it back.
        let mut files = lock(&self.files);
        files.acked = position;
        files.dirty = false;
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn deliver<'a>(&'a mut self, batch: &'a [Exchange]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.write_batch(batch))
    }

    fn checkpoint_position(&self) -> Option<FilePosition> {
        Some(self.position())
    }
}

impl Files {
    /// Opens `config.path` for appending, dropping a torn last line.
    fn open(config: FileSinkConfig) -> Result<Self, SinkError> {
        let mut files = Files {
            acked: FilePosition {
                path: config.path.clone(),
                size: 0,
                inode: 0,
            },
            config,
            file: None,
            size: 0,
            inode: 0,
            dirty: false,
        };
        files.open_current()?;
        files.acked.size = files.size;
        files.acked.inode = files.inode;
        Ok(files)
    }

    fn open_current(&mut self) -> Result<(), SinkError> {
        let path = &self.config.path;
        let dir = parent(path);
        fs::create_dir_all(dir).map_err(io_error("cannot create directory", dir))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io_error("cannot open", path))?;
        let meta = file.metadata().map_err(io_error("cannot stat", path))?;
        self.size =
            drop_torn_line(&file, meta.len(), path).map_err(io_error("cannot repair", path))?;
        self.inode = meta.ino();
        self.file = Some(file);
        Ok(())
    }

    /// Appends the records (`buf`, each ending at one of `line_ends`), rotating between records
    /// as needed; returns the position after the last one, once durable.
    fn write(&mut self, buf: &[u8], line_ends: &[usize]) -> Result<FilePosition, SinkError> {
        if self.dirty || self.file.is_none() {
            self.file = None;
            restore(&self.config, &self.acked)?;
            self.open_current()?;
        }
        self.dirty = true;
        let max_bytes = self.config.max_bytes;
        let (mut chunk_start, mut line_start) = (0, 0);
        for &line_end in line_ends {
            let len = (line_end - line_start) as u64;
            if self.size > 0 && self.size + len > max_bytes {
                self.append(&buf[chunk_start..line_start])?;
                self.rotate()?;
                chunk_start = line_start;
            }
            self.size += len;
            line_start = line_end;
        }
        self.append(&buf[chunk_start..])?;
        Ok(FilePosition {
            path: self.config.path.clone(),
            size: self.size,
            inode: self.inode,
        })
    }

    /// Writes `bytes` to the current file, flushed and synced.
    fn append(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        let path = &self.config.path;
        let file = self.file.as_mut().expect("opened before writing");
        file.write_all(bytes)
            .and_then(|()| file.flush())
            .map_err(io_error("cannot write to", path))?;
        file.sync_data().map_err(io_error("cannot sync", path))
    }

    /// Moves every file one place older (deleting the oldest) and opens a new, empty current file.
    fn rotate(&mut self) -> Result<(), SinkError> {
        self.file = None;
        let config = &self.config;
        let oldest = rotated(&config.path, config.max_files);
        remove_if_present(&oldest)?;
        for k in (0..config.max_files).rev() {
            rename_if_present(&rotated(&config.path, k), &rotated(&config.path, k + 1))?;
        }
        sync_dir(parent(&config.path))?;
        self.open_current()
    }
}

/// Rolls the files of `config` back to `position` (see the module doc).
fn restore(config: &FileSinkConfig, position: &FilePosition) -> Result<(), SinkError> {
    if position.path != config.path {
        tracing::warn!(
            path = %config.path.display(),
            checkpointed = %position.path.display(),
            "The file sink's checkpointed position is for another path; appending without rolling back."
        );
        return Ok(());
    }
    let found = (0..=config.max_files).find(|&k| {
        fs::metadata(rotated(&config.path, k))
            .is_ok_and(|meta| meta.ino() == position.inode && meta.len() >= position.size)
    });
    let Some(k) = found else {
        tracing::warn!(
            path = %config.path.display(),
            size = position.size,
            inode = position.inode,
            "The file sink's checkpointed file is gone or shorter than recorded; exchanges written after the checkpoint may appear twice."
        );
        return Ok(());
    };
    // The k files newer than the checkpointed one hold only exchanges that will be emitted again.
    for newer in 0..k {
        remove_if_present(&rotated(&config.path, newer))?;
    }
    let checkpointed = rotated(&config.path, k);
    let truncate = |file: File| {
        file.set_len(position.size)?;
        file.sync_all()
    };
    OpenOptions::new()
        .write(true)
        .open(&checkpointed)
        .and_then(truncate)
        .map_err(io_error("cannot truncate", &checkpointed))?;
    if k > 0 {
        for older in k..=config.max_files {
            rename_if_present(
                &rotated(&config.path, older),
                &rotated(&config.path, older - k),
            )?;
        }
        sync_dir(parent(&config.path))?;
    }
    Ok(())
}

/// Truncates `file` (of length `len`) after its last `\n`, dropping a line torn by a crash; returns
/// the new length.
fn drop_torn_line(file: &File, len: u64, path: &Path) -> io::Result<u64> {
    const BLOCK: u64 = 64 << 10;
    let mut block = vec![0; BLOCK.min(len) as usize];
    // Nothing is kept when the file holds no `\n` at all: it is one torn line.
    let (mut keep, mut end) = (0, len);
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &mut block[..(end - start) as usize];
        file.read_exact_at(block, start)?;
        if let Some(i) = memchr::memrchr(b'\n', block) {
            keep = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if keep < len {
        tracing::warn!(
            path = %path.display(),
            dropped_bytes = len - keep,
            "Dropping a torn last line from the file sink's current file."
        );
        file.set_len(keep)?;
        file.sync_all()?;
    }
    Ok(keep)
}

/// `path` for `k == 0`, else `path.k`.
fn rotated(path: &Path, k: u32) -> PathBuf {
    if k == 0 {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn remove_if_present(path: &Path) -> Result<(), SinkError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("cannot delete", path)(e)),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> Result<(), SinkError> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SinkError::Io {
            sink: NAME,
            message: format!("cannot rename {} to {}", from.display(), to.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Makes renames and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("cannot sync directory", dir))
}

/// Maps an I/O error to a [`SinkError`] saying what was done to which path.
fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SinkError + 'a {
    move |source| SinkError::Io {
        sink: NAME,
        message: format!("{action} {}", path.display()),
        source,
    }
}

fn lock(files: &Mutex<Files>) -> MutexGuard<'_, Files> {
    // A panic while writing left `dirty` set, so the next batch rolls back: the state is usable.
    files.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(SinkError::Other {
            sink: NAME,
            message: format!("file task failed: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sink::stdout::tests::{exchange, line};

    /// Records of equal size: `exchange(id, "body")` for single-letter ids.
    fn records(ids: &str) -> Vec<Exchange> {
        ids.chars()
            .map(|id| exchange(&id.to_string(), "body"))
            .collect()
    }

    fn lines(records: &[Exchange]) -> String {
        records.iter().map(line).collect()
    }

    /// Line length of one record from [`records`].
    fn len() -> u64 {
        line(&records("a")[0]).len() as u64
    }

    /// A config whose files hold `per_file` records from [`records`].
    fn config(dir: &Path, per_file: u64, max_files: u32) -> FileSinkConfig {
        FileSinkConfig {
            path: dir.join("out/exchanges.ndjson"),
            max_bytes: per_file * len() + len() / 2,
            max_files,
        }
    }

    /// The sink's files, by name, with their contents.
    fn files(config: &FileSinkConfig) -> Vec<(String, String)> {
        let mut files: Vec<_> = fs::read_dir(parent(&config.path))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                (name, fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    fn expect(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|(name, ids)| (name.to_string(), lines(&records(ids))))
            .collect()
    }

    async fn deliver(sink: &mut FileSink, ids: &str) {
        sink.deliver(&records(ids)).await.unwrap();
    }

    #[tokio::test]
    async fn rotates_by_size_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 2, 2);
        let mut sink = FileSink::open(config.clone()).await.unwrap();
        assert_eq!(sink.name(), "file");
        deliver(&mut sink, "abc").await;
        assert_eq!(
            files(&config),
            expect(&[("exchanges.ndjson", "c"), ("exchanges.ndjson.1", "ab")])
        );
        deliver(&mut sink, "d").await;
        deliver(&mut sink, "e").await;
        assert_eq!(
            files(&config),
            expect(&[
                ("exchanges.ndjson", "e"),
                ("exchanges.ndjson.1", "cd"),
                ("exchanges.ndjson.2", "ab"),
            ])
        );
        deliver(&mut sink, "fg").await;
        assert_eq!(
            files(&config),
            expect(&[
                ("exchanges.ndjson", "g"),
                ("exchanges.ndjson.1", "ef"),
                ("exchanges.ndjson.2", "cd"),
            ]),
            "the oldest file (ab) is deleted"
        );
    }

    #[tokio::test]
    async fn records_are_never_split_and_a_big_one_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 2, 5);
        let big = exchange("big", &"x".repeat(3 * config.max_bytes as usize));
        let batch = [records("a"), vec![big.clone()], records("bcd")].concat();
        let mut sink = FileSink::open(config.clone()).await.unwrap();
        sink.deliver(&batch).await.unwrap();
        let files = files(&config);
        assert_eq!(
            files,
            [
                ("exchanges.ndjson".into(), lines(&records("d"))),
                ("exchanges.ndjson.1".into(), lines(&records("bc"))),
                ("exchanges.ndjson.2".into(), line(&big)),
                ("exchanges.ndjson.3".into(), lines(&records("a"))),
            ]
        );
        for (name, text) in &files {
            assert!(text.ends_with('\n'), "{name}");
            for l in text.lines() {
                serde_json::from_str::<serde_json::Value>(l).expect("a whole record");
            }
        }
    }

    #[tokio::test]
    async fn ok_means_written_and_position_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 10, 1);
        let mut sink = FileSink::open(config.clone()).await.unwrap();
        let start = sink.position();
        assert_eq!(start.size, 0);
        deliver(&mut sink, "ab").await;
        // Read through another handle: the batch reached the file before `deliver` returned.
        assert_eq!(
            fs::read_to_string(&config.path).unwrap(),
            lines(&records("ab"))
        );
        let meta = fs::metadata(&config.path).unwrap();
        assert_eq!(
            sink.position(),
            FilePosition {
                path: config.path.clone(),
                size: 2 * len(),
                inode: meta.ino(),
            }
        );
        assert_eq!(start.inode, meta.ino());
    }

    #[tokio::test]
    async fn resuming_truncates_what_was_written_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 10, 1);
        let mut sink = FileSink::open(config.clone()).await.unwrap();
        deliver(&mut sink, "ab").await;
        let checkpoint = sink.position();
        deliver(&mut sink, "cd").await;
        drop(sink);

        let mut sink = FileSink::open_resuming(config.clone(), Some(checkpoint.clone()))
            .await
            .unwrap();
        assert_eq!(files(&config), expect(&[("exchanges.ndjson", "ab")]));
        assert_eq!(sink.position(), checkpoint);
        deliver(&mut sink, "cd").await;
        assert_eq!(files(&config), expect(&[("exchanges.ndjson", "abcd")]));
    }

    #[tokio::test]
    async fn resuming_undoes_rotations_since_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 2, 3);
        let mut sink = FileSink::open(config.clone()).await.unwrap();
        deliver(&mut sink, "op").await;
        deliver(&mut sink, "a").await;
        let checkpoint = sink.position();
        let at_checkpoint = files(&config);
        assert_eq!(
            at_checkpoint,
            expect(&[("exchanges.ndjson", "a"), ("exchanges.ndjson.1", "op")])
        );
        deliver(&mut sink, "bcde").await;
        let after = files(&config);
        assert_eq!(
            after,
            expect(&[
                ("exchanges.ndjson", "e"),
                ("exchanges.ndjson.1", "cd"),
                ("exchanges.ndjson.2", "ab"),
                ("exchanges.ndjson.3", "op"),
            ])
        );
        drop(sink);

        let mut sink = FileSink::open_resuming(config.clone(), Some(checkpoint))
            .await
            .unwrap();
        assert_eq!(files(&config), at_checkpoint);
        deliver(&mut sink, "bcde").await;
        assert_eq!(files(&config), after, "re-emitted exchanges written once");
    }

    #[tokio::test]
    async fn a_position_for_another_path_or_a_lost_file_is_not_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 10, 1);
        let mut sink = FileSink::open(config.clone()).await.unwrap();
        deliver(&mut sink, "ab").await;
        let mut elsewhere = sink.position();
        elsewhere.path = dir.path().join("other.ndjson");
        elsewhere.size = 0;
        let mut gone = sink.position();
        gone.inode += 1;
        gone.size = 0;
        drop(sink);
        for position in [elsewhere, gone] {
            FileSink::open_resuming(config.clone(), Some(position))
                .await
                .unwrap();
            assert_eq!(files(&config), expect(&[("exchanges.ndjson", "ab")]));
        }
    }

    #[tokio::test]
    async fn opening_drops_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 10, 1);
        fs::create_dir_all(parent(&config.path)).unwrap();
        let torn = lines(&records("a")) + "{\"id\":\"b\",\"sou";
        fs::write(&config.path, torn).unwrap();
        let mut sink = FileSink::open(config.clone()).await.unwrap();
        assert_eq!(sink.position().size, len());
        deliver(&mut sink, "c").await;
        assert_eq!(files(&config), expect(&[("exchanges.ndjson", "ac")]));

        fs::write(&config.path, "no newline at all").unwrap();
        FileSink::open(config.clone()).await.unwrap();
        assert_eq!(fs::read(&config.path).unwrap(), b"");
    }

    #[tokio::test]
    async fn an_unacknowledged_batch_is_rolled_back_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 10, 1);
        let mut sink = FileSink::open(config.clone()).await.unwrap();
        deliver(&mut sink, "a").await;
        // A batch that failed half-way: a torn line, and the sink marked dirty.
        fs::OpenOptions::new()
            .append(true)
            .open(&config.path)
            .unwrap()
            .write_all(b"{\"id\":\"x\",")
            .unwrap();
        lock(&sink.files).dirty = true;
        deliver(&mut sink, "b").await;
        assert_eq!(files(&config), expect(&[("exchanges.ndjson", "ab")]));
    }

    #[tokio::test]
    async fn a_cancelled_batch_is_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 10, 1);
        let mut sink = FileSink::open(config.clone()).await.unwrap();
        deliver(&mut sink, "a").await;
        let acked = sink.position();
        let cancelled = records("x");
        {
            // Holding the lock keeps the write task waiting, so the first poll is surely pending.
            let files = Arc::clone(&sink.files);
            let guard = lock(&files);
            let mut delivery = sink.deliver(&cancelled);
            let mut cx = Context::from_waker(Waker::noop());
            assert!(delivery.as_mut().poll(&mut cx).is_pending());
            drop(delivery);
            drop(guard);
        }
        // The detached write task still writes the batch; wait until it did.
        let expected = lines(&records("ax"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(&config.path).unwrap() != expected {
            assert!(
                Instant::now() < deadline,
                "the cancelled batch was never written"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(sink.position(), acked);
        deliver(&mut sink, "b").await;
        assert_eq!(files(&config), expect(&[("exchanges.ndjson", "ab")]));
    }

    #[tokio::test]
    async fn an_unwritable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, "").unwrap();
        let config = FileSinkConfig {
            path: blocker.join("out.ndjson"),
            ..FileSinkConfig::default()
        };
        let e = FileSink::open(config).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("file: cannot create directory {}", blocker.display())
        );
        assert!(
            matches!(e, SinkError::Io { .. }),
            "the OS error is kept: {e:?}"
        );

        let config = FileSinkConfig {
            path: dir.path().to_path_buf(),
            ..FileSinkConfig::default()
        };
        let e = FileSink::open(config).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("file: cannot open {}", dir.path().display())
        );
    }
}
