//! The line buffer behind both [`super::LineReader`] (whole files) and the agent's tail follower
//! (files still being written). End of file is not final: the bytes after the last newline wait in
//! the buffer until more data arrives, or until the caller decides the input is finished and takes
//! them as an unterminated last line. The caller does the reading (into [`Lines::space`]), so one
//! buffer serves every file of a stream. Bounded: an overlong line keeps its first `max` bytes and
//! the rest is skipped as it is read.

use memchr::memchr;

/// Reads go into at least this much free space; big enough that syscalls and the gzip decoder
/// work in batches, small enough that a buffer per stream stays cheap: an idle stream keeps
/// 2 x CHUNK, so 200 tailed files hold 6 MiB (64 KiB made it 25 MiB, over half the agent's RSS
/// in the 200-file benchmark, for no measurable gain in throughput).
pub(crate) const CHUNK: usize = 16 * 1024;

/// A line found in the buffer, as indices, so the caller can borrow the bytes and its own state
/// at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// `buf[first..first + keep]` holds the line's kept bytes.
    pub first: usize,
    pub keep: usize,
    pub offset: u64,
    pub end: u64,
    pub truncated: bool,
    pub terminated: bool,
}

/// Invariant: `buf[start..filled]` is data not handed out yet, of which `buf[start..scanned]`
/// holds no newline, and `pos` is the file offset of `buf[start]`. While an overlong line is
/// skipped (`skipping` is `Some(n)`), `buf[start..start + max]` is its kept prefix and `n` bytes
/// after the prefix were read and thrown away.
pub(crate) struct Lines {
    buf: Vec<u8>,
    start: usize,
    scanned: usize,
    filled: usize,
    pos: u64,
    skipping: Option<u64>,
}

impl Lines {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            filled: 0,
            pos: 0,
            skipping: None,
        }
    }

    /// Forgets the buffered data (keeping the allocation); the next byte read is at `pos`.
    pub fn reset(&mut self, pos: u64) {
        self.start = 0;
        self.scanned = 0;
        self.filled = 0;
        self.pos = pos;
        self.skipping = None;
    }

    /// File offset after the last line handed out.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// File offset of the next byte to read.
    pub fn read_pos(&self) -> u64 {
        self.pos + (self.filled - self.start) as u64 + self.skipping.unwrap_or(0)
    }

    /// The kept bytes of the unfinished line (at most `max` of an overlong one).
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.filled]
    }

    pub fn bytes(&self, span: &Span) -> &[u8] {
        &self.buf[span.first..span.first + span.keep]
    }

    /// Allocated size, for tests of the memory bound.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next complete line in the buffer, or `None` when more data is needed.
    pub fn next_line(&mut self, max: usize) -> Option<Span> {
        if let Some(skipped) = self.skipping {
            let from = self.start + max;
            return match memchr(b'\n', &self.buf[from..self.filled]) {
                Some(i) => {
                    let end = self.pos + max as u64 + skipped + i as u64 + 1;
                    let span = Span {
                        first: self.start,
                        keep: max,
                        offset: self.pos,
                        end,
                        truncated: true,
                        terminated: true,
                    };
                    self.start = from + i + 1;
                    self.scanned = self.start;
                    self.pos = end;
                    self.skipping = None;
                    Some(span)
                }
                None => {
                    // Throw the middle of the line away: memory stays at max + one read.
                    self.skipping = Some(skipped + (self.filled - from) as u64);
                    self.filled = from;
                    self.scanned = from;
                    None
                }
            };
        }
        if let Some(i) = memchr(b'\n', &self.buf[self.scanned..self.filled]) {
            let nl = self.scanned + i;
            let len = nl - self.start;
            let span = Span {
                first: self.start,
                keep: len.min(max),
                offset: self.pos,
                end: self.pos + len as u64 + 1,
                truncated: len > max,
                terminated: true,
            };
            self.start = nl + 1;
            self.scanned = self.start;
            self.pos = span.end;
            return Some(span);
        }
        self.scanned = self.filled;
        let pending = self.filled - self.start;
        if pending > max {
            self.skipping = Some((pending - max) as u64);
            self.filled = self.start + max;
            self.scanned = self.filled;
        }
        None
    }

    /// The unfinished line as the last line of a file that will not grow, if there is one.
    pub fn take_partial(&mut self) -> Option<Span> {
        let kept = self.filled - self.start;
        let skipped = self.skipping.take();
        if kept == 0 && skipped.is_none() {
            return None;
        }
        let span = Span {
            first: self.start,
            keep: kept,
            offset: self.pos,
            end: self.pos + kept as u64 + skipped.unwrap_or(0),
            truncated: skipped.is_some(),
            terminated: false,
        };
        self.start = self.filled;
        self.scanned = self.filled;
        self.pos = span.end;
        Some(span)
    }

    /// Free space to read into, at least [`CHUNK`] bytes: the unfinished line is moved to the
    /// front or the buffer grown, never beyond `max + CHUNK` (`max` = max_line_bytes) because the
    /// buffer never holds more than `max` bytes of one line when asked for room.
    pub fn space(&mut self, max: usize) -> &mut [u8] {
        if self.start > 0 && self.buf.len() - self.filled < CHUNK {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.filled < CHUNK {
            let limit = max.saturating_add(CHUNK).max(2 * CHUNK);
            let new_len = (self.buf.len() * 2)
                .max(2 * CHUNK)
                .min(limit)
                .max(self.filled + CHUNK);
            // Exact, so that the bound holds for the allocation and not just for the length.
            self.buf.reserve_exact(new_len - self.buf.len());
            self.buf.resize(new_len, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Records that `n` bytes were read into the start of [`Lines::space`].
    pub fn commit(&mut self, n: usize) {
        self.filled += n;
    }

    /// Gives back memory an overlong line made the buffer grow to, once nothing is pending.
    pub fn shrink_when_idle(&mut self) {
        if self.start == self.filled && self.skipping.is_none() && self.buf.len() > 2 * CHUNK {
            self.start = 0;
            self.scanned = 0;
            self.filled = 0;
            self.buf.truncate(2 * CHUNK);
            self.buf.shrink_to(2 * CHUNK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::tests::{naive, Owned};

    fn owned(lines: &Lines, s: Span) -> Owned {
        Owned {
            bytes: lines.bytes(&s).to_vec(),
            offset: s.offset,
            end: s.end,
            truncated: s.truncated,
            terminated: s.terminated,
        }
    }

    /// Feeds `data` in reads of at most `step` bytes, takes the rest as a partial line at the end.
    fn split(data: &[u8], step: usize, max: usize) -> (Vec<Owned>, Lines) {
        let mut lines = Lines::new();
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            while let Some(s) = lines.next_line(max) {
                out.push(owned(&lines, s));
            }
            assert_eq!(lines.read_pos(), at as u64);
            if at == data.len() {
                break;
            }
            let space = lines.space(max);
            let n = step.min(space.len()).min(data.len() - at);
            space[..n].copy_from_slice(&data[at..at + n]);
            lines.commit(n);
            at += n;
        }
        if let Some(s) = lines.take_partial() {
            out.push(owned(&lines, s));
        }
        assert_eq!(lines.pos(), data.len() as u64);
        (out, lines)
    }

    #[test]
    fn matches_naive_split_for_any_read_size_and_limit() {
        let mut data = Vec::new();
        for i in 0..300usize {
            data.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, (i * 37) % 300));
            data.push(b'\n');
        }
        data.extend_from_slice(b"tail without newline");
        let mut long_tail = data.clone();
        long_tail.extend(std::iter::repeat_n(b'z', 5000));
        for input in [&data, &long_tail, &b"\n\n"[..].to_vec(), &Vec::new()] {
            for step in [1usize, 7, 100, 4096, 1 << 20] {
                for max in [0usize, 1, 50, 299, 300, 1000, CHUNK * 3] {
                    let (got, _) = split(input, step, max);
                    assert_eq!(got, naive(input, max), "step {step} max {max}");
                }
            }
        }
    }

    #[test]
    fn overlong_line_memory_is_bounded_and_given_back() {
        let max = 1000;
        let mut data = vec![b'x'; 10 * CHUNK];
        data.extend_from_slice(b"\nend\n");
        let (got, mut lines) = split(&data, CHUNK, max);
        assert_eq!(got.len(), 2);
        assert!(got[0].truncated && got[0].bytes.len() == max);
        assert!(lines.capacity() <= 2 * CHUNK, "{}", lines.capacity());
        let big = 5 * CHUNK;
        let (_, mut lines2) = split(&vec![b'y'; 3 * CHUNK], CHUNK, big);
        assert!(lines2.capacity() > 2 * CHUNK);
        assert!(lines2.capacity() <= big + CHUNK);
        lines2.shrink_when_idle();
        assert!(lines2.capacity() <= 2 * CHUNK);
        lines.shrink_when_idle();
    }
}
