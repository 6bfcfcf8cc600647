//! Shared by the bench programs: a deterministic generator of realistic istio-proxy logs (CRI
//! lines around Envoy's default layout around the Lua filters' messages) and the record of the
//! previous run that each result is compared with (target/bench-last.json).
//!
//! Same seed, same bytes: runs compare, and every bench program feeds the agent the same kind of
//! log. Bodies are JSON API payloads whose size comes from [`Bodies`].

#![allow(dead_code)] // each bench program uses a part

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

/// A small deterministic PRNG (xorshift64*), so every run generates the same bytes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Body sizes of the generated exchanges (each direction draws its own).
#[derive(Clone, Copy, Debug)]
pub enum Bodies {
    /// Mostly small API payloads (70%: 64 B-1 KiB), some 4-64 KiB documents: the parse benches.
    Mixed,
    /// Small API payloads only, 64 B-1 KiB: a busy node's typical traffic.
    Small,
    /// Every body exactly this many bytes (e.g. 1024 for the Kafka target).
    Fixed(usize),
}

/// A JSON body of a size drawn from `sizes`.
pub fn body(rng: &mut Rng, i: usize, sizes: Bodies) -> Vec<u8> {
    let len = match sizes {
        Bodies::Mixed if rng.below(10) < 7 => 64 + rng.below(1024) as usize,
        Bodies::Mixed => 4096 + rng.below(60 * 1024) as usize,
        Bodies::Small => 64 + rng.below(1024) as usize,
        Bodies::Fixed(len) => len,
    };
    let mut b = format!("{{\"id\":{i},\"items\":[").into_bytes();
    while b.len() < len {
        b.extend_from_slice(
            format!(
                "{{\"sku\":\"A{:06}\",\"qty\":{}}},",
                rng.below(1_000_000),
                rng.below(9)
            )
            .as_bytes(),
        );
    }
    b.truncate(len);
    b
}

/// One container line as containerd writes it; lines over 16 KiB are split into partial pieces.
pub fn cri(out: &mut Vec<u8>, line: &[u8]) {
    let mut rest = line;
    while rest.len() > 16 * 1024 {
        out.extend_from_slice(b"2026-11-25T08:47:45.772123456Z stderr P ");
        out.extend_from_slice(&rest[..16 * 1024]);
        out.push(b'\n');
        rest = &rest[16 * 1024..];
    }
    out.extend_from_slice(b"2026-11-25T08:47:45.772123456Z stderr F ");
    out.extend_from_slice(rest);
    out.push(b'\n');
}

/// One Lua `logWarn` message in Envoy's default layout; a multi-line message continues on
/// unprefixed lines.
pub fn lua(out: &mut Vec<u8>, thread: u64, msg: &[u8]) {
    let mut first = true;
    for part in msg.split(|&b| b == b'\n') {
        let mut line = Vec::with_capacity(part.len() + 100);
        if first {
            line.extend_from_slice(
                format!("[2026-11-25 08:47:45.772][{thread}][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: ").as_bytes(),
            );
            first = false;
        }
        line.extend_from_slice(part);
        cri(out, &line);
    }
}

/// Appends one whole exchange as the v2 filter logs it (request headers, body pieces of at most
/// 12 KiB, end; the same for the response). `stream` prefixes the stream ids, so that several
/// writers never reuse one; `n` numbers the exchange.
pub fn v2_exchange(out: &mut Vec<u8>, rng: &mut Rng, stream: &str, n: usize, sizes: Bodies) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sid = format!("{stream}.{n}");
    let thread = 20 + (n % 2) as u64;
    let headers = format!(":authority\nproductpage:9080\n:path\n/api/v1/orders/{n}\n:method\nPOST\n:scheme\nhttp\ncontent-type\napplication/json\nx-request-id\n{:016x}\nuser-agent\nbench/1.0\n", rng.next());
    lua(
        out,
        thread,
        format!(
            "[logPayload] v2 rq {sid} 0 1795596685480 {}",
            b64.encode(headers)
        )
        .as_bytes(),
    );
    let req = body(rng, n, sizes);
    let mut seq = 1;
    for piece in req.chunks(12 * 1024) {
        lua(
            out,
            thread,
            format!("[logPayload] v2 rqb {sid} {seq} {}", b64.encode(piece)).as_bytes(),
        );
        seq += 1;
    }
    lua(
        out,
        thread,
        format!(
            "[logPayload] v2 rqe {sid} {seq} 1795596685481 {} 0",
            req.len()
        )
        .as_bytes(),
    );
    lua(
        out,
        thread,
        format!(
            "[logPayload] v2 rs {sid} 0 1795596685482 {}",
            b64.encode(":status\n200\ncontent-type\napplication/json\n")
        )
        .as_bytes(),
    );
    let resp = body(rng, n + 1, sizes);
    let mut seq = 1;
    for piece in resp.chunks(12 * 1024) {
        lua(
            out,
            thread,
            format!("[logPayload] v2 rsb {sid} {seq} {}", b64.encode(piece)).as_bytes(),
        );
        seq += 1;
    }
    lua(
        out,
        thread,
        format!(
            "[logPayload] v2 rse {sid} {seq} 1795596685483 {} 0",
            resp.len()
        )
        .as_bytes(),
    );
}

/// The seed of the v2 generator (kept: the parse figures compare with earlier runs).
pub const V2_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// v2 log of about `target` bytes; returns the log and its number of exchanges.
pub fn v2_log(target: usize, sizes: Bodies) -> (Vec<u8>, usize) {
    let mut rng = Rng(V2_SEED);
    let mut out = Vec::with_capacity(target + (1 << 20));
    let mut n = 0;
    while out.len() < target {
        v2_exchange(&mut out, &mut rng, "6b06a18c.7f2ddc2776b0", n, sizes);
        n += 1;
    }
    (out, n)
}

/// v2 log of exactly `count` exchanges, stream ids prefixed with `stream`, from `rng`.
pub fn v2_exchanges(rng: &mut Rng, stream: &str, count: usize, sizes: Bodies) -> Vec<u8> {
    let mut out = Vec::new();
    for n in 0..count {
        v2_exchange(&mut out, rng, stream, n, sizes);
    }
    out
}

/// v1 (seed, headers variant) log of about `target` bytes, bodies pretty-printed over many lines.
pub fn v1_log(target: usize) -> (Vec<u8>, usize) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::with_capacity(target + (1 << 20));
    let mut n = 0;
    while out.len() < target {
        let thread = 20 + (n % 2) as u64;
        let pretty = |b: Vec<u8>| -> Vec<u8> {
            let mut p = Vec::with_capacity(b.len() + b.len() / 40);
            for (i, c) in b.into_iter().enumerate() {
                p.push(c);
                if c == b',' && i % 3 == 0 {
                    p.push(b'\n');
                }
            }
            p
        };
        lua(&mut out, thread, b"[logPayload] started");
        lua(&mut out, thread, format!("[logPayload:headers] --> \n:authority:productpage:9080,\n:path:/productpage/{n},\n:method:POST,\ncontent-type:application/json,\ncontent-length:1,").as_bytes());
        lua(&mut out, thread, b"[logPayload] showing bodyChunks");
        lua(&mut out, thread, &pretty(body(&mut rng, n, Bodies::Mixed)));
        lua(&mut out, thread, b"[logPayload] showing bodyChunks");
        lua(
            &mut out,
            thread,
            b"[envoy_on_request] meta logPayload found",
        );
        lua(&mut out, thread, b"[logPayload] started");
        lua(&mut out, thread, b"[logPayload:headers] --> \n:status:200,\ncontent-type:application/json,\ncontent-length:1,");
        lua(&mut out, thread, b"[logPayload] showing bodyChunks");
        lua(
            &mut out,
            thread,
            &pretty(body(&mut rng, n + 1, Bodies::Mixed)),
        );
        lua(&mut out, thread, b"[logPayload] showing bodyChunks");
        n += 1;
    }
    (out, n)
}

/// utime + stime of process `pid` ("self" for this one), from /proc (100 Hz clock ticks).
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Where the bench programs keep their generated inputs (git-ignored, under target/).
pub fn bench_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    dir
}

/// The results of the previous recorded run, one entry per bench name (target/bench-last.json).
/// Each program updates only its own entries, so the programs can run in any order.
pub struct Last {
    path: PathBuf,
    pub previous: serde_json::Map<String, serde_json::Value>,
    current: serde_json::Map<String, serde_json::Value>,
}

impl Last {
    pub fn load() -> Last {
        let path = bench_dir().join("../bench-last.json");
        let previous = read_map(&path);
        Last {
            path,
            previous,
            current: serde_json::Map::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.previous.get(name)
    }

    pub fn record(&mut self, name: &str, value: serde_json::Value) {
        self.current.insert(name.to_string(), value);
    }

    /// Writes this run's entries over the previous ones (others kept as they were).
    pub fn save(&self) {
        let mut all = read_map(&self.path);
        for (k, v) in &self.current {
            all.insert(k.clone(), v.clone());
        }
        let json = serde_json::to_vec_pretty(&all).expect("serialize");
        std::fs::write(&self.path, json).expect("write target/bench-last.json");
    }
}

fn read_map(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// `MESHTAP_BENCH_SMOKE=1`: the short run of CI (tiny inputs; checks, no recorded figures).
pub fn smoke() -> bool {
    std::env::var("MESHTAP_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A numeric setting from the environment, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid number")),
        Err(_) => default,
    }
}
