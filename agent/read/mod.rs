//! Stage 1: physical lines, with exact byte offsets, out of a container log file.
//!
//! Log files are large (hundreds of MB, rotated ones gzipped) and may contain pathological lines
//! (a runaway process writing 50 MB without a newline), so the reader keeps one reusable buffer,
//! scans it with `memchr`, hands out borrowed slices, and never holds more than
//! `max_line_bytes` of a line: the rest of an overlong line is read and thrown away. Offsets are
//! positions in the *decompressed* stream so that later stages can point back at the source.

pub(crate) mod lines;

use lines::Lines;

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

/// Name used in errors when the reader did not come from a file.
const READER_NAME: &str = "<reader>";

/// One physical line of a file, without its trailing "\n".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysicalLine<'a> {
    pub bytes: &'a [u8],
    /// byte offset of the line's first byte in the (decompressed) file
    pub offset: u64,
    /// offset just after the line's "\n" (or after the last byte at EOF)
    pub end: u64,
    /// true when the line was longer than max_line_bytes: `bytes` holds the first max_line_bytes, the rest was skipped
    pub truncated: bool,
    /// false for a last line that had no trailing "\n" (file ended mid-line)
    pub terminated: bool,
}

/// Why a file could not be read. Every variant names the file so that a message in the agent's
/// log is actionable on its own.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("read error in {} at offset {offset}: {source}", path.display())]
    Read {
        path: PathBuf,
        /// bytes of the file successfully read before the error
        offset: u64,
        source: io::Error,
    },
    #[error(
        "corrupt or truncated gzip stream in {} after {offset} decompressed bytes: {source}",
        path.display()
    )]
    Gzip {
        path: PathBuf,
        /// decompressed bytes successfully read before the error
        offset: u64,
        source: io::Error,
    },
}

/// Splits a byte stream into [`PhysicalLine`]s, on the same bounded buffer as the agent's tailer.
pub struct LineReader {
    reader: Box<dyn Read + Send>,
    path: PathBuf,
    gzip: bool,
    max_line_bytes: usize,
    lines: Lines,
    eof: bool,
    /// Set after a read error: the stream is in an unknown state, so the reader stops there.
    failed: bool,
}

impl LineReader {
    /// Opens a file; gzip is detected by magic bytes (1f 8b), not by name, and read with flate2::read::MultiGzDecoder.
    pub fn open(path: &Path, max_line_bytes: usize) -> Result<Self, ReadError> {
        let open_err = |source| ReadError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        // Sniff the magic without seeking, so that pipes and /dev/stdin-like paths work too.
        let mut magic = [0u8; 2];
        let mut got = 0;
        while got < magic.len() {
            match file.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(open_err(e)),
            }
        }
        let gzip = got == 2 && magic == [0x1f, 0x8b];
        let stream = Cursor::new(magic).take(got as u64).chain(file);
        let reader: Box<dyn Read + Send> = if gzip {
            Box::new(MultiGzDecoder::new(stream))
        } else {
            Box::new(stream)
        };
        let mut this = Self::from_reader(reader, max_line_bytes);
        this.path = path.to_path_buf();
        this.gzip = gzip;
        Ok(this)
    }

    /// Wraps an already opened stream, read as is (no gzip detection: the caller chose the
    /// decoding). Errors name the source `<reader>`.
    pub fn from_reader(reader: Box<dyn Read + Send>, max_line_bytes: usize) -> Self {
        Self {
            reader,
            path: PathBuf::from(READER_NAME),
            gzip: false,
            max_line_bytes,
            lines: Lines::new(),
            eof: false,
            failed: false,
        }
    }

    /// Reports offsets relative to `offset` instead of 0, for a caller that resumes a file it
    /// has already positioned (e.g. seeked to a checkpoint) before handing it over.
    pub fn with_start_offset(mut self, offset: u64) -> Self {
        self.lines.reset(offset);
        self
    }

    /// true when the file was recognised as gzip by [`LineReader::open`].
    pub fn is_gzip(&self) -> bool {
        self.gzip
    }

    /// Offset just after the last line handed out: where a resumed read would start.
    pub fn position(&self) -> u64 {
        self.lines.pos()
    }

    /// The next line, `Ok(None)` at end of input. After an error the reader is finished and
    /// returns `Ok(None)`: the lines before the damage were already handed out, and a partial
    /// line at the point of the error is dropped because its content is unknown.
    pub fn next_line(&mut self) -> Result<Option<PhysicalLine<'_>>, ReadError> {
        if self.failed {
            return Ok(None);
        }
        let max = self.max_line_bytes;
        let span = loop {
            if let Some(span) = self.lines.next_line(max) {
                break span;
            }
            if self.eof {
                match self.lines.take_partial() {
                    Some(span) => break span,
                    None => return Ok(None),
                }
            }
            let offset = self.lines.read_pos();
            let n = loop {
                match self.reader.read(self.lines.space(max)) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        self.failed = true;
                        let path = self.path.clone();
                        return Err(if self.gzip {
                            ReadError::Gzip {
                                path,
                                offset,
                                source,
                            }
                        } else {
                            ReadError::Read {
                                path,
                                offset,
                                source,
                            }
                        });
                    }
                }
            };
            self.lines.commit(n);
            self.eof = n == 0;
        };
        Ok(Some(PhysicalLine {
            bytes: self.lines.bytes(&span),
            offset: span.offset,
            end: span.end,
            truncated: span.truncated,
            terminated: span.terminated,
        }))
    }
}

/// Identity of a log file's content: a checksum of its first line (at most 1 KiB of it). Stable
/// when kubelet renames or gzips the file, unlike its path or inode; two files share it only if
/// they start with the same line, and container log lines start with a nanosecond timestamp.
pub fn fingerprint(first_line: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&first_line[..first_line.len().min(1024)])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::lines::CHUNK;
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Owned {
        pub(crate) bytes: Vec<u8>,
        pub(crate) offset: u64,
        pub(crate) end: u64,
        pub(crate) truncated: bool,
        pub(crate) terminated: bool,
    }

    fn owned(l: PhysicalLine<'_>) -> Owned {
        Owned {
            bytes: l.bytes.to_vec(),
            offset: l.offset,
            end: l.end,
            truncated: l.truncated,
            terminated: l.terminated,
        }
    }

    fn collect(r: &mut LineReader) -> Vec<Owned> {
        let mut v = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            v.push(owned(l));
        }
        v
    }

    /// Hands out at most `n` bytes per read, to exercise every buffer boundary.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        n: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let k = self.n.min(out.len()).min(self.data.len() - self.at);
            out[..k].copy_from_slice(&self.data[self.at..self.at + k]);
            self.at += k;
            Ok(k)
        }
    }

    /// The obviously correct split, to compare the buffered reader against.
    pub(crate) fn naive(data: &[u8], max: usize) -> Vec<Owned> {
        let mut v = Vec::new();
        let mut at = 0usize;
        while at < data.len() {
            let (len, terminated) = match data[at..].iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (data.len() - at, false),
            };
            let end = at + len + usize::from(terminated);
            v.push(Owned {
                bytes: data[at..at + len.min(max)].to_vec(),
                offset: at as u64,
                end: end as u64,
                truncated: len > max,
                terminated,
            });
            at = end;
        }
        v
    }

    fn line(bytes: &[u8], offset: u64, end: u64, truncated: bool, terminated: bool) -> Owned {
        Owned {
            bytes: bytes.to_vec(),
            offset,
            end,
            truncated,
            terminated,
        }
    }

    #[test]
    fn splits_lines_with_exact_offsets() {
        let cases: &[(&[u8], Vec<Owned>)] = &[
            (b"", vec![]),
            (b"\n", vec![line(b"", 0, 1, false, true)]),
            (
                b"ab\ncde\n",
                vec![
                    line(b"ab", 0, 3, false, true),
                    line(b"cde", 3, 7, false, true),
                ],
            ),
            (
                b"ab\n\ncd",
                vec![
                    line(b"ab", 0, 3, false, true),
                    line(b"", 3, 4, false, true),
                    line(b"cd", 4, 6, false, false),
                ],
            ),
            (
                b"x\r\n\xff\xfe\n",
                vec![
                    line(b"x\r", 0, 3, false, true),
                    line(b"\xff\xfe", 3, 6, false, true),
                ],
            ),
        ];
        for (input, want) in cases {
            let mut r = LineReader::from_reader(Box::new(Cursor::new(input.to_vec())), 1024);
            assert_eq!(&collect(&mut r), want, "input {input:?}");
            assert_eq!(r.position(), input.len() as u64);
            assert!(!r.is_gzip());
        }
    }

    #[test]
    fn line_of_exactly_max_is_not_truncated() {
        let mut r = LineReader::from_reader(Box::new(Cursor::new(b"abcd\nabcde\nab".to_vec())), 4);
        assert_eq!(
            collect(&mut r),
            vec![
                line(b"abcd", 0, 5, false, true),
                line(b"abcd", 5, 11, true, true),
                line(b"ab", 11, 13, false, false),
            ]
        );
    }

    #[test]
    fn matches_naive_split_for_any_read_size_and_limit() {
        let mut data = Vec::new();
        for i in 0..400usize {
            data.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, (i * 37) % 300));
            data.push(b'\n');
        }
        data.extend_from_slice(b"tail without newline");
        let long_tail = {
            let mut d = data.clone();
            d.extend(std::iter::repeat_n(b'z', 5000));
            d
        };
        for input in [&data, &long_tail] {
            for read_size in [1usize, 7, 100, 4096, 1 << 20] {
                for max in [0usize, 1, 50, 299, 300, 1000, CHUNK * 3] {
                    let src = Trickle {
                        data: input.clone(),
                        at: 0,
                        n: read_size,
                    };
                    let mut r = LineReader::from_reader(Box::new(src), max);
                    assert_eq!(
                        collect(&mut r),
                        naive(input, max),
                        "read {read_size} max {max}"
                    );
                }
            }
        }
    }

    #[test]
    fn huge_line_is_truncated_with_bounded_memory() {
        const MIB: usize = 1 << 20;
        const HUGE: u64 = 50 * 1024 * 1024;
        let src = Cursor::new(b"first\n".to_vec())
            .chain(io::repeat(b'x').take(HUGE))
            .chain(Cursor::new(b"\nafter\n".to_vec()));
        let mut r = LineReader::from_reader(Box::new(src), MIB);
        assert_eq!(
            owned(r.next_line().unwrap().unwrap()),
            line(b"first", 0, 6, false, true)
        );
        let l = r.next_line().unwrap().unwrap();
        assert!(l.truncated);
        assert!(l.terminated);
        assert_eq!(l.bytes.len(), MIB);
        assert!(l.bytes.iter().all(|&b| b == b'x'));
        assert_eq!((l.offset, l.end), (6, 6 + HUGE + 1));
        assert_eq!(
            owned(r.next_line().unwrap().unwrap()),
            line(b"after", 7 + HUGE, 13 + HUGE, false, true)
        );
        assert!(r.next_line().unwrap().is_none());
        assert!(
            r.lines.capacity() <= MIB + 2 * CHUNK,
            "buffer grew to {}",
            r.lines.capacity()
        );
    }

    #[test]
    fn huge_unterminated_last_line() {
        let src = Cursor::new(b"a\n".to_vec()).chain(io::repeat(b'y').take(300_000));
        let mut r = LineReader::from_reader(Box::new(src), 1000);
        r.next_line().unwrap().unwrap();
        let l = owned(r.next_line().unwrap().unwrap());
        assert_eq!(l, line(&[b'y'; 1000], 2, 300_002, true, false));
        assert!(r.next_line().unwrap().is_none());
    }

    #[test]
    fn start_offset_shifts_reported_offsets() {
        let r = LineReader::from_reader(Box::new(Cursor::new(b"ab\ncd\n".to_vec())), 10);
        let mut r = r.with_start_offset(100);
        assert_eq!(
            collect(&mut r),
            vec![
                line(b"ab", 100, 103, false, true),
                line(b"cd", 103, 106, false, true)
            ]
        );
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn sample_lines(n: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for i in 0..n {
            writeln!(data, "line {i} {}", "q".repeat(i % 50)).unwrap();
        }
        data
    }

    #[test]
    fn opens_plain_and_gzip_files_by_magic() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample_lines(5000);
        // The name lies on purpose: detection must not depend on it.
        let plain = dir.path().join("0.log.gz");
        let gz = dir.path().join("0.log.20240101-101010");
        std::fs::write(&plain, &data).unwrap();
        // Two gzip members, as `cat a.gz b.gz` would produce.
        let mut members = gzip(&data[..1000]);
        members.extend(gzip(&data[1000..]));
        std::fs::write(&gz, members).unwrap();
        for (path, is_gz) in [(&plain, false), (&gz, true)] {
            let mut r = LineReader::open(path, 4096).unwrap();
            assert_eq!(r.is_gzip(), is_gz);
            assert_eq!(collect(&mut r), naive(&data, 4096), "{}", path.display());
        }
        for tiny in [&b""[..], b"\x1f", b"\x1f\n"] {
            let p = dir.path().join("tiny");
            std::fs::write(&p, tiny).unwrap();
            let mut r = LineReader::open(&p, 10).unwrap();
            assert!(!r.is_gzip());
            assert_eq!(collect(&mut r), naive(tiny, 10));
        }
    }

    #[test]
    fn missing_file_error_names_path() {
        let err = match LineReader::open(Path::new("/nonexistent/meshtap/0.log"), 10) {
            Err(e) => e,
            Ok(_) => panic!("opened a missing file"),
        };
        assert!(matches!(err, ReadError::Open { .. }));
        assert!(
            err.to_string().contains("/nonexistent/meshtap/0.log"),
            "{err}"
        );
    }

    /// Reads until the first error; returns the lines and the error.
    fn read_until_error(path: &Path) -> (Vec<Owned>, ReadError) {
        let mut r = LineReader::open(path, 4096).unwrap();
        assert!(r.is_gzip());
        let mut lines = Vec::new();
        loop {
            match r.next_line() {
                Ok(Some(l)) => lines.push(owned(l)),
                Ok(None) => panic!("damaged gzip read to the end without an error"),
                Err(e) => {
                    assert!(
                        r.next_line().unwrap().is_none(),
                        "reader not finished after error"
                    );
                    return (lines, e);
                }
            }
        }
    }

    #[test]
    fn truncated_and_corrupt_gzip_yield_lines_then_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample_lines(50_000);
        let gz = gzip(&data);
        let good = naive(&data, 4096);

        let truncated = dir.path().join("truncated");
        std::fs::write(&truncated, &gz[..gz.len() / 2]).unwrap();
        let (lines, err) = read_until_error(&truncated);
        assert!(
            lines.len() > 1000,
            "only {} lines before the cut",
            lines.len()
        );
        // Not assert_eq!: a failure would print a million lines.
        assert!(
            lines[..] == good[..lines.len()],
            "lines differ before the cut"
        );
        assert!(matches!(err, ReadError::Gzip { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&*truncated.to_string_lossy()),
            "{err}"
        );

        let corrupt = dir.path().join("corrupt");
        let mut bad = gz.clone();
        let mid = bad.len() / 2;
        bad[mid..mid + 64].fill(0xff);
        std::fs::write(&corrupt, &bad).unwrap();
        let (lines, err) = read_until_error(&corrupt);
        // Deflate may turn the damaged bytes into some garbage before the checksum catches it;
        // everything before the damage must be intact.
        let intact = lines.iter().zip(&good).take_while(|(a, b)| a == b).count();
        assert!(
            intact > 1000,
            "only {intact} intact lines before the damage"
        );
        assert!(lines.len() < good.len(), "read past the damage");
        assert!(matches!(err, ReadError::Gzip { .. }), "{err:?}");
    }
}
