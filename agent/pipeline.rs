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
use crate::read::LineReader;
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

/// Parses `paths` to the end, passing each exchange to `out`.
pub fn parse_files(
    paths: &[PathBuf],
    settings: &Settings,
    out: &mut dyn FnMut(Exchange),
) -> Summary {
    let mut summary = Summary::default();
    for group in group_by_container_log(paths) {
        let mut joiner = Joiner::new(settings.max_message_bytes);
        let mut assembler = Assembler::new(settings.limits);
        let mut ctx = FileContext::default();
        for path in group {
            summary.files += 1;
            ctx.file = path.display().to_string();
            ctx.k8s = meta_from_log_path(&path);
            if let Err(e) = parse_file(
                &path,
                settings,
                &mut ctx,
                &mut joiner,
                &mut assembler,
                &mut summary,
                out,
            ) {
                tracing::error!(path = %path.display(), error = %e, "Could not read log file.");
                summary.errors.push(e.to_string());
            }
        }
        joiner.flush(&mut |msg| assembler.push(&ctx, msg, out));
        assembler.finish(out);
        add_envoy(&mut summary.envoy, joiner.stats());
        add_assemble(&mut summary.assemble, assembler.stats());
    }
    summary
}

fn parse_file(
    path: &Path,
    settings: &Settings,
    ctx: &mut FileContext,
    joiner: &mut Joiner,
    assembler: &mut Assembler,
    summary: &mut Summary,
    out: &mut dyn FnMut(Exchange),
) -> Result<(), crate::read::ReadError> {
    let mut reader = LineReader::open(path, settings.max_line_bytes)?;
    let mut decoder = Decoder::new(settings.format, settings.max_line_bytes);
    let mut first = true;
    let mut result = Ok(());
    loop {
        match reader.next_line() {
            Ok(Some(line)) => {
                if first {
                    // Only the first line of a file names it: see FileContext::fingerprint.
                    first = false;
                    ctx_fingerprint(ctx, line.bytes);
                }
                summary.lines += 1;
                decoder.push(&line, &mut |line| {
                    joiner.push(&line, &mut |msg| assembler.push(ctx, msg, out))
                });
                ctx.format = decoder.format();
            }
            Ok(None) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    decoder.finish(&mut |line| joiner.push(&line, &mut |msg| assembler.push(ctx, msg, out)));
    add_decode(&mut summary.decode, decoder.stats());
    result
}

fn ctx_fingerprint(ctx: &mut FileContext, first_line: &[u8]) {
    ctx.fingerprint = xxhash_rust::xxh3::xxh3_64(&first_line[..first_line.len().min(1024)]);
}

/// Groups kubelet log files (`<restart>.log[.<timestamp>][.gz]`) of one container and restart
/// count, oldest first; any other file is a group of its own. Groups keep command-line order.
fn group_by_container_log(paths: &[PathBuf]) -> Vec<Vec<PathBuf>> {
    // Key: (directory, restart count) for kubelet files, (path, "") for anything else.
    let mut order: Vec<(PathBuf, String)> = Vec::new();
    let mut groups: BTreeMap<(PathBuf, String), Vec<(String, PathBuf)>> = BTreeMap::new();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (key, rotation) = match kubelet_name(name) {
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

/// `0.log` -> (0, None); `0.log.20240101-101010[.gz]` -> (0, Some("20240101-101010")).
fn kubelet_name(name: &str) -> Option<(&str, Option<&str>)> {
    let (restart, rest) = name.split_once(".log")?;
    if restart.is_empty() || !restart.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match rest {
        "" => Some((restart, None)),
        _ => {
            let rotation = rest.strip_prefix('.')?;
            let rotation = rotation.strip_suffix(".gz").unwrap_or(rotation);
            Some((restart, Some(rotation)))
        }
    }
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
