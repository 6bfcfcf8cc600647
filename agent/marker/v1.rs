//! The seed article's filter format ("lua-v1"), as deployed in the wild (deploy/legacy/).
//!
//! Its markers carry no stream id and no direction: the assembler infers both from the order of
//! events on each Envoy worker thread. Body chunks are logged raw, as separate messages.

use crate::envoy::{Level, LuaMessage};

/// A v1 event.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `[logPayload] started`: a direction begins.
    Started,
    /// `[logPayload:headers] --> ` followed by `\nname:value,` per header (headers variant).
    Headers(&'a [u8]),
    /// `[logPayload] showing bodyChunks`: the next message is a chunk, unless the chunk was empty.
    ShowingChunk,
    /// `[logPayload] finished`: the direction ended (body-only variant).
    Finished,
    /// `[envoy_on_request] meta logPayload found`: the next `started` is a response (headers variant).
    MetaFound,
    /// `[envoy_on_response] find productpage`: informational.
    FindPath,
    /// A Lua runtime error logged at error level, e.g. the `getBytes` bug: the direction stops.
    ScriptError(&'a [u8]),
    /// Any other message: body chunk text when it follows `ShowingChunk`.
    Text(&'a [u8]),
}

/// Classifies a message that is not a v2 line.
pub fn classify<'a>(msg: &LuaMessage<'a>) -> Event<'a> {
    let text = msg.text;
    if msg.level == Level::Error && text.starts_with(b"[string \"") {
        return Event::ScriptError(text);
    }
    match text {
        b"[logPayload] started" => Event::Started,
        b"[logPayload] showing bodyChunks" => Event::ShowingChunk,
        b"[logPayload] finished" => Event::Finished,
        b"[envoy_on_request] meta logPayload found" => Event::MetaFound,
        b"[envoy_on_response] find productpage" => Event::FindPath,
        _ => match text.strip_prefix(b"[logPayload:headers] --> ") {
            Some(headers) => Event::Headers(headers),
            None => Event::Text(text),
        },
    }
}

/// Parses the headers variant's block: `\nname:value,` per header. Values may hold `:` and `,`;
/// pseudo-headers start with `:`, so the separator is the first `:` after the first byte.
pub fn parse_headers(block: &[u8], headers: &mut crate::record::Headers) {
    for line in block.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let line = line.strip_suffix(b",").unwrap_or(line);
        let Some(sep) = line.iter().skip(1).position(|&b| b == b':').map(|p| p + 1) else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..sep]).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[sep + 1..]).into_owned();
        headers.entry(name).or_default().push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::Layout;

    fn msg(level: Level, text: &str) -> LuaMessage<'_> {
        LuaMessage {
            layout: Layout::Envoy,
            level,
            thread: Some(1),
            time: "",
            text: text.as_bytes(),
            offset: 0,
            end: 0,
            truncated: false,
            altered: false,
            file_seq: 0,
        }
    }

    #[test]
    fn classifies_seed_markers() {
        assert_eq!(
            classify(&msg(Level::Warning, "[logPayload] started")),
            Event::Started
        );
        assert_eq!(
            classify(&msg(Level::Warning, "[logPayload] showing bodyChunks")),
            Event::ShowingChunk
        );
        assert_eq!(
            classify(&msg(Level::Warning, "[logPayload] finished")),
            Event::Finished
        );
        assert_eq!(
            classify(&msg(Level::Warning, "[logPayload:headers] --> \n:path:/a,")),
            Event::Headers(b"\n:path:/a,")
        );
        let err = "[string \"function logPayload(handle)...\"]:12: index/length must be >= 0";
        assert!(matches!(
            classify(&msg(Level::Error, err)),
            Event::ScriptError(_)
        ));
        // The same text at warning level is body text, not an error.
        assert!(matches!(
            classify(&msg(Level::Warning, err)),
            Event::Text(_)
        ));
    }

    #[test]
    fn parses_header_blocks_losslessly() {
        let mut h = crate::record::Headers::new();
        parse_headers(b"\n:authority:localhost:8080,\n:path:/p?a=b,c,\nx-foo:1,\nX-Foo:2,\ndate:Wed, 25 Nov 2026 08:47:59 GMT,", &mut h);
        assert_eq!(h[":authority"], vec!["localhost:8080"]);
        assert_eq!(h[":path"], vec!["/p?a=b,c"]);
        assert_eq!(h["x-foo"], vec!["1", "2"]);
        assert_eq!(h["date"], vec!["Wed, 25 Nov 2026 08:47:59 GMT"]);
    }
}
