//! Agent stage 1: one container log stream followed across its files, line by line.
//!
//! A [`Follower`] owns one [`StreamKey`] (one container process). It holds the file it reads
//! open, so kubelet renaming, gzipping or deleting it does not cut the read short, and it knows
//! the files by content ([`crate::read::fingerprint`] of their first line), not by name: a
//! rotated `0.log.<ts>` and its later `0.log.<ts>.gz` are the same content and read once.
//!
//! What happens to the open file is noticed when it is drained (end of file) or polled:
//! - the live path `<restart>.log` is another file now: it was rotated by rename; read it to its
//!   end once more (the runtime may have written before it reopened), then go on with the oldest
//!   stream file whose content has not been read, so any number of rotations are caught up on in
//!   order, whether kubelet gzipped them meanwhile or not;
//! - it shrank below what was read, or its first line changed: it was copied and truncated in
//!   place; the copy (same fingerprint) is read from where we were, then the live file from 0,
//!   and if there is no copy, a [`TailEvent::Lost`] says so;
//! - the pod directory is gone, or a newer restart started: the stream ends once drained.
//!
//! Checkpoints are a [`Position`]: the fingerprint of a file's content and the bytes of it
//! consumed, which survive renames and compression.
//!
//! Limits: a copy is looked for among the stream's files only (kubelet naming, so a copy named
//! `0.log.<digits and dashes>`); two contents with the same first line (nanosecond timestamps
//! make that unlikely) are taken as one; the last 16 finished contents are remembered, which
//! matters only if the newest of them all vanished.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::discover::{kubelet_name, stream_files, LogFile, StreamKey};
use crate::read::{fingerprint, PhysicalLine};

mod file;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use crate::read::lines::{Lines, Span};
use file::{head_fingerprint, is_corrupt, is_gzip, read_head, with_path, FileId, Source, HEAD};

/// [`TailEvent::Lost`] reason: resuming, no stream file has the checkpoint's fingerprint any more
/// (rotated away and deleted while the agent was down).
pub const LOST_CHECKPOINT: &str = "checkpointed file no longer exists";
/// [`TailEvent::Lost`] reason: the file was truncated in place and no copy of it was found.
pub const LOST_TRUNCATED: &str = "file truncated in place (copy-truncate) and no copy found";
/// [`TailEvent::Lost`] reason: a file the follower had seen was deleted before it was read.
pub const LOST_DELETED: &str = "file deleted before it was read";
/// [`TailEvent::Lost`] reason: a gzip file does not decompress; it (or the rest of it) is skipped.
pub const LOST_CORRUPT: &str = "compressed file unreadable; rest of it skipped";

/// How many finished contents the follower remembers. Kubelet keeps 5 files per container by
/// default; only the newest finished file present matters for finding the next one.
const DONE_MAX: usize = 16;

/// Where a stream was read up to: `offset` bytes (decompressed for `.gz`) of the file whose
/// content has `fingerprint` were consumed, up to the end of the last line handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub fingerprint: u64,
    pub offset: u64,
}

/// What [`Follower::poll`] hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEvent<'a> {
    /// A file of the stream starts being read: emitted before its first line, once its first
    /// line is complete (or, resuming, at once) so its fingerprint is known. A copy read as the
    /// continuation of a truncated file is the same content and not announced again.
    File {
        path: &'a Path,
        fingerprint: u64,
        /// where reading starts
        offset: u64,
    },
    /// One line; offsets are offsets in the file announced last.
    Line(PhysicalLine<'a>),
    /// Data was lost: see the `LOST_*` reasons. `bytes` when known.
    Lost {
        path: &'a Path,
        bytes: Option<u64>,
        reason: &'static str,
    },
}

/// The file being read.
struct Current {
    /// Where it was when opened (it may have been renamed since).
    path: PathBuf,
    id: FileId,
    src: Source,
    /// Known once the first line is complete (or from the checkpoint when resuming).
    fp: Option<u64>,
    /// The `File` event was emitted.
    announced: bool,
    /// Offset reading started at.
    start: u64,
    /// The file cannot grow any more: at its end it is finished.
    draining: bool,
}

/// A file after the current one, remembered to report it if it vanishes unread.
struct Pending {
    path: PathBuf,
    fp: u64,
    size: u64,
}

/// A stream file opened to decide whether to read it.
struct Candidate {
    path: PathBuf,
    file: File,
    id: FileId,
    size: u64,
    gz: bool,
    /// `None`: empty (or corrupt).
    fp: Option<u64>,
    /// `fp` is final: the first line is complete (or at least [`HEAD`] bytes long).
    settled: bool,
    /// A gzip file whose start does not decompress.
    corrupt: bool,
}

/// Follows one [`StreamKey`]'s files in order; see the module docs.
pub struct Follower {
    key: StreamKey,
    live: PathBuf,
    max_line_bytes: usize,
    /// The checkpoint to resume at, until the first file is opened.
    resume: Option<Position>,
    cur: Option<Current>,
    lines: Lines,
    /// Fingerprints of finished contents, oldest first.
    done: VecDeque<u64>,
    /// The last file finished without any content (no fingerprint), not to be opened again.
    finished_empty: Option<FileId>,
    /// Corrupt gzip files already reported (ids are stable while the files exist).
    reported_corrupt: VecDeque<FileId>,
    pending: Vec<Pending>,
    position: Option<Position>,
    finished: bool,
}

impl Follower {
    /// `start`: resume at a checkpointed position (the stream file with that fingerprint, plain
    /// or `.gz`, from `offset`; older files are not read); `None`: start at the oldest file.
    /// Nothing is opened before the first [`Follower::poll`].
    pub fn new(key: StreamKey, start: Option<Position>, max_line_bytes: usize) -> Self {
        Self {
            live: key.live_path(),
            key,
            max_line_bytes,
            resume: start,
            cur: None,
            lines: Lines::new(),
            done: VecDeque::new(),
            finished_empty: None,
            reported_corrupt: VecDeque::new(),
            pending: Vec::new(),
            position: start,
            finished: false,
        }
    }

    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    /// The file being read, as it was named when opened.
    pub fn current_path(&self) -> Option<&Path> {
        self.cur.as_ref().map(|c| c.path.as_path())
    }

    /// Reads complete lines, up to about `budget` bytes, following the stream across files in
    /// order, and hands them to `out`. Returns the bytes read from files (0 = nothing new: wait
    /// for a change before polling again).
    ///
    /// An error names the file. The follower stays usable: the next poll retries where it
    /// stopped, except for a gzip file that failed to decompress, which is given up with a
    /// [`LOST_CORRUPT`] event.
    pub fn poll(&mut self, budget: usize, out: &mut dyn FnMut(TailEvent<'_>)) -> io::Result<usize> {
        let mut read = 0usize;
        // The open file is checked for in-place truncation when the poll starts (it may have
        // regrown past our offset since the last poll) and at its end if anything was read.
        let mut check_first = true;
        let mut read_since_check = false;
        while !self.finished {
            let Some(cur) = &self.cur else {
                if !self.open_next(out)? {
                    if self.stream_over()? {
                        self.finished = true;
                    }
                    break;
                }
                // Just opened: nothing to check yet.
                check_first = false;
                read_since_check = false;
                continue;
            };
            let draining = cur.draining;
            if check_first {
                check_first = false;
                if !draining && cur.fp.is_none() && self.lines.read_pos() == 0 {
                    // Nothing read from it, so nothing to compare: if it was copied and truncated
                    // since it was opened, only the directory shows it. Choose again.
                    self.cur = None;
                    continue;
                }
                if self.truncated_in_place()? {
                    self.on_truncated(out)?;
                    continue;
                }
            }
            self.emit_lines(out);
            if read >= budget {
                break;
            }
            let n = self.read_more(budget - read, out)?;
            if n > 0 {
                read += n;
                read_since_check = true;
                continue;
            }
            // End of the file, for now.
            if draining {
                self.finish_current(out);
            } else if read_since_check {
                read_since_check = false;
                if self.truncated_in_place()? {
                    self.on_truncated(out)?;
                }
            } else if self.can_grow()? {
                self.lines.shrink_when_idle();
                break;
            } else if let Some(cur) = &mut self.cur {
                // Writes may have landed before the runtime reopened: read to the end once more.
                cur.draining = true;
            }
        }
        Ok(read)
    }

    /// Position after the last line handed out (`None` before the first file's first line),
    /// or the start position until then.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// Bytes of the current file not read yet: its size minus the offset consumed (for a gzip
    /// file: compressed size minus compressed bytes read). Files after it are not counted.
    pub fn backlog(&self) -> u64 {
        let Some(cur) = &self.cur else { return 0 };
        let Ok(meta) = cur.src.file().metadata() else {
            return 0;
        };
        let read = cur.src.compressed_read().unwrap_or(self.lines.pos());
        meta.len().saturating_sub(read)
    }

    /// True once the stream can produce nothing more: its directory is gone (pod deleted) or a
    /// newer restart exists, and every file, the live one included, was drained.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Hands out every complete line in the buffer.
    fn emit_lines(&mut self, out: &mut dyn FnMut(TailEvent<'_>)) {
        while let Some(span) = self.lines.next_line(self.max_line_bytes) {
            self.emit(span, out);
        }
    }

    fn emit(&mut self, span: Span, out: &mut dyn FnMut(TailEvent<'_>)) {
        let Some(cur) = &mut self.cur else { return };
        let bytes = self.lines.bytes(&span);
        let fp = match cur.fp {
            Some(fp) => fp,
            None => {
                // The first line: its first HEAD bytes name the content, unless fewer were kept.
                let fp = if !span.truncated || span.keep >= HEAD {
                    fingerprint(bytes)
                } else {
                    let mut head = [0u8; HEAD];
                    read_head(cur.src.file(), cur.src.is_gz(), &mut head)
                        .ok()
                        .and_then(|n| head_fingerprint(&head[..n]))
                        .unwrap_or_else(|| fingerprint(bytes))
                };
                cur.fp = Some(fp);
                fp
            }
        };
        if !cur.announced {
            cur.announced = true;
            out(TailEvent::File {
                path: &cur.path,
                fingerprint: fp,
                offset: cur.start,
            });
        }
        self.position = Some(Position {
            fingerprint: fp,
            offset: span.end,
        });
        out(TailEvent::Line(PhysicalLine {
            bytes,
            offset: span.offset,
            end: span.end,
            truncated: span.truncated,
            terminated: span.terminated,
        }));
    }

    /// One read from the current file into the buffer; 0 at end of file.
    fn read_more(
        &mut self,
        budget: usize,
        out: &mut dyn FnMut(TailEvent<'_>),
    ) -> io::Result<usize> {
        let Some(cur) = &mut self.cur else {
            return Ok(0);
        };
        let at = self.lines.read_pos();
        let space = self.lines.space(self.max_line_bytes);
        let want = space.len().min(budget.max(1));
        match cur.src.read(&mut space[..want]) {
            Ok(n) => {
                self.lines.commit(n);
                Ok(n)
            }
            Err(e) => {
                let what = format!("read error at offset {at} in");
                let err = with_path(e, &what, &cur.path);
                if cur.src.is_gz() {
                    // The decoder's state is unknown: give the rest of the file up.
                    out(TailEvent::Lost {
                        path: &cur.path,
                        bytes: None,
                        reason: LOST_CORRUPT,
                    });
                    let cur = self.cur.take().expect("current file");
                    self.lines.reset(0);
                    self.finished_with(cur.fp, cur.id);
                }
                Err(err)
            }
        }
    }

    /// The current file was read to its end and will not grow: hand out its unterminated last
    /// line, if any, and remember it as read.
    fn finish_current(&mut self, out: &mut dyn FnMut(TailEvent<'_>)) {
        if let Some(span) = self.lines.take_partial() {
            self.emit(span, out);
        }
        if let Some(cur) = self.cur.take() {
            self.finished_with(cur.fp, cur.id);
        }
    }

    fn finished_with(&mut self, fp: Option<u64>, id: FileId) {
        match fp {
            Some(fp) => self.mark_done(fp),
            None => self.finished_empty = Some(id),
        }
    }

    fn mark_done(&mut self, fp: u64) {
        if self.done.len() == DONE_MAX {
            self.done.pop_front();
        }
        self.done.push_back(fp);
    }

    fn is_done(&self, fp: Option<u64>) -> bool {
        fp.is_some_and(|fp| self.done.contains(&fp))
    }

    /// The stream's files, none if its directory is gone.
    fn list(&self) -> io::Result<Vec<LogFile>> {
        match stream_files(&self.key) {
            Ok(files) => Ok(files),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(with_path(e, "cannot list", &self.key.dir)),
        }
    }

    /// Opens a stream file and reads its start; `None` if it vanished meanwhile.
    fn inspect(&self, f: &LogFile) -> io::Result<Option<Candidate>> {
        let file = match File::open(&f.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(with_path(e, "cannot open", &f.path)),
        };
        let meta = file
            .metadata()
            .map_err(|e| with_path(e, "cannot stat", &f.path))?;
        let gz = is_gzip(&file).map_err(|e| with_path(e, "cannot read", &f.path))?;
        let mut head = [0u8; HEAD];
        let (fp, settled, corrupt) = match read_head(&file, gz, &mut head) {
            // Until its first line is complete, a growing file's fingerprint still changes.
            Ok(n) => (
                head_fingerprint(&head[..n]),
                n == HEAD || head[..n].contains(&b'\n'),
                false,
            ),
            Err(e) if gz && is_corrupt(&e) => (None, false, true),
            Err(e) => return Err(with_path(e, "cannot read", &f.path)),
        };
        Ok(Some(Candidate {
            path: f.path.clone(),
            id: FileId::of(&meta),
            size: meta.len(),
            gz,
            fp,
            settled,
            corrupt,
            file,
        }))
    }

    /// Opens the next file to read: the checkpointed one when resuming, else the oldest file
    /// after the newest one already read. False when there is none (yet).
    fn open_next(&mut self, out: &mut dyn FnMut(TailEvent<'_>)) -> io::Result<bool> {
        let mut files = self.list()?;
        if let Some(pos) = self.resume {
            // Twice: kubelet may compress the checkpointed file (new `.gz`, original deleted)
            // between the listing and the look inside; a second listing finds the `.gz`.
            for attempt in 0..2 {
                if attempt == 1 {
                    files = self.list()?;
                }
                let mut older = Vec::new();
                for f in &files {
                    let Some(c) = self.inspect(f)? else { continue };
                    if c.fp == Some(pos.fingerprint) {
                        // What comes before the checkpoint was read before it.
                        for fp in older {
                            self.mark_done(fp);
                        }
                        self.resume = None;
                        self.start(c, Some(pos), out)?;
                        return Ok(true);
                    }
                    older.extend(c.fp);
                }
            }
            self.resume = None;
            out(TailEvent::Lost {
                path: &self.live,
                bytes: None,
                reason: LOST_CHECKPOINT,
            });
        }
        let mut next = self.unread(&files)?;
        for p in std::mem::take(&mut self.pending) {
            if !self.is_done(Some(p.fp)) && !next.iter().any(|c| c.fp == Some(p.fp)) {
                out(TailEvent::Lost {
                    path: &p.path,
                    bytes: Some(p.size),
                    reason: LOST_DELETED,
                });
            }
        }
        // An empty file is skipped unless it is the last one, which may still be written to;
        // a corrupt one is skipped and reported once.
        let last = next.len().saturating_sub(1);
        let pick = next.iter().enumerate().position(|(i, c)| {
            !c.corrupt && (c.fp.is_some() || (i == last && self.finished_empty != Some(c.id)))
        });
        for c in &next[..pick.unwrap_or(next.len())] {
            if c.corrupt && !self.reported_corrupt.contains(&c.id) {
                if self.reported_corrupt.len() == DONE_MAX {
                    self.reported_corrupt.pop_front();
                }
                self.reported_corrupt.push_back(c.id);
                out(TailEvent::Lost {
                    path: &c.path,
                    bytes: Some(c.size),
                    reason: LOST_CORRUPT,
                });
            }
        }
        let Some(i) = pick else { return Ok(false) };
        let chosen = next.remove(i);
        self.pending = next
            .drain(i..)
            .filter(|c| c.settled)
            .filter_map(|c| {
                Some(Pending {
                    fp: c.fp?,
                    path: c.path,
                    size: c.size,
                })
            })
            .collect();
        self.start(chosen, None, out)?;
        Ok(true)
    }

    /// The files after the newest one already read, oldest first: the ones not read yet.
    fn unread(&self, files: &[LogFile]) -> io::Result<Vec<Candidate>> {
        let mut unread = Vec::new();
        for f in files.iter().rev() {
            let Some(c) = self.inspect(f)? else { continue };
            if self.is_done(c.fp) {
                break;
            }
            unread.push(c);
        }
        unread.reverse();
        Ok(unread)
    }

    /// Makes `c` the current file, at the checkpoint `resume` or at its start.
    fn start(
        &mut self,
        c: Candidate,
        resume: Option<Position>,
        out: &mut dyn FnMut(TailEvent<'_>),
    ) -> io::Result<()> {
        let mut src = Source::new(c.file, c.gz);
        let offset = resume.map_or(0, |p| p.offset);
        self.lines.reset(offset);
        if offset > 0 {
            src.skip_to(offset, self.lines.space(self.max_line_bytes))
                .map_err(|e| {
                    with_path(e, &format!("cannot skip to offset {offset} in"), &c.path)
                })?;
        }
        let cur = self.cur.insert(Current {
            path: c.path,
            id: c.id,
            src,
            fp: resume.map(|p| p.fingerprint),
            announced: false,
            start: offset,
            draining: c.gz,
        });
        if let Some(pos) = resume {
            cur.announced = true;
            out(TailEvent::File {
                path: &cur.path,
                fingerprint: pos.fingerprint,
                offset,
            });
        }
        Ok(())
    }

    /// True when the open live file was truncated in place: it is smaller than what was read,
    /// or its start is no longer what was read.
    fn truncated_in_place(&self) -> io::Result<bool> {
        let Some(cur) = &self.cur else {
            return Ok(false);
        };
        if cur.draining || cur.src.is_gz() {
            return Ok(false);
        }
        let file = cur.src.file();
        let size = file
            .metadata()
            .map_err(|e| with_path(e, "cannot stat", &cur.path))?
            .len();
        let read = self.lines.read_pos();
        if size < read {
            return Ok(true);
        }
        if cur.fp.is_none() && read == 0 {
            return Ok(false);
        }
        let mut head = [0u8; HEAD];
        let n = read_head(file, false, &mut head)
            .map_err(|e| with_path(e, "cannot read", &cur.path))?;
        if !same_start(cur.fp, self.lines.pending(), &head[..n]) {
            return Ok(true);
        }
        if cur.fp.is_some() {
            return Ok(false);
        }
        // The few bytes of an unfinished first line (a timestamp's start) may begin the new
        // content too. Then a copy shows it: while the live file is read, no other unread file
        // can appear but a copy of it.
        let live = fs::metadata(&self.live).is_ok_and(|m| FileId::of(&m) == cur.id);
        Ok(live && self.find_copy()?.is_some())
    }

    /// The copy of the current file made by copy-truncate: an unread file that starts as it
    /// does. Several may match an unfinished first line's few bytes; the oldest was made first.
    fn find_copy(&self) -> io::Result<Option<Candidate>> {
        let Some(cur) = &self.cur else {
            return Ok(None);
        };
        for c in self.unread(&self.list()?)? {
            if c.id == cur.id || c.corrupt {
                continue;
            }
            let mut head = [0u8; HEAD];
            let n = read_head(&c.file, c.gz, &mut head)
                .map_err(|e| with_path(e, "cannot read", &c.path))?;
            if same_start(cur.fp, self.lines.pending(), &head[..n]) {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The current file was truncated in place: continue with its copy from where we were, or
    /// report the loss; then the truncated file is read again from 0.
    fn on_truncated(&mut self, out: &mut dyn FnMut(TailEvent<'_>)) -> io::Result<()> {
        if let Some(c) = self.find_copy()? {
            let read = self.lines.read_pos();
            let mut src = Source::new(c.file, c.gz);
            src.skip_to(read, self.lines.space(self.max_line_bytes))
                .map_err(|e| with_path(e, &format!("cannot skip to offset {read} in"), &c.path))?;
            if let Some(cur) = &mut self.cur {
                cur.src = src;
                cur.path = c.path;
                cur.id = c.id;
                cur.draining = true;
            }
            return Ok(());
        }
        if let Some(span) = self.lines.take_partial() {
            self.emit(span, out);
        }
        let Some(cur) = &mut self.cur else {
            return Ok(());
        };
        let fp = cur.fp.take();
        out(TailEvent::Lost {
            path: &cur.path,
            bytes: None,
            reason: LOST_TRUNCATED,
        });
        cur.src
            .skip_to(0, &mut [])
            .map_err(|e| with_path(e, "cannot seek", &cur.path))?;
        cur.announced = false;
        cur.start = 0;
        let id = cur.id;
        self.lines.reset(0);
        if fp.is_some() {
            self.finished_with(fp, id);
        }
        Ok(())
    }

    /// At the end of the current file: can more be written to it?
    fn can_grow(&self) -> io::Result<bool> {
        let Some(cur) = &self.cur else {
            return Ok(false);
        };
        match fs::metadata(&self.live) {
            // Rotated (or replaced): the runtime writes to the new live file now.
            Ok(meta) if FileId::of(&meta) != cur.id => Ok(false),
            Ok(_) => Ok(!self.newer_restart(false)?),
            // Between kubelet's rename and the runtime's reopen, the runtime still writes to the
            // renamed file, the newest one: keep waiting for it, unless the stream is over.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(!self.stream_over()? && self.is_newest(cur.id)?)
            }
            Err(e) => Err(with_path(e, "cannot stat", &self.live)),
        }
    }

    /// Whether the file `id` is the newest of the stream's files (a gzipped or deleted file is
    /// not: kubelet keeps the newest rotated file as it is).
    fn is_newest(&self, id: FileId) -> io::Result<bool> {
        let files = self.list()?;
        for f in files.iter().rev() {
            match fs::metadata(&f.path) {
                Ok(meta) => return Ok(FileId::of(&meta) == id),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(with_path(e, "cannot stat", &f.path)),
            }
        }
        Ok(false)
    }

    /// The pod's directory is gone, or a newer restart of the container exists.
    fn stream_over(&self) -> io::Result<bool> {
        match fs::symlink_metadata(&self.key.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(with_path(e, "cannot stat", &self.key.dir)),
            Ok(_) => self.newer_restart(true),
        }
    }

    /// A newer restart's log exists: `<restart + 1>.log` (one stat), or with `full` any higher
    /// restart count (a directory listing).
    fn newer_restart(&self, full: bool) -> io::Result<bool> {
        let Some(next) = self.key.restart.checked_add(1) else {
            return Ok(false);
        };
        if fs::symlink_metadata(self.key.dir.join(format!("{next}.log"))).is_ok() {
            return Ok(true);
        }
        if !full {
            return Ok(false);
        }
        let entries = match fs::read_dir(&self.key.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(with_path(e, "cannot list", &self.key.dir)),
        };
        Ok(entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(kubelet_name)
                .is_some_and(|(restart, _)| restart > self.key.restart)
        }))
    }
}

/// Whether a file starting with `head` holds the content being read: by fingerprint once the
/// first line is known, else by the bytes of the unfinished first line read so far.
fn same_start(fp: Option<u64>, pending: &[u8], head: &[u8]) -> bool {
    match fp {
        Some(fp) => head_fingerprint(head) == Some(fp),
        None => {
            let k = pending.len().min(HEAD);
            head.len() >= k && head[..k] == pending[..k]
        }
    }
}
