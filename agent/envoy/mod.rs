//! Stage 3: Envoy's log lines. Recognises the three layouts ([`layout`]), joins multi-line messages
//! back together per container stream ([`join`]) and passes on only the Lua filter's `script log:`
//! messages, as [`LuaMessage`]s; every other logger's lines are skipped after a header check.

pub mod join;
pub mod layout;

pub use join::{EnvoyStats, Joiner};
pub use layout::{Layout, Level};

/// One message written by a Lua script (`handle:logWarn(..)` or a script error), re-joined.
#[derive(Debug, Clone, Copy)]
pub struct LuaMessage<'a> {
    pub layout: Layout,
    pub level: Level,
    /// Envoy worker thread that ran the script, when the layout carries it.
    pub thread: Option<u64>,
    /// Time of the first line: the container runtime's when present, else Envoy's own.
    pub time: &'a str,
    /// The script's message, after Envoy's `script log: ` prefix; lines joined with `\n`.
    pub text: &'a [u8],
    /// Offset of the message's first line in the file.
    pub offset: u64,
    /// Offset just after the message's last line.
    pub end: u64,
    /// The message was cut: a line or the whole message exceeded a cap, or a partial line never ended.
    pub truncated: bool,
    /// The message's bytes were changed on the way (Istio's JSON layout writes invalid UTF-8 raw,
    /// which is read with replacement characters).
    pub altered: bool,
    /// Which file of the stream the message's first line was in ([`Joiner::next_file`]): a
    /// message still being joined when a file ends belongs to that file, not the next.
    pub file_seq: u32,
}
