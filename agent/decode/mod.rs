//! Stage 2: the container runtime's framing removed from each physical line, partial lines joined.
//!
//! Runtimes wrap what a container writes: CRI runtimes (containerd, CRI-O) prefix
//! `<time> <stream> <P|F> `, Docker's json-file driver wraps it in a JSON object, and both split
//! long lines into pieces (16 KiB for containerd and Docker, 8 KiB for CRI-O). Envoy payload logs
//! routinely exceed those sizes, so pieces must be joined back, per stream because stdout and
//! stderr pieces interleave. The format is usually detected from the first line, since one node
//! can run several runtimes and the path does not say which wrote a file.
//!
//! Hot path: a CRI or raw line that needs no joining is handed out borrowed straight from the
//! physical line; joined lines, decoded Docker text and the first piece's time live in buffers
//! owned by the decoder and reused, so steady-state decoding does not allocate per line. A line
//! that does not parse is counted and skipped, never fatal: log files get damaged (disk full,
//! rotation races) and one bad line must not lose the rest.

mod cri;
mod docker;
mod raw;

use crate::read::PhysicalLine;

/// Which of the container's output streams a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How the runtime framed the lines of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// containerd / CRI-O: `<RFC3339Nano time> <stdout|stderr> <P|F> <content>`.
    Cri,
    /// Docker json-file: `{"log":"...\n","stream":"stderr","time":"..."}`.
    Docker,
    /// No framing: the file is what the process wrote (Envoy run outside a container).
    Raw,
}

/// A line as the container wrote it, runtime framing removed, partial pieces joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerLine<'a> {
    /// Raw format: Stderr (where Envoy writes its logs).
    pub stream: Stream,
    /// The runtime's timestamp of the first piece, verbatim (RFC3339 / RFC3339Nano, `Z` or
    /// `+00:00` offsets). None for raw lines and Docker lines without a time.
    pub time: Option<&'a str>,
    /// Content without trailing "\n".
    pub text: &'a [u8],
    /// Offset of the first physical line that contributed.
    pub offset: u64,
    /// End offset of the last physical line that contributed.
    pub end: u64,
    /// Some piece was truncated, the joined line exceeded max_line_bytes (the first
    /// max_line_bytes are kept), the line's final piece never came (flushed by
    /// [`Decoder::finish`]), or a CRI line was cut by the end of the file.
    pub truncated: bool,
}

/// Counters for the agent's own metrics and for tests.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DecodeStats {
    /// Physical lines pushed.
    pub physical: u64,
    /// Container lines emitted.
    pub lines: u64,
    /// Physical lines skipped because they do not parse in the file's format.
    pub malformed: u64,
    /// Emitted lines made of more than one piece.
    pub partial_joined: u64,
    /// Emitted lines with `truncated` set (for any of its reasons).
    pub truncated: u64,
    /// Emitted lines whose final piece never came (flushed by [`Decoder::finish`]).
    pub incomplete: u64,
    /// Blank physical lines skipped before the format was detected.
    pub blank_skipped: u64,
}

/// Turns [`PhysicalLine`]s of one file into [`ContainerLine`]s. Serializable so the agent's
/// checkpoint can hold a partial line that spans the checkpointed position.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Decoder {
    format: Option<Format>,
    max_line_bytes: usize,
    /// Unfinished joined lines, indexed by [`stream_index`].
    pending: [Pending; 2],
    /// Decoded Docker `log` text of the current physical line.
    #[serde(skip)]
    scratch: Vec<u8>,
    #[serde(skip)]
    stats: DecodeStats,
}

impl Decoder {
    /// format None = auto-detect from the first non-empty line: a JSON object with a "log" key => Docker;
    /// `<RFC3339 time> <stdout|stderr> <tag> ...` => Cri; anything else => Raw.
    ///
    /// Docker detection also requires a `"stream"` of stdout/stderr, which Docker always
    /// writes: an unrelated JSON log with a `log` field stays Raw. Lines that are empty or only
    /// whitespace do not decide the format; they are skipped (and counted) until it is known.
    pub fn new(format: Option<Format>, max_line_bytes: usize) -> Self {
        Self {
            format,
            max_line_bytes,
            pending: [Pending::default(), Pending::default()],
            scratch: Vec::new(),
            stats: DecodeStats::default(),
        }
    }

    /// The file's format: as given, or as detected; None while still undetected.
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Decodes one physical line; calls `out` for each container line it completes (zero or one;
    /// a partial piece only completes at the stream's final piece).
    pub fn push(&mut self, line: &PhysicalLine<'_>, out: &mut dyn FnMut(ContainerLine<'_>)) {
        self.stats.physical += 1;
        let format = match self.format {
            Some(f) => f,
            None => {
                if line.bytes.iter().all(u8::is_ascii_whitespace) {
                    self.stats.blank_skipped += 1;
                    return;
                }
                let f = detect(line.bytes, &mut self.scratch);
                tracing::debug!(format = ?f, offset = line.offset, "detected container log format");
                self.format = Some(f);
                f
            }
        };
        match format {
            Format::Cri => self.push_cri(line, out),
            Format::Docker => self.push_docker(line, out),
            Format::Raw => raw::push(line, self.max_line_bytes, &mut self.stats, out),
        }
    }

    /// End of input: flush pending partial pieces (emitted with truncated = true because their final piece never came).
    pub fn finish(&mut self, out: &mut dyn FnMut(ContainerLine<'_>)) {
        let [stdout, stderr] = &mut self.pending;
        // Oldest first, so that output stays in file order as far as possible.
        let order = if stderr.active && (!stdout.active || stderr.offset < stdout.offset) {
            [Stream::Stderr, Stream::Stdout]
        } else {
            [Stream::Stdout, Stream::Stderr]
        };
        for stream in order {
            let p = &mut self.pending[stream_index(stream)];
            if p.active {
                p.truncated = true;
                self.stats.incomplete += 1;
                p.emit(stream, &mut self.stats, out);
            }
        }
    }

    fn push_cri(&mut self, line: &PhysicalLine<'_>, out: &mut dyn FnMut(ContainerLine<'_>)) {
        match cri::parse(line.bytes) {
            Ok(c) => {
                let piece = Piece {
                    stream: c.stream,
                    time: Some(c.time),
                    text: c.content,
                    partial: c.partial,
                    offset: line.offset,
                    end: line.end,
                    // CRI runtimes always end a record with "\n": without it the record was cut.
                    truncated: line.truncated || !line.terminated,
                };
                let p = &mut self.pending[stream_index(c.stream)];
                deliver(p, piece, self.max_line_bytes, &mut self.stats, out);
            }
            Err(reason) => self.malformed(line, reason),
        }
    }

    fn push_docker(&mut self, line: &PhysicalLine<'_>, out: &mut dyn FnMut(ContainerLine<'_>)) {
        match docker::parse(line.bytes, &mut self.scratch) {
            Ok(d) => {
                let piece = Piece {
                    stream: d.stream,
                    time: d.time,
                    text: &self.scratch,
                    partial: d.partial,
                    offset: line.offset,
                    end: line.end,
                    // A cut JSON object does not parse, so only the reader's flag can apply.
                    truncated: line.truncated,
                };
                let p = &mut self.pending[stream_index(d.stream)];
                deliver(p, piece, self.max_line_bytes, &mut self.stats, out);
            }
            Err(e) => {
                let reason = if line.truncated {
                    "json cut by max_line_bytes"
                } else if e.is_eof() {
                    "json cut short"
                } else {
                    "not a docker json-file record"
                };
                self.malformed(line, reason);
            }
        }
    }

    /// Counts a skipped line and warns about it: the first few so that a broken file is
    /// noticed at once, then only every 1000th so that a file of garbage cannot flood the log.
    fn malformed(&mut self, line: &PhysicalLine<'_>, reason: &'static str) {
        self.stats.malformed += 1;
        let n = self.stats.malformed;
        let reason = if line.bytes.is_empty() {
            "empty line"
        } else {
            reason
        };
        if n <= 5 || n.is_multiple_of(1000) {
            tracing::warn!(
                offset = line.offset,
                format = ?self.format,
                reason,
                malformed_so_far = n,
                "skipping container log line that does not parse"
            );
        }
    }
}

fn detect(bytes: &[u8], scratch: &mut Vec<u8>) -> Format {
    if cri::parse(bytes).is_ok() {
        Format::Cri
    } else if bytes.trim_ascii_start().starts_with(b"{") && docker::parse(bytes, scratch).is_ok() {
        Format::Docker
    } else {
        Format::Raw
    }
}

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// Cuts `text` to at most `max` bytes; the flag says whether anything was cut.
fn bound(text: &[u8], max: usize) -> (&[u8], bool) {
    if text.len() > max {
        (&text[..max], true)
    } else {
        (text, false)
    }
}

/// One physical line's contribution, framing already removed.
struct Piece<'a> {
    stream: Stream,
    time: Option<&'a str>,
    text: &'a [u8],
    /// More pieces of the same line follow on this stream.
    partial: bool,
    offset: u64,
    end: u64,
    truncated: bool,
}

/// Routes a piece: emitted directly when it is a whole line (the borrowed fast path), otherwise
/// accumulated in the stream's pending line, which is emitted with its final piece.
fn deliver(
    pending: &mut Pending,
    piece: Piece<'_>,
    max: usize,
    stats: &mut DecodeStats,
    out: &mut dyn FnMut(ContainerLine<'_>),
) {
    if piece.partial || pending.active {
        if !pending.active {
            pending.begin(piece.time, piece.offset);
        }
        pending.append(piece.text, piece.end, piece.truncated, max);
        if !piece.partial {
            pending.emit(piece.stream, stats, out);
        }
        return;
    }
    let (text, cut) = bound(piece.text, max);
    let truncated = piece.truncated || cut;
    stats.lines += 1;
    stats.truncated += u64::from(truncated);
    out(ContainerLine {
        stream: piece.stream,
        time: piece.time,
        text,
        offset: piece.offset,
        end: piece.end,
        truncated,
    });
}

/// A line being joined from pieces. Its buffers keep their capacity across lines (the text is
/// never longer than max_line_bytes), which is what keeps joining allocation-free in steady state.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Pending {
    active: bool,
    has_time: bool,
    time: String,
    #[serde(with = "crate::checkpoint::encoding::base64_bytes")]
    text: Vec<u8>,
    offset: u64,
    end: u64,
    truncated: bool,
    pieces: u32,
}

impl Pending {
    fn begin(&mut self, time: Option<&str>, offset: u64) {
        self.active = true;
        self.time.clear();
        self.has_time = time.is_some();
        if let Some(t) = time {
            self.time.push_str(t);
        }
        self.text.clear();
        self.offset = offset;
        self.end = offset;
        self.truncated = false;
        self.pieces = 0;
    }

    fn append(&mut self, piece: &[u8], end: u64, truncated: bool, max: usize) {
        let room = max.saturating_sub(self.text.len());
        let (kept, cut) = bound(piece, room);
        self.text.extend_from_slice(kept);
        self.truncated |= truncated || cut;
        self.end = end;
        self.pieces = self.pieces.saturating_add(1);
    }

    fn emit(
        &mut self,
        stream: Stream,
        stats: &mut DecodeStats,
        out: &mut dyn FnMut(ContainerLine<'_>),
    ) {
        stats.lines += 1;
        stats.partial_joined += u64::from(self.pieces > 1);
        stats.truncated += u64::from(self.truncated);
        out(ContainerLine {
            stream,
            time: self.has_time.then_some(self.time.as_str()),
            text: &self.text,
            offset: self.offset,
            end: self.end,
            truncated: self.truncated,
        });
        self.active = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::LineReader;
    use std::io::{Cursor, Write};

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Line {
        stream: Stream,
        time: Option<String>,
        text: Vec<u8>,
        offset: u64,
        end: u64,
        truncated: bool,
    }

    fn line(
        stream: Stream,
        time: Option<&str>,
        text: &[u8],
        span: (u64, u64),
        truncated: bool,
    ) -> Line {
        Line {
            stream,
            time: time.map(str::to_owned),
            text: text.to_vec(),
            offset: span.0,
            end: span.1,
            truncated,
        }
    }

    fn owned(c: ContainerLine<'_>) -> Line {
        Line {
            stream: c.stream,
            time: c.time.map(str::to_owned),
            text: c.text.to_vec(),
            offset: c.offset,
            end: c.end,
            truncated: c.truncated,
        }
    }

    struct Run {
        lines: Vec<Line>,
        stats: DecodeStats,
        format: Option<Format>,
    }

    /// Reads `input` with a generous reader limit and decodes it with `max` as the line limit.
    fn run(input: &[u8], format: Option<Format>, max: usize) -> Run {
        let mut reader = LineReader::from_reader(Box::new(Cursor::new(input.to_vec())), 1 << 20);
        let mut dec = Decoder::new(format, max);
        let mut lines = Vec::new();
        while let Some(pl) = reader.next_line().unwrap() {
            dec.push(&pl, &mut |c| lines.push(owned(c)));
        }
        dec.finish(&mut |c| lines.push(owned(c)));
        Run {
            lines,
            stats: dec.stats().clone(),
            format: dec.format(),
        }
    }

    /// (offset, end) of each physical line of `input`, to state expected spans readably.
    fn spans(input: &[u8]) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        let mut at = 0u64;
        for piece in input.split_inclusive(|&b| b == b'\n') {
            v.push((at, at + piece.len() as u64));
            at += piece.len() as u64;
        }
        v
    }

    const T1: &str = "2024-01-01T10:10:10.000000001Z";
    const T2: &str = "2024-01-01T10:10:10.000000002Z";
    const T3: &str = "2024-01-01T10:10:10.000000003Z";
    const T4: &str = "2024-01-01T10:10:10.000000004Z";
    const OUT: Stream = Stream::Stdout;
    const ERR: Stream = Stream::Stderr;

    #[test]
    fn cri_table() {
        struct Case {
            name: &'static str,
            input: String,
            want: Vec<Line>,
            joined: u64,
        }
        let full = format!("{T1} stdout F hello\n{T2} stderr F world two\n");
        let join = format!("{T1} stderr P abc\n{T2} stderr P def\n{T3} stderr F ghi\n");
        let inter =
            format!("{T1} stdout P o1\n{T2} stderr P e1\n{T3} stdout F o2\n{T4} stderr F e2\n");
        let empty = format!("{T1} stderr F\n{T2} stdout F \n{T3} stdout P \n{T4} stdout F x\n");
        let cases = vec![
            Case {
                name: "full lines",
                want: vec![
                    line(OUT, Some(T1), b"hello", spans(full.as_bytes())[0], false),
                    line(
                        ERR,
                        Some(T2),
                        b"world two",
                        spans(full.as_bytes())[1],
                        false,
                    ),
                ],
                input: full,
                joined: 0,
            },
            Case {
                name: "P+P+F joined, time of first piece, span of all pieces",
                want: vec![line(
                    ERR,
                    Some(T1),
                    b"abcdefghi",
                    (0, join.len() as u64),
                    false,
                )],
                input: join,
                joined: 1,
            },
            Case {
                name: "interleaved stdout/stderr partials",
                want: vec![
                    line(
                        OUT,
                        Some(T1),
                        b"o1o2",
                        (0, spans(inter.as_bytes())[2].1),
                        false,
                    ),
                    line(
                        ERR,
                        Some(T2),
                        b"e1e2",
                        (spans(inter.as_bytes())[1].0, inter.len() as u64),
                        false,
                    ),
                ],
                input: inter,
                joined: 2,
            },
            Case {
                name: "empty content with and without trailing space",
                want: vec![
                    line(ERR, Some(T1), b"", spans(empty.as_bytes())[0], false),
                    line(OUT, Some(T2), b"", spans(empty.as_bytes())[1], false),
                    line(
                        OUT,
                        Some(T3),
                        b"x",
                        (spans(empty.as_bytes())[2].0, empty.len() as u64),
                        false,
                    ),
                ],
                input: empty,
                joined: 1,
            },
        ];
        for c in cases {
            for format in [None, Some(Format::Cri)] {
                let r = run(c.input.as_bytes(), format, 1 << 20);
                assert_eq!(r.lines, c.want, "{}", c.name);
                assert_eq!(r.format, Some(Format::Cri), "{}", c.name);
                assert_eq!(r.stats.partial_joined, c.joined, "{}", c.name);
                assert_eq!(r.stats.lines, c.want.len() as u64, "{}", c.name);
                assert_eq!((r.stats.malformed, r.stats.truncated), (0, 0), "{}", c.name);
            }
        }
    }

    #[test]
    fn cri_exact_offsets_of_first_lines() {
        // Spelled out once by hand, so that the span helper is not trusted blindly.
        let input = format!("{T1} stdout F ab\n{T1} stdout P c\n{T1} stdout F d\n");
        let r = run(input.as_bytes(), None, 1 << 20);
        assert_eq!(r.lines[0].offset, 0);
        assert_eq!(r.lines[0].end, 43);
        assert_eq!((r.lines[1].offset, r.lines[1].end), (43, 127));
        assert_eq!(r.lines[1].text, b"cd");
    }

    /// Splits `content` the way a runtime does: pieces of `split` bytes, all `P` but the last.
    fn cri_split(time: &str, stream: &str, content: &[u8], split: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = content.chunks(split).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let tag = if i + 1 == chunks.len() { "F" } else { "P" };
            write!(out, "{time} {stream} {tag} ").unwrap();
            out.extend_from_slice(chunk);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn crio_plus_offset_and_8k_splits() {
        let time = "2023-06-07T08:09:10.123456789+00:00";
        let content: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = cri_split(time, "stderr", &content, 8192);
        let first_end = input.len() as u64;
        input.extend(format!("{time} stdout F next\n").as_bytes());
        let r = run(&input, None, 1 << 20);
        assert_eq!(r.format, Some(Format::Cri));
        assert_eq!(
            r.lines,
            vec![
                line(ERR, Some(time), &content, (0, first_end), false),
                line(
                    OUT,
                    Some(time),
                    b"next",
                    (first_end, input.len() as u64),
                    false
                ),
            ]
        );
        assert_eq!(r.stats.partial_joined, 1);
        assert_eq!(r.stats.physical, 4);
    }

    #[test]
    fn containerd_16k_splits_of_a_long_line() {
        let content: Vec<u8> = (0..100_000u32).map(|i| b'0' + (i % 10) as u8).collect();
        let input = cri_split(T1, "stdout", &content, 16 * 1024);
        let r = run(&input, None, 1 << 20);
        assert_eq!(
            r.lines,
            vec![line(
                OUT,
                Some(T1),
                &content,
                (0, input.len() as u64),
                false
            )]
        );
    }

    #[test]
    fn joined_line_bounded_by_max_line_bytes() {
        let content: Vec<u8> = (0..100u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = cri_split(T1, "stdout", &content, 30);
        input.extend(format!("{T2} stdout F 0123456789abc\n{T3} stdout F short\n").as_bytes());
        let s = spans(&input);
        let r = run(&input, None, 10);
        assert_eq!(
            r.lines,
            vec![
                line(OUT, Some(T1), &content[..10], (0, s[3].1), true),
                line(OUT, Some(T2), b"0123456789", s[4], true),
                line(OUT, Some(T3), b"short", s[5], false),
            ]
        );
        assert_eq!(r.stats.truncated, 2);
        assert_eq!(r.stats.partial_joined, 1);
    }

    #[test]
    fn cri_piece_truncated_by_reader_marks_line() {
        let input = format!("{T1} stdout P {}\n{T2} stdout F end\n", "x".repeat(500));
        let mut reader = LineReader::from_reader(Box::new(Cursor::new(input.into_bytes())), 100);
        let mut dec = Decoder::new(None, 1 << 20);
        let mut lines = Vec::new();
        while let Some(pl) = reader.next_line().unwrap() {
            dec.push(&pl, &mut |c| lines.push(owned(c)));
        }
        assert_eq!(lines.len(), 1);
        assert!(lines[0].truncated);
        let kept = 100 - (T1.len() + " stdout P ".len());
        assert_eq!(lines[0].text, [&b"x".repeat(kept)[..], b"end"].concat());
        assert_eq!((lines[0].offset, lines[0].end), (0, 585));
    }

    #[test]
    fn finish_flushes_pending_pieces_oldest_first() {
        let input = format!("{T1} stderr P e1\n{T2} stdout P o1\n{T3} stdout P o2\n");
        let s = spans(input.as_bytes());
        let r = run(input.as_bytes(), None, 1 << 20);
        assert_eq!(
            r.lines,
            vec![
                line(ERR, Some(T1), b"e1", s[0], true),
                line(OUT, Some(T2), b"o1o2", (s[1].0, s[2].1), true),
            ]
        );
        assert_eq!(
            (
                r.stats.incomplete,
                r.stats.truncated,
                r.stats.partial_joined
            ),
            (2, 2, 1)
        );
    }

    #[test]
    fn unterminated_last_line() {
        // CRI: the runtime always writes "\n", so a missing one means the record was cut.
        let cri = format!("{T1} stdout F whole\n{T2} stdout F cut sh");
        let s = spans(cri.as_bytes());
        let r = run(cri.as_bytes(), None, 1 << 20);
        assert_eq!(
            r.lines,
            vec![
                line(OUT, Some(T1), b"whole", s[0], false),
                line(OUT, Some(T2), b"cut sh", s[1], true),
            ]
        );
        // Docker: the JSON object is incomplete.
        let docker = "{\"log\":\"a\\n\",\"stream\":\"stdout\"}\n{\"log\":\"cut sh";
        let r = run(docker.as_bytes(), None, 1 << 20);
        assert_eq!(r.lines, vec![line(OUT, None, b"a", (0, 32), false)]);
        assert_eq!(r.stats.malformed, 1);
        // Raw: passed on as is.
        let r = run(b"one\ntwo", None, 1 << 20);
        assert_eq!(
            r.lines,
            vec![
                line(ERR, None, b"one", (0, 4), false),
                line(ERR, None, b"two", (4, 7), false),
            ]
        );
    }

    #[test]
    fn docker_table() {
        let t = "2020-01-02T03:04:05.123456789Z";
        let rec = |log: &str, stream: &str| {
            format!(
                "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"{t}\"}}\n",
                serde_json::to_string(log).unwrap()
            )
        };
        let plain = [rec("hello\n", "stdout"), rec("world\n", "stderr")].concat();
        let escaped = rec("a\tb\u{0}c\"d\\ \u{e9}\n", "stderr");
        let joined = [
            rec("abc", "stdout"),
            rec("def", "stderr"),
            rec("ghi\n", "stdout"),
            rec("\n", "stderr"),
        ]
        .concat();
        let s = spans(plain.as_bytes());
        let j = spans(joined.as_bytes());
        let cases: Vec<(&str, &String, Vec<Line>, u64)> = vec![
            (
                "plain",
                &plain,
                vec![
                    line(OUT, Some(t), b"hello", s[0], false),
                    line(ERR, Some(t), b"world", s[1], false),
                ],
                0,
            ),
            (
                "escapes",
                &escaped,
                vec![line(
                    ERR,
                    Some(t),
                    "a\tb\0c\"d\\ \u{e9}".as_bytes(),
                    (0, escaped.len() as u64),
                    false,
                )],
                0,
            ),
            (
                "partial pieces joined per stream",
                &joined,
                vec![
                    line(OUT, Some(t), b"abcghi", (j[0].0, j[2].1), false),
                    line(ERR, Some(t), b"def", (j[1].0, j[3].1), false),
                ],
                2,
            ),
        ];
        for (name, input, want, joined) in cases {
            for format in [None, Some(Format::Docker)] {
                let r = run(input.as_bytes(), format, 1 << 20);
                assert_eq!(r.format, Some(Format::Docker), "{name}");
                assert_eq!(r.lines, want, "{name}");
                assert_eq!(r.stats.partial_joined, joined, "{name}");
                assert_eq!(r.stats.malformed, 0, "{name}");
            }
        }
    }

    #[test]
    fn docker_16k_split_joined_and_bounded() {
        let content: String = (0..40_000u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let mut input = String::new();
        let pieces: Vec<&str> =
            [&content[..16384], &content[16384..32768], &content[32768..]].to_vec();
        for (i, p) in pieces.iter().enumerate() {
            let log = if i == 2 {
                format!("{p}\n")
            } else {
                p.to_string()
            };
            input += &format!(
                "{{\"log\":{},\"stream\":\"stdout\",\"time\":\"{T1}\"}}\n",
                serde_json::to_string(&log).unwrap()
            );
        }
        let r = run(input.as_bytes(), None, 1 << 20);
        assert_eq!(
            r.lines,
            vec![line(
                OUT,
                Some(T1),
                content.as_bytes(),
                (0, input.len() as u64),
                false
            )]
        );
        let r = run(input.as_bytes(), None, 20_000);
        assert_eq!(
            r.lines,
            vec![line(
                OUT,
                Some(T1),
                &content.as_bytes()[..20_000],
                (0, input.len() as u64),
                true
            )]
        );
        assert_eq!(r.stats.truncated, 1);
    }

    #[test]
    fn raw_lines() {
        let input = b"[2024-01-01 10:10:10.123][14][info][main] starting\n\n\xff\xfebin\n";
        let r = run(input, None, 1 << 20);
        assert_eq!(r.format, Some(Format::Raw));
        assert_eq!(
            r.lines,
            vec![
                line(
                    ERR,
                    None,
                    b"[2024-01-01 10:10:10.123][14][info][main] starting",
                    (0, 51),
                    false
                ),
                line(ERR, None, b"", (51, 52), false),
                line(ERR, None, b"\xff\xfebin", (52, 58), false),
            ]
        );
        let r = run(input, None, 5);
        assert_eq!(r.lines[0].text, b"[2024");
        assert!(r.lines[0].truncated);
        assert_eq!(r.stats.truncated, 1);
    }

    #[test]
    fn detection_table() {
        let cri = format!("{T1} stdout F x\n");
        let crio = "2023-06-07T08:09:10.1+00:00 stderr P x\n".to_string();
        let docker = "{\"log\":\"x\\n\",\"stream\":\"stderr\",\"time\":\"t\"}\n".to_string();
        let cases: Vec<(&str, String, Format, u64)> = vec![
            ("cri", cri.clone(), Format::Cri, 0),
            (
                "cri after blank lines",
                format!("\n \t\r\n{cri}"),
                Format::Cri,
                2,
            ),
            ("cri-o", crio, Format::Cri, 0),
            ("docker", docker.clone(), Format::Docker, 0),
            (
                "docker after blank line",
                format!("\n{docker}"),
                Format::Docker,
                1,
            ),
            (
                "envoy text",
                "[2024-01-01 10:10:10.123][1][info] x\n".into(),
                Format::Raw,
                0,
            ),
            (
                "json without log key",
                "{\"msg\":\"x\",\"stream\":\"stdout\"}\n".into(),
                Format::Raw,
                0,
            ),
            (
                "json log without stream",
                "{\"log\":\"x\\n\"}\n".into(),
                Format::Raw,
                0,
            ),
            (
                "time without stream",
                format!("{T1} hello\n"),
                Format::Raw,
                0,
            ),
            ("binary", "\u{0}\u{1}\u{2}\n".into(), Format::Raw, 0),
        ];
        for (name, input, want, blank) in cases {
            let r = run(input.as_bytes(), None, 1 << 20);
            assert_eq!(r.format, Some(want), "{name}");
            assert_eq!(r.stats.blank_skipped, blank, "{name}");
            assert_eq!(r.stats.lines, 1, "{name}");
        }
        let r = run(b"\n\n", None, 100);
        assert_eq!(
            (r.format, r.stats.blank_skipped, r.lines.len()),
            (None, 2, 0)
        );
        // A given format is not second-guessed: CRI text read as raw stays verbatim.
        let r = run(cri.as_bytes(), Some(Format::Raw), 100);
        assert_eq!(
            r.lines,
            vec![line(
                ERR,
                None,
                cri.trim_end().as_bytes(),
                (0, cri.len() as u64),
                false
            )]
        );
    }

    #[test]
    fn malformed_lines_counted_and_skipped() {
        let cri = [
            format!("{T1} stdout F ok1\n").into_bytes(),
            b"garbage line\n".to_vec(),
            b"\x00\x01\x02\xff\xfe\n".to_vec(),
            b"\n".to_vec(),
            format!("{T2} stdin F nope\n").into_bytes(),
            [
                format!("{T3} stdout F ").as_bytes(),
                b"\xff\xfe invalid utf-8 passes\n",
            ]
            .concat(),
        ]
        .concat();
        let s = spans(&cri);
        let r = run(&cri, None, 1 << 20);
        assert_eq!(
            r.lines,
            vec![
                line(OUT, Some(T1), b"ok1", s[0], false),
                line(OUT, Some(T3), b"\xff\xfe invalid utf-8 passes", s[5], false),
            ]
        );
        assert_eq!(
            (r.stats.malformed, r.stats.physical, r.stats.lines),
            (4, 6, 2)
        );

        let docker = [
            &b"{\"log\":\"ok\\n\",\"stream\":\"stdout\"}\n"[..],
            b"{\"log\":\"trunc",
            b"ated\n",
            b"\xff\xfe\x00\n",
            b"{\"log\":\"\xff\\n\",\"stream\":\"stdout\"}\n",
            b"plain text\n",
            b"{\"log\":\"ok2\\n\",\"stream\":\"stderr\"}\n",
        ]
        .concat();
        let s = spans(&docker);
        let r = run(&docker, None, 1 << 20);
        assert_eq!(
            r.lines,
            vec![
                line(OUT, None, b"ok", s[0], false),
                line(ERR, None, b"ok2", s[5], false),
            ]
        );
        assert_eq!(r.stats.malformed, 4);
    }

    #[test]
    fn malformed_line_inside_a_join_does_not_break_it() {
        let input = format!("{T1} stdout P a\nnoise\n{T2} stdout F b\n");
        let r = run(input.as_bytes(), None, 1 << 20);
        assert_eq!(
            r.lines,
            vec![line(OUT, Some(T1), b"ab", (0, input.len() as u64), false)]
        );
        assert_eq!(r.stats.malformed, 1);
    }

    #[test]
    fn gzip_cri_file_end_to_end() {
        use flate2::write::GzEncoder;
        let mut plain = Vec::new();
        for i in 0..1000 {
            writeln!(plain, "{T1} stderr F line {i}").unwrap();
        }
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&plain).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log.20240101-101010");
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
        let mut reader = LineReader::open(&path, 1 << 20).unwrap();
        assert!(reader.is_gzip());
        let mut dec = Decoder::new(None, 1 << 20);
        let mut n = 0u64;
        let mut last = None;
        while let Some(pl) = reader.next_line().unwrap() {
            dec.push(&pl, &mut |c| {
                assert_eq!(c.text, format!("line {n}").as_bytes());
                n += 1;
                last = Some((c.offset, c.end));
            });
        }
        assert_eq!(n, 1000);
        let len = plain.len() as u64;
        assert_eq!(last, Some((len - (T1.len() as u64 + 19), len)));
    }
}
