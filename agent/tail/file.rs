//! An open log file: its identity, its start (for the fingerprint), and its bytes, plain or
//! decompressed.

use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use memchr::memchr;

use crate::read::fingerprint;

/// How much of a file's start its fingerprint covers (see [`fingerprint`]).
pub(super) const HEAD: usize = 1024;

/// Which file an open descriptor is. Only compared while the descriptor is held open: an inode
/// number is reused once its file is deleted and closed, so it never identifies content over
/// time (fingerprints do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// An io error that names the file, so the agent's log line is actionable on its own.
pub(super) fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Reads through a descriptor at explicit offsets, leaving the descriptor's position alone.
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn fill(mut r: impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Whether the file is gzip, by its magic bytes (like `LineReader`, not by name).
pub(super) fn is_gzip(file: &File) -> io::Result<bool> {
    let mut magic = [0u8; 2];
    Ok(fill(At { file, pos: 0 }, &mut magic)? == 2 && magic == [0x1f, 0x8b])
}

/// The file's first (decompressed) bytes, up to [`HEAD`], without moving its position; returns
/// how many were read.
pub(super) fn read_head(file: &File, gz: bool, head: &mut [u8; HEAD]) -> io::Result<usize> {
    if gz {
        fill(MultiGzDecoder::new(At { file, pos: 0 }), head)
    } else {
        fill(At { file, pos: 0 }, head)
    }
}

/// Whether an error reading a gzip file means its content is damaged (as opposed to an I/O
/// problem worth retrying).
pub(super) fn is_corrupt(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof
    )
}

/// The fingerprint of content that starts with `head`: [`fingerprint`] of its first line, where
/// a head without a newline is either the first [`HEAD`] bytes of a longer line or the whole
/// content (a file holding one unterminated line). `None` for no content.
pub(super) fn head_fingerprint(head: &[u8]) -> Option<u64> {
    if head.is_empty() {
        return None;
    }
    let line = memchr(b'\n', head).map_or(head, |i| &head[..i]);
    Some(fingerprint(line))
}

/// Counts the compressed bytes a gzip decoder pulled from the file, for the backlog.
pub(super) struct Counted {
    file: File,
    read: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// The bytes of an open file, decompressed when it is gzip.
pub(super) enum Source {
    Plain(File),
    Gz(Box<MultiGzDecoder<Counted>>),
}

impl Source {
    /// `file` must be at its start.
    pub fn new(file: File, gz: bool) -> Self {
        if gz {
            Self::Gz(Box::new(MultiGzDecoder::new(Counted { file, read: 0 })))
        } else {
            Self::Plain(file)
        }
    }

    pub fn file(&self) -> &File {
        match self {
            Self::Plain(f) => f,
            Self::Gz(d) => &d.get_ref().file,
        }
    }

    pub fn is_gz(&self) -> bool {
        matches!(self, Self::Gz(_))
    }

    /// Compressed bytes consumed so far, for a gzip file.
    pub fn compressed_read(&self) -> Option<u64> {
        match self {
            Self::Plain(_) => None,
            Self::Gz(d) => Some(d.get_ref().read),
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match self {
                Self::Plain(f) => f.read(buf),
                Self::Gz(d) => d.read(buf),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    /// From the start of the file, moves to (decompressed) offset `to`: a seek for a plain file,
    /// reading and discarding into `scratch` for gzip.
    pub fn skip_to(&mut self, to: u64, scratch: &mut [u8]) -> io::Result<()> {
        match self {
            Self::Plain(f) => f.seek(SeekFrom::Start(to)).map(drop),
            Self::Gz(_) => {
                let mut left = to;
                while left > 0 {
                    let want = scratch
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    match self.read(&mut scratch[..want])? {
                        0 => break,
                        n => left -= n as u64,
                    }
                }
                Ok(())
            }
        }
    }
}
