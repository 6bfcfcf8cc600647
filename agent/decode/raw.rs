//! Raw format: no runtime framing, the physical line is the content.
//!
//! This is how an Envoy started outside a container (a VM sidecar, a local test run) logs.
//! Envoy writes its logs to stderr, hence the stream; there is no runtime timestamp. A last line
//! without "\n" is passed on as is, not marked truncated: unlike a runtime, a process or a
//! hand-made file may legitimately end without one.

use super::{bound, ContainerLine, DecodeStats, Stream};
use crate::read::PhysicalLine;

pub(super) fn push(
    line: &PhysicalLine<'_>,
    max: usize,
    stats: &mut DecodeStats,
    out: &mut dyn FnMut(ContainerLine<'_>),
) {
    let (text, cut) = bound(line.bytes, max);
    let truncated = line.truncated || cut;
    stats.lines += 1;
    stats.truncated += u64::from(truncated);
    out(ContainerLine {
        stream: Stream::Stderr,
        time: None,
        text,
        offset: line.offset,
        end: line.end,
        truncated,
    });
}
