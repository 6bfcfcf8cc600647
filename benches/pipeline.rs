//! Throughput of meshtap's main path, on generated istio-proxy logs (deterministic, so runs
//! compare): `meshtap parse` on CRI-wrapped v2 and v1 logs, single-threaded, from the page cache.
//! Prints MB/s of input, exchanges/s and CPU time, and the change against the previous run
//! (kept in target/bench-last.json). Run: `cargo bench --bench pipeline` or `scripts/bench.sh`.

mod gen;

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use gen::{cpu_time, Bodies, Last};
use meshtap::pipeline::{parse_files, Settings};

fn measure(name: &str, path: &Path, bytes: usize, exchanges: usize, last: &Last) -> (String, f64) {
    let settings = Settings::default();
    // Warm the page cache and the allocator once, then take the best of three.
    let mut best = f64::MAX;
    let mut cpu = Duration::ZERO;
    for _ in 0..4 {
        let mut count = 0usize;
        let (t0, c0) = (Instant::now(), cpu_time("self"));
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
            cpu = cpu_time("self") - c0;
        }
    }
    let mbs = bytes as f64 / best / 1e6;
    // A smoke run (another size, maybe another build) does not compare.
    let previous = last
        .get(name)
        .and_then(|v| v.as_f64())
        .filter(|_| !gen::smoke());
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
    // The smoke run (CI) checks that the bench works on a small input and records nothing.
    let smoke = gen::smoke();
    let size: usize = gen::env_or("MESHTAP_BENCH_MB", if smoke { 4 } else { 200 }) << 20;
    let dir = gen::bench_dir();
    let mut last = Last::load();
    for (name, (data, n)) in [
        ("parse_v2_cri", gen::v2_log(size, Bodies::Mixed)),
        ("parse_v1_cri", gen::v1_log(size)),
    ] {
        let path = dir.join(format!("{name}.log"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let (line, mbs) = measure(name, &path, data.len(), n, &last);
        println!("{line}");
        if !smoke {
            last.record(name, mbs.into());
        }
    }
    last.save();
}
