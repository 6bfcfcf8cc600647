//! Throughput of meshtap's main path, on generated istio-proxy logs (deterministic, so runs
//! compare): `meshtap parse` on CRI-wrapped v2 and v1 logs, single-threaded, from the page cache.
//! Prints MB/s of input, exchanges/s and CPU time, and the change against the previous run
//! (kept in target/bench-last.json). Run: `cargo bench --bench pipeline` or `scripts/bench.sh`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use meshtap::pipeline::{parse_files, Settings};

/// A small deterministic PRNG (xorshift64*), so every run parses the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Body sizes: mostly small API payloads, some 4-64 KiB documents.
fn body(rng: &mut Rng, i: usize) -> Vec<u8> {
    let len = if rng.below(10) < 7 {
        64 + rng.below(1024) as usize
    } else {
        4096 + rng.below(60 * 1024) as usize
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

fn cri(out: &mut Vec<u8>, line: &[u8]) {
    // containerd splits lines over 16 KiB into partial pieces.
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

fn lua(out: &mut Vec<u8>, thread: u64, msg: &[u8]) {
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

/// v2 log of about `target` bytes: exchanges with headers and bodies as the v2 filter writes them.
fn v2_log(target: usize) -> (Vec<u8>, usize) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(target + (1 << 20));
    let mut n = 0;
    while out.len() < target {
        let sid = format!("6b06a18c.7f2ddc2776b0.{n}");
        let thread = 20 + (n % 2) as u64;
        let headers = format!(":authority\nproductpage:9080\n:path\n/api/v1/orders/{n}\n:method\nPOST\n:scheme\nhttp\ncontent-type\napplication/json\nx-request-id\n{:016x}\nuser-agent\nbench/1.0\n", rng.next());
        lua(
            &mut out,
            thread,
            format!(
                "[logPayload] v2 rq {sid} 0 1795596685480 {}",
                b64.encode(headers)
            )
            .as_bytes(),
        );
        let req = body(&mut rng, n);
        let mut seq = 1;
        for piece in req.chunks(12 * 1024) {
            lua(
                &mut out,
                thread,
                format!("[logPayload] v2 rqb {sid} {seq} {}", b64.encode(piece)).as_bytes(),
            );
            seq += 1;
        }
        lua(
            &mut out,
            thread,
            format!(
                "[logPayload] v2 rqe {sid} {seq} 1795596685481 {} 0",
                req.len()
            )
            .as_bytes(),
        );
        lua(
            &mut out,
            thread,
            format!(
                "[logPayload] v2 rs {sid} 0 1795596685482 {}",
                b64.encode(":status\n200\ncontent-type\napplication/json\n")
            )
            .as_bytes(),
        );
        let resp = body(&mut rng, n + 1);
        let mut seq = 1;
        for piece in resp.chunks(12 * 1024) {
            lua(
                &mut out,
                thread,
                format!("[logPayload] v2 rsb {sid} {seq} {}", b64.encode(piece)).as_bytes(),
            );
            seq += 1;
        }
        lua(
            &mut out,
            thread,
            format!(
                "[logPayload] v2 rse {sid} {seq} 1795596685483 {} 0",
                resp.len()
            )
            .as_bytes(),
        );
        n += 1;
    }
    (out, n)
}

/// v1 (seed, headers variant) log of about `target` bytes, bodies pretty-printed over many lines.
fn v1_log(target: usize) -> (Vec<u8>, usize) {
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
        lua(&mut out, thread, &pretty(body(&mut rng, n)));
        lua(&mut out, thread, b"[logPayload] showing bodyChunks");
        lua(
            &mut out,
            thread,
            b"[envoy_on_request] meta logPayload found",
        );
        lua(&mut out, thread, b"[logPayload] started");
        lua(&mut out, thread, b"[logPayload:headers] --> \n:status:200,\ncontent-type:application/json,\ncontent-length:1,");
        lua(&mut out, thread, b"[logPayload] showing bodyChunks");
        lua(&mut out, thread, &pretty(body(&mut rng, n + 1)));
        lua(&mut out, thread, b"[logPayload] showing bodyChunks");
        n += 1;
    }
    (out, n)
}

fn cpu_time() -> Duration {
    // utime + stime of this process, from /proc (clock ticks are 100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
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

fn measure(
    name: &str,
    path: &Path,
    bytes: usize,
    exchanges: usize,
    last: &serde_json::Value,
) -> (String, f64) {
    let settings = Settings::default();
    // Warm the page cache and the allocator once, then take the best of three.
    let mut best = f64::MAX;
    let mut cpu = Duration::ZERO;
    for _ in 0..4 {
        let mut count = 0usize;
        let (t0, c0) = (Instant::now(), cpu_time());
        parse_files(&[path.to_path_buf()], &settings, &mut |ex| {
            count += 1;
            std::hint::black_box(serde_json::to_vec(&ex).unwrap());
        });
        let wall = t0.elapsed().as_secs_f64();
        assert_eq!(
            count, exchanges,
            "{name}: every generated exchange comes out"
        );
        if wall < best {
            best = wall;
            cpu = cpu_time() - c0;
        }
    }
    let mbs = bytes as f64 / best / 1e6;
    let previous = last.get(name).and_then(|v| v.as_f64());
    let change = previous
        .map(|p| {
            format!(
                " ({:+.1}% vs previous {:.0} MB/s)",
                (mbs / p - 1.0) * 100.0,
                p
            )
        })
        .unwrap_or_default();
    let line = format!(
        "{name}: {:.1} MB in {:.3} s = {:.0} MB/s, {:.0} exchanges/s, CPU {:.2} s{change}",
        bytes as f64 / 1e6,
        best,
        mbs,
        exchanges as f64 / best,
        cpu.as_secs_f64()
    );
    (line, mbs)
}

fn main() {
    let size: usize = std::env::var("MESHTAP_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        << 20;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let last_path = dir.join("../bench-last.json");
    let last: serde_json::Value = std::fs::read(&last_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut results = serde_json::Map::new();
    for (name, (data, n)) in [
        ("parse_v2_cri", v2_log(size)),
        ("parse_v1_cri", v1_log(size)),
    ] {
        let path = dir.join(format!("{name}.log"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let (line, mbs) = measure(name, &path, data.len(), n, &last);
        println!("{line}");
        results.insert(name.to_string(), mbs.into());
    }
    std::fs::write(&last_path, serde_json::to_vec_pretty(&results).unwrap()).unwrap();
}
