//! Docker json-file format: one JSON object per line, `{"log":"...\n","stream":"stderr","time":"..."}`.
//!
//! Docker splits lines at 16 KiB; a piece whose `log` does not end in "\n" is partial. `log`
//! nearly always contains escapes (at least the trailing `\n`), so it cannot be borrowed from the
//! line: it is decoded straight into a buffer owned by the decoder, through a serde seed, instead
//! of into a fresh `String` per line. `stream` and `time` are matched or borrowed in place.
//! Unknown keys (e.g. `attrs` from `--log-opt labels`) are skipped.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::Stream;

/// A json-file record; its decoded text (without the trailing "\n") is in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DockerLine<'a> {
    pub stream: Stream,
    pub time: Option<&'a str>,
    /// `log` did not end in "\n": more pieces of this line follow on the stream.
    pub partial: bool,
}

/// Parses one record, replacing `text` with its decoded `log` minus the trailing "\n".
/// Requires a string `log` and a `stream` of stdout/stderr; `time` is optional.
pub(super) fn parse<'a>(line: &'a [u8], text: &mut Vec<u8>) -> serde_json::Result<DockerLine<'a>> {
    text.clear();
    let mut de = serde_json::Deserializer::from_slice(line);
    let record = RecordSeed { text: &mut *text }.deserialize(&mut de)?;
    de.end()?;
    let partial = text.last() != Some(&b'\n');
    if !partial {
        text.pop();
    }
    Ok(DockerLine {
        stream: record.stream,
        time: record.time,
        partial,
    })
}

struct Record<'de> {
    stream: Stream,
    time: Option<&'de str>,
}

struct RecordSeed<'t> {
    text: &'t mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Record<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Record<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Record<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a docker json-file record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record<'de>, A::Error> {
        let mut has_log = false;
        let mut stream = None;
        let mut time = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Log => {
                    self.text.clear();
                    map.next_value_seed(TextSeed(&mut *self.text))?;
                    has_log = true;
                }
                Key::Stream => stream = Some(map.next_value::<StreamValue>()?.0),
                Key::Time => time = Some(map.next_value::<&'de str>()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !has_log {
            return Err(de::Error::missing_field("log"));
        }
        let stream = stream.ok_or_else(|| de::Error::missing_field("stream"))?;
        Ok(Record { stream, time })
    }
}

/// Appends a JSON string's decoded bytes to a reused buffer. serde_json hands escaped strings
/// to `visit_str` from its own scratch space, so the copy here is the only one we make.
struct TextSeed<'t>(&'t mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for TextSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for TextSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Field names, matched without allocating.
enum Key {
    Log,
    Stream,
    Time,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "log" => Key::Log,
                    "stream" => Key::Stream,
                    "time" => Key::Time,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

struct StreamValue(Stream);

impl<'de> de::Deserialize<'de> for StreamValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StreamValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"stdout\" or \"stderr\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StreamValue, E> {
                match s {
                    "stdout" => Ok(StreamValue(Stream::Stdout)),
                    "stderr" => Ok(StreamValue(Stream::Stderr)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// line, stream, time, partial, text
    type Case = (
        &'static str,
        Stream,
        Option<&'static str>,
        bool,
        &'static [u8],
    );

    #[test]
    fn parses_records() {
        let ok: &[Case] = &[
            (
                r#"{"log":"hello\n","stream":"stderr","time":"2020-01-02T03:04:05.123456789Z"}"#,
                Stream::Stderr,
                Some("2020-01-02T03:04:05.123456789Z"),
                false,
                b"hello",
            ),
            (
                r#"{"log":"piece","stream":"stdout","time":"2020-01-02T03:04:05Z"}"#,
                Stream::Stdout,
                Some("2020-01-02T03:04:05Z"),
                true,
                b"piece",
            ),
            (
                r#"{"log":"a\tb\u0000c\"d\\e\u00e9\ud83d\ude00\n","stream":"stdout"}"#,
                Stream::Stdout,
                None,
                false,
                "a\tb\0c\"d\\e\u{e9}\u{1f600}".as_bytes(),
            ),
            (
                r#" { "time":"t", "attrs":{"a":[1,{"b":null}]}, "stream":"stderr", "log":"\n" } "#,
                Stream::Stderr,
                Some("t"),
                false,
                b"",
            ),
            (
                r#"{"log":"two\n\n","stream":"stderr"}"#,
                Stream::Stderr,
                None,
                false,
                b"two\n",
            ),
        ];
        for &(line, stream, time, partial, text) in ok {
            let mut buf = b"stale".to_vec();
            let got = parse(line.as_bytes(), &mut buf).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                got,
                DockerLine {
                    stream,
                    time,
                    partial
                },
                "{line}"
            );
            assert_eq!(buf, text, "{line}");
        }
    }

    #[test]
    fn rejects_non_records() {
        let bad: &[&[u8]] = &[
            b"",
            b"garbage",
            b"[1,2]",
            b"{}",
            br#"{"log":"x\n"}"#,
            br#"{"stream":"stdout"}"#,
            br#"{"log":"x\n","stream":"stdin"}"#,
            br#"{"log":7,"stream":"stdout"}"#,
            br#"{"log":"x\n","stream":"stdout","time":5}"#,
            br#"{"log":"x\n","stream":"stdout"} trailing"#,
            br#"{"log":"cut sh"#,
            b"{\"log\":\"\xff\\n\",\"stream\":\"stdout\"}",
        ];
        for line in bad {
            let mut buf = Vec::new();
            assert!(
                parse(line, &mut buf).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
