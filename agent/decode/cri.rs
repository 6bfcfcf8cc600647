//! CRI log format (containerd, CRI-O): `<RFC3339Nano time> <stdout|stderr> <tag> <content>`.
//!
//! The tag's first character says whether the content is a partial piece (`P`) or ends a line
//! (`F`); runtimes may append more tag fields after `:`, which carry nothing needed here. The
//! time is checked for RFC3339 shape (not calendar validity) because detection relies on it to
//! tell CRI from raw Envoy output, which never starts with such a timestamp.

use memchr::memchr;

use super::Stream;

/// A CRI record, borrowing from the physical line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CriLine<'a> {
    pub time: &'a str,
    pub stream: Stream,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Splits a CRI record; the error is a reason for the malformed-line warning.
pub(super) fn parse(line: &[u8]) -> Result<CriLine<'_>, &'static str> {
    let sp = memchr(b' ', line).ok_or("no space after the time")?;
    let time = &line[..sp];
    if !is_rfc3339(time) {
        return Err("time is not RFC3339");
    }
    // is_rfc3339 accepts ASCII only, so this cannot fail.
    let time = std::str::from_utf8(time).map_err(|_| "time is not RFC3339")?;
    let rest = &line[sp + 1..];
    let stream = match rest.get(..7) {
        Some(b"stdout ") => Stream::Stdout,
        Some(b"stderr ") => Stream::Stderr,
        _ => return Err("stream is not stdout or stderr"),
    };
    let rest = &rest[7..];
    // Empty content may be written with or without the space after the tag.
    let (tag, content) = match memchr(b' ', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let partial = match tag.first() {
        Some(b'P') => true,
        Some(b'F') => false,
        _ => return Err("tag is not P or F"),
    };
    Ok(CriLine {
        time,
        stream,
        partial,
        content,
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, shape only.
fn is_rfc3339(t: &[u8]) -> bool {
    fn digits(b: &[u8]) -> bool {
        b.iter().all(u8::is_ascii_digit)
    }
    if t.len() < 20 {
        return false;
    }
    let shape = digits(&t[0..4])
        && t[4] == b'-'
        && digits(&t[5..7])
        && t[7] == b'-'
        && digits(&t[8..10])
        && matches!(t[10], b'T' | b't')
        && digits(&t[11..13])
        && t[13] == b':'
        && digits(&t[14..16])
        && t[16] == b':'
        && digits(&t[17..19]);
    if !shape {
        return false;
    }
    let mut zone = &t[19..];
    if let Some(frac) = zone.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        zone = &frac[n..];
    }
    match zone {
        b"Z" | b"z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => digits(&[*h1, *h2, *m1, *m2]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// line, time, stream, partial, content
    type Case = (&'static [u8], &'static str, Stream, bool, &'static [u8]);

    #[test]
    fn parses_records() {
        let ok: &[Case] = &[
            (
                b"2024-01-01T10:10:10.123456789Z stdout F hello world",
                "2024-01-01T10:10:10.123456789Z",
                Stream::Stdout,
                false,
                b"hello world",
            ),
            (
                b"2024-01-01T10:10:10.1Z stderr P  two spaces kept",
                "2024-01-01T10:10:10.1Z",
                Stream::Stderr,
                true,
                b" two spaces kept",
            ),
            (
                b"2023-06-07T08:09:10.123456789+00:00 stderr F crio",
                "2023-06-07T08:09:10.123456789+00:00",
                Stream::Stderr,
                false,
                b"crio",
            ),
            (
                b"2023-06-07T08:09:10-07:00 stdout F:x=y extra tag fields",
                "2023-06-07T08:09:10-07:00",
                Stream::Stdout,
                false,
                b"extra tag fields",
            ),
            (
                b"2024-01-01T10:10:10Z stderr F",
                "2024-01-01T10:10:10Z",
                Stream::Stderr,
                false,
                b"",
            ),
            (
                b"2024-01-01T10:10:10Z stderr F ",
                "2024-01-01T10:10:10Z",
                Stream::Stderr,
                false,
                b"",
            ),
            (
                b"2024-01-01T10:10:10Z stdout F \xff\xfe\tbin",
                "2024-01-01T10:10:10Z",
                Stream::Stdout,
                false,
                b"\xff\xfe\tbin",
            ),
        ];
        for &(line, time, stream, partial, content) in ok {
            assert_eq!(
                parse(line),
                Ok(CriLine {
                    time,
                    stream,
                    partial,
                    content
                }),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn rejects_non_cri() {
        let bad: &[&[u8]] = &[
            b"",
            b"hello",
            b"[2024-01-01 10:10:10.123][14][info][main] starting",
            b"2024-01-01 10:10:10Z stdout F x",
            b"2024-01-01T10:10:10 stdout F x",
            b"2024-01-01T10:10:10.Z stdout F x",
            b"2024-01-01T10:10:10Z+00:00 stdout F x",
            b"2024-01-01T10:10:10Z stdin F x",
            b"2024-01-01T10:10:10Z stdout",
            b"2024-01-01T10:10:10Z stdout X x",
            b"2024-01-01T10:10:10Z stdout  x",
            b"{\"log\":\"x\\n\",\"stream\":\"stdout\"}",
            b"\x00\x01\x02 \xff",
        ];
        for line in bad {
            assert!(parse(line).is_err(), "{}", String::from_utf8_lossy(line));
        }
    }
}
