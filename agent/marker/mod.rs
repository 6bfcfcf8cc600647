//! Stage 4: classifies each Lua message as an event of a payload filter format.
//!
//! - [`v2`]: meshtap's own filter, `[logPayload] v2 <event> <stream-id> <seq> ...`, one line per event.
//! - [`v1`]: the seed article's filter, `[logPayload] started` / `showing bodyChunks` / chunk text /
//!   `finished`, plus its headers variant and the Lua errors its `getBytes` bug produces.

pub mod v1;
pub mod v2;

use crate::envoy::LuaMessage;

/// What a Lua message means to the assemblers.
#[derive(Debug, PartialEq, Eq)]
pub enum Marker<'a> {
    V1(v1::Event<'a>),
    V2(Result<v2::Event<'a>, v2::FormatError>),
}

/// Classifies one Lua message. Anything that is not a v2 line is a v1 event (possibly chunk text).
pub fn classify<'a>(msg: &LuaMessage<'a>) -> Marker<'a> {
    if let Some(rest) = msg.text.strip_prefix(v2::PREFIX) {
        return Marker::V2(v2::parse(rest));
    }
    Marker::V1(v1::classify(msg))
}
