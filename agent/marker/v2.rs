//! meshtap's own filter format ("lua-v2"), written by deploy/envoyfilter-lua-v2.yaml and documented
//! in docs/lua-v2-format.md. Every event is one line: `[logPayload] v2 <event> <sid> <seq> <fields>`.
//! Bodies and header blocks are base64, so nothing in a line can span lines or break a runtime.

use base64::Engine as _;

use crate::record::Headers;

/// Marks a v2 line, after Envoy's `script log: `.
pub const PREFIX: &[u8] = b"[logPayload] v2 ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Request,
    Response,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `rq`/`rs`: `<time-ms> <headers-base64 or ->`.
    Start { time_ms: i64, headers: &'a [u8] },
    /// `rqb`/`rsb`: `<body-base64>`.
    Body(&'a [u8]),
    /// `rqt`/`rst`: `<trailers-base64 or ->`.
    Trailers(&'a [u8]),
    /// `rqe`/`rse`: `<time-ms> <body size seen> <1 if not all of it was logged>`.
    End {
        time_ms: i64,
        size: u64,
        truncated: bool,
    },
    /// `rqbe`/`rsbe`: the last body piece and the end in one line (`Body` then `End`), which
    /// saves the filter one log call per direction: `<body-base64> <time-ms> <size> <truncated>`.
    BodyEnd {
        body: &'a [u8],
        time_ms: i64,
        size: u64,
        truncated: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub dir: Dir,
    pub sid: &'a str,
    pub seq: u64,
    pub kind: Kind<'a>,
}

/// Why a v2 line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("unknown v2 event {0:?}")]
    UnknownEvent(String),
    #[error("v2 line lacks its {0} field")]
    Missing(&'static str),
    #[error("v2 line has a malformed {0} field")]
    Malformed(&'static str),
    #[error("invalid base64 in the {0} field")]
    Base64(&'static str),
}

fn field<'a>(
    fields: &mut impl Iterator<Item = &'a [u8]>,
    name: &'static str,
) -> Result<&'a [u8], FormatError> {
    fields.next().ok_or(FormatError::Missing(name))
}

fn number<T: std::str::FromStr>(bytes: &[u8], name: &'static str) -> Result<T, FormatError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(FormatError::Malformed(name))
}

/// The space-separated fields of `line` (a run of spaces separates like one). Found with
/// `memchr`: base64 bodies are most of a line's bytes, and a byte-by-byte split was the largest
/// cost of parsing them.
fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = line;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        let field = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        if !field.is_empty() {
            return Some(field);
        }
    })
}

/// Parses the part of a v2 line after [`PREFIX`].
pub fn parse(line: &[u8]) -> Result<Event<'_>, FormatError> {
    let mut fields = fields(line);
    let event = field(&mut fields, "event")?;
    let (dir, suffix) = match event.get(..2) {
        Some(b"rq") => (Dir::Request, &event[2..]),
        Some(b"rs") => (Dir::Response, &event[2..]),
        _ => return Err(unknown(event)),
    };
    let sid = std::str::from_utf8(field(&mut fields, "stream id")?)
        .map_err(|_| FormatError::Malformed("stream id"))?;
    let seq = number(field(&mut fields, "seq")?, "seq")?;
    let kind = match suffix {
        b"" => Kind::Start {
            time_ms: number(field(&mut fields, "time")?, "time")?,
            headers: field(&mut fields, "headers")?,
        },
        b"b" => Kind::Body(field(&mut fields, "body")?),
        b"t" => Kind::Trailers(field(&mut fields, "trailers")?),
        b"e" => {
            let (time_ms, size, truncated) = end_fields(&mut fields)?;
            Kind::End {
                time_ms,
                size,
                truncated,
            }
        }
        b"be" => {
            let body = field(&mut fields, "body")?;
            let (time_ms, size, truncated) = end_fields(&mut fields)?;
            Kind::BodyEnd {
                body,
                time_ms,
                size,
                truncated,
            }
        }
        _ => return Err(unknown(event)),
    };
    Ok(Event {
        dir,
        sid,
        seq,
        kind,
    })
}

/// `<time-ms> <size> <truncated>` of an end event.
fn end_fields<'a>(
    fields: &mut impl Iterator<Item = &'a [u8]>,
) -> Result<(i64, u64, bool), FormatError> {
    let time_ms = number(field(fields, "time")?, "time")?;
    let size = number(field(fields, "size")?, "size")?;
    let truncated = match field(fields, "truncated")? {
        b"0" => false,
        b"1" => true,
        _ => return Err(FormatError::Malformed("truncated")),
    };
    Ok((time_ms, size, truncated))
}

fn unknown(event: &[u8]) -> FormatError {
    FormatError::UnknownEvent(String::from_utf8_lossy(&event[..event.len().min(16)]).into_owned())
}

/// Decodes a base64 body piece, appending to `out`.
pub fn decode_body(b64: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
    base64::engine::general_purpose::STANDARD
        .decode_vec(b64, out)
        .map_err(|_| FormatError::Base64("body"))
}

/// Decodes a header block: base64 of `name\nvalue\n` per header (HTTP forbids newlines in both).
pub fn decode_headers(b64: &[u8], headers: &mut Headers) -> Result<(), FormatError> {
    if b64 == b"-" {
        return Ok(());
    }
    let block = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| FormatError::Base64("headers"))?;
    let mut lines = block.split(|&b| b == b'\n');
    while let (Some(name), Some(value)) = (lines.next(), lines.next()) {
        if name.is_empty() {
            continue;
        }
        headers
            .entry(String::from_utf8_lossy(name).to_ascii_lowercase())
            .or_default()
            .push(String::from_utf8_lossy(value).into_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_event() {
        assert_eq!(
            parse(b"rq a.1 0 1795596685480 OmF1dGhvcml0eQp4Cg==").unwrap(),
            Event {
                dir: Dir::Request,
                sid: "a.1",
                seq: 0,
                kind: Kind::Start {
                    time_ms: 1795596685480,
                    headers: b"OmF1dGhvcml0eQp4Cg=="
                }
            }
        );
        assert_eq!(parse(b"rsb a.1 3 aGk=").unwrap().kind, Kind::Body(b"aGk="));
        assert_eq!(parse(b"rst a.1 4 -").unwrap().kind, Kind::Trailers(b"-"));
        assert_eq!(
            parse(b"rse a.1 5 17 200004 1").unwrap().kind,
            Kind::End {
                time_ms: 17,
                size: 200004,
                truncated: true
            }
        );
        assert_eq!(
            parse(b"rqbe a.1 1 aGk= 18 2 0").unwrap().kind,
            Kind::BodyEnd {
                body: b"aGk=",
                time_ms: 18,
                size: 2,
                truncated: false
            }
        );
    }

    #[test]
    fn runs_of_spaces_separate_like_one() {
        assert_eq!(
            parse(b"rsb  a.1   3 aGk=  ").unwrap(),
            Event {
                dir: Dir::Response,
                sid: "a.1",
                seq: 3,
                kind: Kind::Body(b"aGk=")
            }
        );
        assert_eq!(parse(b"rsb a.1 3 "), Err(FormatError::Missing("body")));
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(
            parse(b"zz a 0"),
            Err(FormatError::UnknownEvent("zz".into()))
        );
        assert_eq!(parse(b"rq a"), Err(FormatError::Missing("seq")));
        assert_eq!(parse(b"rqe a 1 x 2 0"), Err(FormatError::Malformed("time")));
        assert_eq!(
            parse(b"rqe a 1 5 2 7"),
            Err(FormatError::Malformed("truncated"))
        );
        assert_eq!(
            parse(b"rqx a 1"),
            Err(FormatError::UnknownEvent("rqx".into()))
        );
        assert_eq!(
            parse(b"rsbe a 1 aGk= 18 2"),
            Err(FormatError::Missing("truncated"))
        );
    }

    #[test]
    fn docs_example_parses() {
        let doc = include_str!("../../docs/lua-v2-format.md");
        let start = doc.find("```text\n").expect("example block") + 8;
        let end = start + doc[start..].find("```").expect("closed");
        let mut body = [Vec::new(), Vec::new()];
        let mut lines = 0;
        for line in doc[start..end].lines() {
            let event = parse(line.as_bytes().strip_prefix(PREFIX).expect("prefix")).unwrap();
            assert_eq!(event.sid, "6b06a18c.7f2ddc2776b0.3");
            if let Kind::Body(b64) | Kind::BodyEnd { body: b64, .. } = event.kind {
                decode_body(b64, &mut body[event.dir as usize]).unwrap();
            }
            lines += 1;
        }
        assert_eq!(lines, 7);
        assert_eq!(body[0], b"hello world");
        assert_eq!(body[1], b"got:hello");
    }

    #[test]
    fn decodes_headers_and_repeats() {
        let mut h = Headers::new();
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(":path\n/a b\nx-foo\n1\nX-Foo\n2\n");
        decode_headers(b64.as_bytes(), &mut h).unwrap();
        assert_eq!(h[":path"], vec!["/a b"]);
        assert_eq!(h["x-foo"], vec!["1", "2"]);
        assert_eq!(
            decode_headers(b"!!", &mut h),
            Err(FormatError::Base64("headers"))
        );
    }
}
