//! Wires the stages for a set of log files: read -> decode -> envoy -> marker/assemble -> out.
//!
//! Files of one container log (`0.log.20240101-101010.gz`, `0.log.20240101-111111`, `0.log`) are read
//! as one stream, oldest first, so an exchange that spans a rotation is assembled whole. A new
//! restart count (`1.log`) is a new Envoy process: whatever the old one left pending is emitted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::assemble::{AssembleStats, Assembler, FileContext, Limits};
use crate::decode::{DecodeStats, Decoder, Format};
use crate::envoy::{EnvoyStats, Joiner};
use crate::k8s::meta_from_log_path;
use crate::read::{LineReader, PhysicalLine};
use crate::record::Exchange;

/// How files are read.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Container log format; `None` detects it per file.
    pub format: Option<Format>,
    /// Longest physical or joined container line kept; longer ones are cut and flagged.
    pub max_line_bytes: usize,
    /// Longest joined Envoy message kept; longer ones are cut and flagged.
    pub max_message_bytes: usize,
    pub limits: Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            format: None,
            // A v2 line holds at most 16 KiB of base64 plus its prefix; a v1 chunk can be larger
            // (Envoy hands Lua up to its buffer limit, 1 MiB by default, in one chunk).
            max_line_bytes: 2 << 20,
            max_message_bytes: 8 << 20,
            limits: Limits::default(),
        }
    }
}

/// What a run saw, summed over files.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub files: u64,
    /// Physical lines read.
    pub lines: u64,
    pub decode: DecodeStats,
    pub envoy: EnvoyStats,
    pub assemble: AssembleStats,
    /// Files that could not be read, with the reason.
    pub errors: Vec<String>,
}

impl Summary {
    /// Lines and messages skipped for any reason.
    pub fn skipped(&self) -> u64 {
        self.decode.malformed
            + self.envoy.stray_lines
            + self.assemble.malformed_v2
            + self.assemble.unattributed_v1
    }
}

/// One container log stream flowing through the stages: the files of one container and restart
/// count, read in order. Used by `meshtap parse` for whole files and by the agent for tailing; its
/// state can be saved and restored ([`LogStream::snapshot`]) so the agent's checkpoint carries
/// whatever spans the checkpointed position.
pub struct LogStream {
    decoder: Decoder,
    joiner: Joiner,
    assembler: Assembler,
    ctx: Contexts,
    /// The current file's fingerprint is taken from its first line (the tailer gives it instead).
    fingerprint_pending: bool,
    /// Stats of the decoders of files already finished (each file has its own decoder).
    decode_done: DecodeStats,
    settings: Settings,
}

/// The current file's identity, and the previous file's for an Envoy message that began there
/// and was still being joined when the file ended (kubelet rotates between container lines, and
/// one Envoy message spans several).
#[derive(Serialize, serde::Deserialize, Default)]
struct Contexts {
    current: FileContext,
    previous: Option<FileContext>,
    /// The joiner's number for the current file.
    current_seq: u32,
}

impl Contexts {
    fn for_msg(&self, msg: &crate::envoy::LuaMessage<'_>) -> &FileContext {
        match &self.previous {
            Some(previous) if msg.file_seq != self.current_seq => previous,
            _ => &self.current,
        }
    }
}

#[derive(Serialize)]
struct StateRef<'a> {
    decoder: &'a Decoder,
    joiner: &'a Joiner,
    assembler: &'a Assembler,
    ctx: &'a Contexts,
    fingerprint_pending: bool,
}

#[derive(serde::Deserialize)]
struct StateOwned {
    decoder: Decoder,
    joiner: Joiner,
    assembler: Assembler,
    ctx: Contexts,
    fingerprint_pending: bool,
}

/// A [`LogStream`]'s saved state (JSON), as kept in the agent's checkpoint.
pub type LogStreamState = serde_json::Value;

impl LogStream {
    pub fn new(settings: &Settings, k8s: Option<crate::record::K8sMeta>) -> Self {
        LogStream {
            decoder: Decoder::new(settings.format, settings.max_line_bytes),
            joiner: Joiner::new(settings.max_message_bytes),
            assembler: Assembler::new(settings.limits),
            ctx: Contexts {
                current: FileContext {
                    k8s,
                    ..FileContext::default()
                },
                ..Contexts::default()
            },
            fingerprint_pending: true,
            decode_done: DecodeStats::default(),
            settings: *settings,
        }
    }

    /// The state to save in a checkpoint.
    pub fn snapshot(&self) -> LogStreamState {
        serde_json::to_value(StateRef {
            decoder: &self.decoder,
            joiner: &self.joiner,
            assembler: &self.assembler,
            ctx: &self.ctx,
            fingerprint_pending: self.fingerprint_pending,
        })
        .expect("pipeline state serializes")
    }

    /// A stream continuing from a saved state.
    pub fn restore(settings: &Settings, state: LogStreamState) -> Result<Self, serde_json::Error> {
        let s: StateOwned = serde_json::from_value(state)?;
        let mut assembler = s.assembler;
        assembler.set_limits(settings.limits);
        Ok(LogStream {
            decoder: s.decoder,
            joiner: s.joiner,
            assembler,
            ctx: s.ctx,
            fingerprint_pending: s.fingerprint_pending,
            decode_done: DecodeStats::default(),
            settings: *settings,
        })
    }

    /// The next lines come from `path`. `fingerprint`: the file's identity if known (else taken
    /// from its first line). Partial lines of the previous file end here, flagged.
    pub fn start_file(
        &mut self,
        path: &Path,
        fingerprint: Option<u64>,
        out: &mut dyn FnMut(Exchange),
    ) {
        let (decoder, joiner, assembler, ctx) = (
            &mut self.decoder,
            &mut self.joiner,
            &mut self.assembler,
            &self.ctx,
        );
        decoder.finish(&mut |line| {
            joiner.push(&line, &mut |msg| assembler.push(ctx.for_msg(msg), msg, out))
        });
        add_decode(&mut self.decode_done, self.decoder.stats());
        self.decoder = Decoder::new(self.settings.format, self.settings.max_line_bytes);
        let mut next = FileContext {
            file: path.display().to_string(),
            fingerprint: fingerprint.unwrap_or_default(),
            k8s: self.ctx.current.k8s.clone(),
            format: None,
        };
        if next.k8s.is_none() {
            next.k8s = meta_from_log_path(path);
        }
        self.ctx.previous = Some(std::mem::replace(&mut self.ctx.current, next));
        self.ctx.current_seq = self.joiner.next_file();
        self.fingerprint_pending = fingerprint.is_none();
    }

    /// Feeds one physical line of the current file.
    pub fn push_line(&mut self, line: &PhysicalLine<'_>, out: &mut dyn FnMut(Exchange)) {
        if self.fingerprint_pending {
            // Only the first line of a file names it: see FileContext::fingerprint.
            self.fingerprint_pending = false;
            self.ctx.current.fingerprint = crate::read::fingerprint(line.bytes);
        }
        let (joiner, assembler, ctx) = (&mut self.joiner, &mut self.assembler, &self.ctx);
        self.decoder.push(line, &mut |line| {
            joiner.push(&line, &mut |msg| assembler.push(ctx.for_msg(msg), msg, out))
        });
        self.ctx.current.format = self.decoder.format();
    }

    /// Ends the Envoy messages still being joined: while tailing, a quiet log means the last
    /// message is whole (Envoy writes a message in one write).
    pub fn flush_messages(&mut self, out: &mut dyn FnMut(Exchange)) {
        let (assembler, ctx) = (&mut self.assembler, &self.ctx);
        self.joiner
            .flush(&mut |msg| assembler.push(ctx.for_msg(msg), msg, out));
    }

    /// Lines of this stream were lost before they were read (the tail reported a file deleted or
    /// truncated unread). The message being joined ends here, so that lines after the gap are
    /// not joined to it, and the exchanges open now are flagged where the format cannot tell
    /// what they lost ([`Assembler::lines_lost`]).
    pub fn lines_lost(&mut self, out: &mut dyn FnMut(Exchange)) {
        self.flush_messages(out);
        self.assembler.lines_lost();
    }

    /// Exchanges waiting for their end.
    pub fn pending_len(&self) -> usize {
        self.assembler.pending_len()
    }

    /// Emits one pending exchange early, with `warning` (a node-wide cap was reached).
    pub fn evict_oldest(&mut self, warning: String, out: &mut dyn FnMut(Exchange)) {
        self.assembler.evict_oldest(warning, out);
    }

    /// Sets the wall-clock time (ms) used to stamp and expire pending exchanges.
    pub fn set_now(&mut self, now_ms: i64) {
        self.assembler.set_now(now_ms);
    }

    /// Emits exchanges open for longer than `max_age_ms`, incomplete.
    pub fn expire(&mut self, max_age_ms: i64, out: &mut dyn FnMut(Exchange)) {
        self.assembler.expire(max_age_ms, out);
    }

    /// End of the stream: everything pending is emitted, incomplete exchanges marked so.
    pub fn finish(&mut self, out: &mut dyn FnMut(Exchange)) {
        let (decoder, joiner, assembler, ctx) = (
            &mut self.decoder,
            &mut self.joiner,
            &mut self.assembler,
            &self.ctx,
        );
        decoder.finish(&mut |line| {
            joiner.push(&line, &mut |msg| assembler.push(ctx.for_msg(msg), msg, out))
        });
        self.joiner
            .flush(&mut |msg| assembler.push(ctx.for_msg(msg), msg, out));
        self.assembler.finish(out);
    }

    /// Counts so far: (container lines decoded, Envoy stage, assembly).
    pub fn stats(&self) -> (DecodeStats, &EnvoyStats, &AssembleStats) {
        let mut decode = self.decode_done.clone();
        add_decode(&mut decode, self.decoder.stats());
        (decode, self.joiner.stats(), self.assembler.stats())
    }
}

/// Parses `paths` to the end, passing each exchange to `out`.
pub fn parse_files(
    paths: &[PathBuf],
    settings: &Settings,
    out: &mut dyn FnMut(Exchange),
) -> Summary {
    let mut summary = Summary::default();
    for group in group_by_container_log(paths) {
        let mut stream = LogStream::new(settings, None);
        for path in group {
            summary.files += 1;
            if let Err(e) = parse_file(&path, settings, &mut stream, &mut summary, out) {
                tracing::error!(path = %path.display(), error = %e, "Could not read log file.");
                summary.errors.push(e.to_string());
            }
        }
        stream.finish(out);
        let (decode, envoy, assemble) = stream.stats();
        add_decode(&mut summary.decode, &decode);
        add_envoy(&mut summary.envoy, envoy);
        add_assemble(&mut summary.assemble, assemble);
    }
    summary
}

fn parse_file(
    path: &Path,
    settings: &Settings,
    stream: &mut LogStream,
    summary: &mut Summary,
    out: &mut dyn FnMut(Exchange),
) -> Result<(), crate::read::ReadError> {
    let mut reader = LineReader::open(path, settings.max_line_bytes)?;
    stream.start_file(path, None, out);
    while let Some(line) = reader.next_line()? {
        summary.lines += 1;
        stream.push_line(&line, out);
    }
    Ok(())
}

/// Groups kubelet log files (`<restart>.log[.<timestamp>][.gz]`) of one container and restart
/// count, oldest first; any other file is a group of its own. Groups keep command-line order.
fn group_by_container_log(paths: &[PathBuf]) -> Vec<Vec<PathBuf>> {
    // Key: (directory, restart count) for kubelet files, (path, "") for anything else.
    let mut order: Vec<(PathBuf, String)> = Vec::new();
    let mut groups: BTreeMap<(PathBuf, String), Vec<(String, PathBuf)>> = BTreeMap::new();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (key, rotation) = match crate::discover::kubelet_name(name) {
            Some((restart, rotation)) => {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                // The live file has no timestamp and sorts after every rotated one.
                let rotation = rotation.unwrap_or("\u{10FFFF}").to_string();
                ((dir, restart.to_string()), rotation)
            }
            None => ((path.clone(), String::new()), String::new()),
        };
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups
            .entry(key)
            .or_default()
            .push((rotation, path.clone()));
    }
    order
        .into_iter()
        .map(|key| {
            let mut files = groups.remove(&key).unwrap_or_default();
            files.sort();
            files.into_iter().map(|(_, p)| p).collect()
        })
        .collect()
}

fn add_decode(sum: &mut DecodeStats, s: &DecodeStats) {
    sum.physical += s.physical;
    sum.lines += s.lines;
    sum.malformed += s.malformed;
    sum.partial_joined += s.partial_joined;
    sum.truncated += s.truncated;
    sum.incomplete += s.incomplete;
    sum.blank_skipped += s.blank_skipped;
}

fn add_envoy(sum: &mut EnvoyStats, s: &EnvoyStats) {
    sum.messages += s.messages;
    sum.lua_messages += s.lua_messages;
    sum.stray_lines += s.stray_lines;
    sum.truncated_messages += s.truncated_messages;
}

fn add_assemble(sum: &mut AssembleStats, s: &AssembleStats) {
    sum.exchanges += s.exchanges;
    sum.incomplete += s.incomplete;
    sum.with_warnings += s.with_warnings;
    sum.malformed_v2 += s.malformed_v2;
    sum.unattributed_v1 += s.unattributed_v1;
    sum.script_errors += s.script_errors;
    sum.evicted += s.evicted;
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// A CRI log mixing v2 and v1 exchanges on two threads, with multi-line v1 chunks and v2
    /// lines split into P/F pieces, so every kind of state spans some line boundary.
    fn mixed_log() -> Vec<u8> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut lines: Vec<String> = Vec::new();
        let mut lua = |thread: u32, msg: &str| {
            let mut first = true;
            for part in msg.split('\n') {
                let text = if first {
                    format!("[2026-11-25 08:47:45.772][{thread}][warning][lua] [lua.cc:31] script log: {part}")
                } else {
                    part.to_string()
                };
                first = false;
                // Split long lines into 40-byte P pieces, as a runtime does at 16 KiB.
                let bytes = text.as_bytes();
                let mut i = 0;
                while bytes.len() - i > 40 {
                    lines.push(format!(
                        "2026-11-25T08:47:45.000000001Z stderr P {}",
                        &text[i..i + 40]
                    ));
                    i += 40;
                }
                lines.push(format!(
                    "2026-11-25T08:47:45.000000001Z stderr F {}",
                    &text[i..]
                ));
            }
        };
        for n in 0..6 {
            let sid = format!("a.{n}");
            let headers = b64(format!(":method\nPOST\n:path\n/p/{n}\n").as_bytes());
            lua(
                7,
                &format!("[logPayload] v2 rq {sid} 0 1795596685480 {headers}"),
            );
            lua(8, "[logPayload] started");
            lua(
                7,
                &format!(
                    "[logPayload] v2 rqb {sid} 1 {}",
                    b64(format!("body {n} part one").as_bytes())
                ),
            );
            lua(8, "[logPayload] showing bodyChunks");
            lua(8, &format!("multi-line\nv1 body {n}\n"));
            lua(
                7,
                &format!("[logPayload] v2 rqe {sid} 2 1795596685481 17 0"),
            );
            lua(8, "[logPayload] showing bodyChunks");
            lua(8, "[logPayload] finished");
            lua(
                7,
                &format!(
                    "[logPayload] v2 rs {sid} 0 1795596685482 {}",
                    b64(b":status\n200\n")
                ),
            );
            lua(8, "[logPayload] started");
            lua(8, "[logPayload] showing bodyChunks");
            lua(8, &format!("v1 response {n}"));
            lua(
                7,
                &format!(
                    "[logPayload] v2 rsb {sid} 1 {}",
                    b64(format!("reply {n}").as_bytes())
                ),
            );
            lua(8, "[logPayload] showing bodyChunks");
            lua(7, &format!("[logPayload] v2 rse {sid} 2 1795596685483 7 0"));
            lua(8, "[logPayload] finished");
        }
        let mut out = lines.join("\n").into_bytes();
        out.push(b'\n');
        out
    }

    fn run(stream: &mut LogStream, data: &[u8], from: usize, to: usize, got: &mut Vec<String>) {
        let mut reader = LineReader::from_reader(
            Box::new(std::io::Cursor::new(data[from..to].to_vec())),
            1 << 20,
        );
        let mut out = |ex: Exchange| got.push(serde_json::to_string(&ex).unwrap());
        while let Some(mut line) = reader.next_line().unwrap() {
            line.offset += from as u64;
            line.end += from as u64;
            stream.push_line(&line, &mut out);
        }
    }

    #[test]
    fn snapshot_and_restore_at_any_line_neither_lose_nor_repeat() {
        let data = mixed_log();
        let settings = Settings::default();
        let path = Path::new("/l/ns_pod_uid/istio-proxy/0.log");
        let mut whole = Vec::new();
        let mut stream = LogStream::new(&settings, None);
        stream.start_file(path, None, &mut |_| {});
        run(&mut stream, &data, 0, data.len(), &mut whole);
        stream.finish(&mut |ex| whole.push(serde_json::to_string(&ex).unwrap()));
        assert_eq!(whole.len(), 12, "6 v2 + 6 v1 exchanges");
        whole.sort();

        let cuts: Vec<usize> = (0..data.len())
            .filter(|&i| i == 0 || data[i - 1] == b'\n')
            .collect();
        for &cut in &cuts {
            let mut got = Vec::new();
            let mut first = LogStream::new(&settings, None);
            first.start_file(path, None, &mut |_| {});
            run(&mut first, &data, 0, cut, &mut got);
            // Through JSON text, as the checkpoint file stores it.
            let saved = serde_json::to_string(&first.snapshot()).unwrap();
            drop(first);
            let state = serde_json::from_str(&saved).unwrap();
            let mut second = LogStream::restore(&settings, state).unwrap();
            run(&mut second, &data, cut, data.len(), &mut got);
            second.finish(&mut |ex| got.push(serde_json::to_string(&ex).unwrap()));
            got.sort();
            assert_eq!(got, whole, "cut at byte {cut}");
        }
    }

    #[test]
    fn eviction_emits_the_oldest_pending_exchange_incomplete() {
        let data = mixed_log();
        // Stop in the middle of the log: exchanges are pending on both threads.
        let cut = data.len() / 2;
        let cut = cut + data[cut..].iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut stream = LogStream::new(&Settings::default(), None);
        stream.start_file(
            Path::new("/l/ns_pod_uid/istio-proxy/0.log"),
            None,
            &mut |_| {},
        );
        let mut got = Vec::new();
        run(&mut stream, &data, 0, cut, &mut got);
        let before = stream.pending_len();
        assert!(before >= 1, "something is pending at the cut");
        let mut evicted = Vec::new();
        stream.evict_oldest("node cap".into(), &mut |ex| evicted.push(ex));
        assert_eq!(stream.pending_len(), before - 1);
        assert_eq!(evicted.len(), 1);
        assert!(!evicted[0].complete);
        assert!(evicted[0].warnings.contains(&"node cap".to_string()));
        assert_eq!(stream.stats().2.evicted, 1);
    }

    /// Regression (agent model, seed 0x18eedd91ac8463d9): a v1 request's `started` was read, its
    /// header block was in a rotated file kubelet deleted unread, and the exchange's response
    /// followed in the next file. The request opened without headers, the bodiless response
    /// ended the exchange, and it came out complete, unflagged, naming no path.
    #[test]
    fn v1_exchange_open_across_lost_lines_is_flagged_not_complete() {
        let line = |thread: u32, text: &str| {
            format!("2026-11-25T08:47:45.000000001Z stderr F [2026-11-25 08:47:45.772][{thread}][warning][lua] [lua.cc:31] script log: {text}\n")
        };
        let before = line(31, "[logPayload] started");
        let mut after = String::new();
        for text in [
            "[envoy_on_response] find productpage",
            "[envoy_on_request] meta logPayload found",
            "[logPayload] started",
        ] {
            after.push_str(&line(31, text));
        }
        after.push_str(&line(31, "[logPayload:headers] --> "));
        after.push_str("2026-11-25T08:47:45.000000001Z stderr F :status:204,\n");
        let data = format!("{before}{after}").into_bytes();
        let parse = |lost: bool| {
            let mut stream = LogStream::new(&Settings::default(), None);
            let mut got = Vec::new();
            stream.start_file(
                Path::new("/l/ns_pod_uid/istio-proxy/0.log"),
                None,
                &mut |_| {},
            );
            run(&mut stream, &data, 0, before.len(), &mut got);
            if lost {
                stream.lines_lost(&mut |ex| got.push(serde_json::to_string(&ex).unwrap()));
            }
            run(&mut stream, &data, before.len(), data.len(), &mut got);
            stream.finish(&mut |ex| got.push(serde_json::to_string(&ex).unwrap()));
            assert_eq!(got.len(), 1, "{got:?}");
            serde_json::from_str::<serde_json::Value>(&got[0]).unwrap()
        };
        // Without a gap this reads as a request logged without headers: complete.
        let whole = parse(false);
        assert_eq!(whole["complete"], true);
        let flagged = parse(true);
        assert_eq!(flagged["complete"], false);
        assert!(
            flagged["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str().unwrap().contains("log lines were lost")),
            "{flagged}"
        );
    }

    #[test]
    fn rotated_files_group_oldest_first() {
        let p = |s: &str| PathBuf::from(s);
        let groups = group_by_container_log(&[
            p("/l/ns_pod_uid/istio-proxy/0.log"),
            p("/l/ns_pod_uid/istio-proxy/0.log.20240102-000000"),
            p("/l/ns_pod_uid/istio-proxy/0.log.20240101-000000.gz"),
            p("/l/ns_pod_uid/istio-proxy/1.log"),
            p("/tmp/envoy.txt"),
        ]);
        assert_eq!(
            groups,
            vec![
                vec![
                    p("/l/ns_pod_uid/istio-proxy/0.log.20240101-000000.gz"),
                    p("/l/ns_pod_uid/istio-proxy/0.log.20240102-000000"),
                    p("/l/ns_pod_uid/istio-proxy/0.log"),
                ],
                vec![p("/l/ns_pod_uid/istio-proxy/1.log")],
                vec![p("/tmp/envoy.txt")],
            ]
        );
    }
}
