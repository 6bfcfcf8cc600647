//! Body decoding: a direction whose headers say `content-encoding: gzip` (or `x-gzip`, `deflate`,
//! `br`, or a chain such as `gzip, br`) has its body decoded in place, so users read the payload
//! and redaction can see inside it.
//!
//! [`Decoding`] is the [`Stage`]; [`DecodingConfig`] its `decoding:` section. What it does to a
//! direction (documented for users in `docs/redaction.md`):
//!
//! - `body` becomes the decoded bytes; `body_decoded_from` names the encoding (the header's value,
//!   normalized: `gzip`, `gzip, br`); `body_size` stays the size on the wire; the headers stay as
//!   logged (they describe the wire).
//! - Decoding is streaming and stops at `max_decoded_bytes`: the body keeps that many bytes and is
//!   flagged `body_truncated` with a reason. The decoded body is never allocated beyond the cap
//!   (the decoders' own state is bounded too: 32 KiB for deflate, at most 16 MiB of window for
//!   Brotli), so a decompression bomb costs no more than a large body.
//! - A body that was already truncated (the filter's cap) is decoded as far as it goes, with a
//!   warning that the decoded body is partial.
//! - A corrupt stream keeps the logged bytes, with a warning; an encoding meshtap does not decode
//!   (or one switched off) keeps them too, with a warning. Nothing here panics.
//! - A decoded body that is not UTF-8 is still serialized as base64 (`body_encoding`).

mod config;

pub use config::{DecodingConfig, Encoding};

use std::io::{self, Read};

use crate::record::{Direction, Exchange};
use crate::stage::{Stage, Verdict};

/// Read size of the decoding loop: big enough to be fast, small enough to respect the cap closely.
const CHUNK: usize = 16 << 10;

/// The decoding stage; see the module doc.
#[derive(Debug, Clone)]
pub struct Decoding {
    config: DecodingConfig,
}

impl Decoding {
    pub fn new(config: DecodingConfig) -> Decoding {
        Decoding { config }
    }

    /// Decodes one direction's body in place; warnings go to `warnings`.
    fn direction(&self, side: &str, d: &mut Direction, warnings: &mut Vec<String>) {
        if d.body_decoded_from.is_some() || d.body.is_empty() {
            return;
        }
        let Some(codings) = content_codings(d) else {
            return;
        };
        let named = codings.join(", ");
        let mut chain = Vec::with_capacity(codings.len());
        for token in &codings {
            match Encoding::from_token(token) {
                Some(e) if self.config.encodings.contains(&e) => chain.push(e),
                _ => {
                    warnings.push(format!(
                        "{side} body left as logged: content-encoding {named} is not decoded"
                    ));
                    return;
                }
            }
        }
        let cap = self.config.max_decoded_bytes;
        // The last coding applied is the first to undo.
        let mut bytes = std::borrow::Cow::Borrowed(&d.body[..]);
        let mut partial = false;
        let mut capped = false;
        for encoding in chain.iter().rev() {
            let out = decode(*encoding, &bytes, cap);
            match out.error {
                // The input ended early because the logged body was cut (by the filter, or by an
                // earlier coding's cap): what came out is the start of the body. Nothing out
                // means nothing to show but the logged bytes.
                Some(_) if (d.body_truncated || capped || partial) && !out.bytes.is_empty() => {
                    partial = true
                }
                Some(e) => {
                    warnings.push(format!(
                        "{side} body left as logged: corrupt {} stream ({e})",
                        encoding.as_str()
                    ));
                    return;
                }
                None => {}
            }
            capped |= out.capped;
            bytes = std::borrow::Cow::Owned(out.bytes);
        }
        d.body = bytes.into_owned();
        d.body_decoded_from = Some(named.clone());
        if capped {
            d.truncate(format!(
                "decoded body exceeded meshtap's decoding.max_decoded_bytes ({cap})"
            ));
        }
        if partial {
            warnings.push(format!(
                "{side} body decoded from {named} is partial: the logged body was truncated"
            ));
        }
    }
}

impl Stage for Decoding {
    fn process(&mut self, exchange: &mut Exchange) -> Verdict {
        if !self.config.enabled {
            return Verdict::Keep;
        }
        let mut warnings = Vec::new();
        if let Some(d) = exchange.request.as_mut() {
            self.direction("request", d, &mut warnings);
        }
        if let Some(d) = exchange.response.as_mut() {
            self.direction("response", d, &mut warnings);
        }
        for w in warnings {
            exchange.warn(w);
        }
        Verdict::Keep
    }
}

/// The content codings of a direction, in the order they were applied, `identity` left out;
/// `None` when there are none. Repeated headers are one list (RFC 9110, 5.3).
pub fn content_codings(d: &Direction) -> Option<Vec<String>> {
    let values = d.headers.as_ref()?.get("content-encoding")?;
    let codings: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "identity")
        .collect();
    (!codings.is_empty()).then_some(codings)
}

/// What decoding one coding gave.
#[derive(Debug)]
pub struct Decoded {
    /// The decoded bytes, at most the cap.
    pub bytes: Vec<u8>,
    /// The decoded stream was longer than the cap.
    pub capped: bool,
    /// The stream failed (corrupt, or ended early) after `bytes`.
    pub error: Option<io::Error>,
}

/// Decodes `input` as `encoding`, keeping at most `cap` bytes (and allocating no more).
pub fn decode(encoding: Encoding, input: &[u8], cap: usize) -> Decoded {
    match encoding {
        Encoding::Gzip => read_capped(flate2::read::MultiGzDecoder::new(input), cap),
        Encoding::Deflate if is_zlib(input) => {
            read_capped(flate2::read::ZlibDecoder::new(input), cap)
        }
        Encoding::Deflate => read_capped(flate2::read::DeflateDecoder::new(input), cap),
        Encoding::Br => read_capped(brotli_decompressor::Decompressor::new(input, CHUNK), cap),
    }
}

/// Whether `input` starts with a zlib header (RFC 1950: method 8, header checksum a multiple of
/// 31); `deflate` bodies without one are raw deflate, which some servers send.
fn is_zlib(input: &[u8]) -> bool {
    match input {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// Reads `reader` to its end or to `cap` bytes, whichever comes first. The output grows by
/// doubling but never past `cap`, so a bomb allocates at most `cap` bytes.
fn read_capped(mut reader: impl Read, cap: usize) -> Decoded {
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => {
                return Decoded {
                    bytes: out,
                    capped: false,
                    error: None,
                }
            }
            Ok(n) => {
                let room = cap - out.len();
                let take = n.min(room);
                if out.capacity() - out.len() < take {
                    let want = (out.capacity() * 2).max(out.len() + take).min(cap);
                    out.reserve_exact(want - out.len());
                }
                out.extend_from_slice(&buf[..take]);
                if n > room {
                    return Decoded {
                        bytes: out,
                        capped: true,
                        error: None,
                    };
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Decoded {
                    bytes: out,
                    capped: false,
                    error: Some(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
