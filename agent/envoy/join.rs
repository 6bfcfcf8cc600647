//! Joins multi-line Envoy messages. A message containing newlines becomes several physical lines and
//! only the first carries the layout's prefix, so a line without a prefix continues the message
//! before it on the SAME container stream (pilot-agent writes to stdout between Envoy's stderr lines).

use serde::{Deserialize, Serialize};

use super::layout::{parse_header, split_thread_suffix, Layout, Level};
use super::LuaMessage;
use crate::decode::{ContainerLine, Stream};

const SCRIPT_LOG: &[u8] = b"script log: ";

/// What this stage saw, for the summary and metrics.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EnvoyStats {
    /// Messages with a recognised layout header (any logger).
    pub messages: u64,
    /// Lua `script log:` messages passed on.
    pub lua_messages: u64,
    /// Lines that neither start a message nor continue one (output before the first message).
    pub stray_lines: u64,
    /// Lua messages cut at `max_message_bytes`.
    pub truncated_messages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Pending {
    None,
    /// A message from another logger, whose continuation lines are skipped with it.
    Skip(Layout),
    Lua,
}

/// The message being joined on one container stream.
#[derive(Serialize, Deserialize)]
struct StreamState {
    pending: Pending,
    layout: Layout,
    level: Level,
    thread: Option<u64>,
    time: String,
    #[serde(with = "crate::checkpoint::encoding::base64_bytes")]
    text: Vec<u8>,
    offset: u64,
    end: u64,
    truncated: bool,
    altered: bool,
    #[serde(default)]
    file_seq: u32,
}

impl StreamState {
    fn new() -> Self {
        StreamState {
            pending: Pending::None,
            layout: Layout::Envoy,
            level: Level::Other,
            thread: None,
            time: String::new(),
            text: Vec::new(),
            offset: 0,
            end: 0,
            truncated: false,
            altered: false,
            file_seq: 0,
        }
    }
}

/// Joins container lines into Lua messages, one pending message per stream.
#[derive(Serialize, Deserialize)]
pub struct Joiner {
    streams: [StreamState; 2],
    max_message_bytes: usize,
    /// Counts the files of the stream; stamped on each message at its first line.
    #[serde(default)]
    file_seq: u32,
    #[serde(skip)]
    stats: EnvoyStats,
}

impl Joiner {
    pub fn new(max_message_bytes: usize) -> Self {
        Joiner {
            streams: [StreamState::new(), StreamState::new()],
            max_message_bytes,
            file_seq: 0,
            stats: EnvoyStats::default(),
        }
    }

    pub fn stats(&self) -> &EnvoyStats {
        &self.stats
    }

    /// The next lines come from the stream's next file; returns its number.
    pub fn next_file(&mut self) -> u32 {
        self.file_seq = self.file_seq.wrapping_add(1);
        self.file_seq
    }

    /// The number of the current file.
    pub fn file_seq(&self) -> u32 {
        self.file_seq
    }

    /// Feeds one container line; complete Lua messages are passed to `out`.
    pub fn push(&mut self, line: &ContainerLine<'_>, out: &mut dyn FnMut(&LuaMessage<'_>)) {
        let idx = match line.stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let cap = self.max_message_bytes;
        let Some(header) = parse_header(line.text) else {
            self.continuation(idx, line, out);
            return;
        };
        Self::flush_stream(&mut self.streams[idx], &mut self.stats, out);
        self.stats.messages += 1;
        let st = &mut self.streams[idx];
        let text = match header.msg.strip_prefix(SCRIPT_LOG) {
            Some(text) if header.is_lua => text,
            _ => {
                st.pending = if header.complete {
                    Pending::None
                } else {
                    Pending::Skip(header.layout)
                };
                return;
            }
        };
        st.pending = Pending::Lua;
        st.layout = header.layout;
        st.level = header.level;
        st.thread = header.thread;
        st.time.clear();
        st.time.push_str(line.time.unwrap_or(header.time));
        st.text.clear();
        st.offset = line.offset;
        st.end = line.end;
        st.truncated = line.truncated;
        st.altered = header.altered;
        st.file_seq = self.file_seq;
        append_capped(st, text, cap, &mut self.stats);
        if header.complete {
            Self::flush_stream(st, &mut self.stats, out);
        }
    }

    fn continuation(
        &mut self,
        idx: usize,
        line: &ContainerLine<'_>,
        out: &mut dyn FnMut(&LuaMessage<'_>),
    ) {
        let cap = self.max_message_bytes;
        let st = &mut self.streams[idx];
        match st.pending {
            Pending::None => self.stats.stray_lines += 1,
            Pending::Skip(layout) => {
                if layout == Layout::IstioText && split_thread_suffix(line.text).is_some() {
                    st.pending = Pending::None;
                }
            }
            Pending::Lua => {
                st.end = line.end;
                st.truncated |= line.truncated;
                let ending = match st.layout {
                    Layout::IstioText => split_thread_suffix(line.text),
                    _ => None,
                };
                append_capped(st, b"\n", cap, &mut self.stats);
                match ending {
                    Some((last, thread)) => {
                        append_capped(st, last, cap, &mut self.stats);
                        st.thread = Some(thread);
                        Self::flush_stream(st, &mut self.stats, out);
                    }
                    None => append_capped(st, line.text, cap, &mut self.stats),
                }
            }
        }
    }

    /// Ends every pending message (end of input, or a quiet period while tailing).
    pub fn flush(&mut self, out: &mut dyn FnMut(&LuaMessage<'_>)) {
        for st in &mut self.streams {
            Self::flush_stream(st, &mut self.stats, out);
        }
    }

    fn flush_stream(
        st: &mut StreamState,
        stats: &mut EnvoyStats,
        out: &mut dyn FnMut(&LuaMessage<'_>),
    ) {
        if st.pending == Pending::Lua {
            stats.lua_messages += 1;
            out(&LuaMessage {
                layout: st.layout,
                level: st.level,
                thread: st.thread,
                time: &st.time,
                text: &st.text,
                offset: st.offset,
                end: st.end,
                truncated: st.truncated,
                altered: st.altered,
                file_seq: st.file_seq,
            });
        }
        st.pending = Pending::None;
    }
}

fn append_capped(st: &mut StreamState, bytes: &[u8], cap: usize, stats: &mut EnvoyStats) {
    let room = cap.saturating_sub(st.text.len());
    if bytes.len() > room {
        st.text.extend_from_slice(&bytes[..room]);
        if !st.truncated {
            stats.truncated_messages += 1;
        }
        st.truncated = true;
    } else {
        st.text.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(stream: Stream, text: &str, offset: u64) -> ContainerLine<'_> {
        ContainerLine {
            stream,
            time: None,
            text: text.as_bytes(),
            offset,
            end: offset + text.len() as u64 + 1,
            truncated: false,
        }
    }

    fn run(lines: &[ContainerLine<'_>]) -> Vec<(Option<u64>, String)> {
        let mut j = Joiner::new(1 << 20);
        let mut got = Vec::new();
        let mut out =
            |m: &LuaMessage<'_>| got.push((m.thread, String::from_utf8_lossy(m.text).into_owned()));
        for l in lines {
            j.push(l, &mut out);
        }
        j.flush(&mut out);
        got
    }

    #[test]
    fn multi_line_envoy_messages_join_per_stream() {
        let got = run(&[
            line(
                Stream::Stderr,
                "[2026-11-25 08:47:45.772][7][warning][lua] [lua.cc:31] script log: a",
                0,
            ),
            line(
                Stream::Stdout,
                "2026-11-25T08:00:00.000000Z\tinfo\tads\tpush",
                10,
            ),
            line(Stream::Stderr, "b", 20),
            line(Stream::Stderr, "", 30),
            line(
                Stream::Stderr,
                "[2026-11-25 08:47:45.772][7][warning][main] [x.cc:1] other",
                40,
            ),
            line(Stream::Stderr, "skipped continuation", 50),
            line(
                Stream::Stderr,
                "[2026-11-25 08:47:45.772][8][warning][lua] [lua.cc:31] script log: c",
                60,
            ),
        ]);
        assert_eq!(got, vec![(Some(7), "a\nb\n".into()), (Some(8), "c".into())]);
    }

    #[test]
    fn istio_text_thread_suffix_ends_the_message() {
        let got = run(&[
            line(
                Stream::Stderr,
                "2026-11-25T08:47:45.772123Z\twarning\tenvoy lua lua.cc:31\tscript log: x",
                0,
            ),
            line(Stream::Stderr, "y", 10),
            line(Stream::Stderr, "\tthread=12", 20),
            line(Stream::Stderr, "stray", 30),
        ]);
        assert_eq!(got, vec![(Some(12), "x\ny\n".into())]);
    }

    #[test]
    fn messages_are_capped_and_flagged() {
        let mut j = Joiner::new(8);
        let mut got = Vec::new();
        let l = line(
            Stream::Stderr,
            "[2026-11-25 08:47:45.772][7][warning][lua] [lua.cc:31] script log: 0123456789",
            0,
        );
        j.push(&l, &mut |_| {});
        j.flush(&mut |m| got.push((m.text.to_vec(), m.truncated)));
        assert_eq!(got, vec![(b"01234567".to_vec(), true)]);
        assert_eq!(j.stats().truncated_messages, 1);
    }
}
