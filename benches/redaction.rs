//! The cost of the default policy stages (body decoding, then redaction) per exchange, on
//! realistic records, next to the cost of the one `serde_json` serialization every sink does.
//!
//! Workloads (deterministic):
//! - `small_json`: a login: `authorization`, `cookie`, a ~100 B JSON request with a password and a
//!   ~150 B JSON response with an access token, `set-cookie`.
//! - `json_16k`: a 16 KiB JSON order document each way (one card number in free text), bearer auth.
//! - `gzip_16k`: the same 16 KiB response gzip-encoded (`content-encoding: gzip`).
//!
//! Prints exchanges/s and MB/s (body bytes as logged) for the stages alone, best of 5 runs, single
//! thread. Run: `cargo bench --bench redaction`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use meshtap::config::Config;
use meshtap::record::{Direction, Exchange, Headers, LogPosition, Source};
use meshtap::stage::Stages;

fn headers(pairs: &[(&str, String)]) -> Headers {
    let mut h = Headers::new();
    for (n, v) in pairs {
        h.entry(n.to_string()).or_default().push(v.clone());
    }
    h
}

fn exchange(i: usize, request: Direction, response: Direction) -> Exchange {
    Exchange {
        id: format!("{i:032x}"),
        source: Source::LuaV2,
        time: "2026-11-25T08:47:45.772Z".into(),
        k8s: None,
        log: LogPosition::default(),
        request: Some(request),
        response: Some(response),
        complete: true,
        warnings: vec![],
        redacted: vec![],
    }
}

fn direction(headers: Headers, body: Vec<u8>) -> Direction {
    Direction {
        body_size: body.len() as u64,
        headers: Some(headers),
        body,
        ended: true,
        ..Default::default()
    }
}

fn small_json(i: usize) -> Exchange {
    let request = direction(
        headers(&[
            (":method", "POST".into()),
            (":path", "/api/v1/login".into()),
            ("authorization", format!("Basic dXNlcjp{i:08}")),
            ("cookie", format!("sid=abc{i}; theme=dark")),
            ("content-type", "application/json".into()),
            ("x-request-id", format!("{i:032x}")),
        ]),
        format!("{{\"user\":\"user{i}\",\"password\":\"pw-{i}-secret\",\"remember\":true,\"client\":\"web\"}}")
            .into_bytes(),
    );
    let response = direction(
        headers(&[
            (":status", "200".into()),
            ("content-type", "application/json".into()),
            ("set-cookie", format!("sid=new{i}; Path=/; HttpOnly")),
        ]),
        format!("{{\"access_token\":\"at-{i}-0123456789abcdef\",\"token_type\":\"Bearer\",\"expires_in\":3600,\"scope\":\"read write\"}}")
            .into_bytes(),
    );
    exchange(i, request, response)
}

/// A JSON order document of about `size` bytes, with one card number in a free-text note.
fn document(i: usize, size: usize) -> Vec<u8> {
    let mut b = format!(
        "{{\"id\":{i},\"note\":\"paid with 4111 1111 1111 1111 on 2026-11-25\",\"items\":["
    )
    .into_bytes();
    let mut n = 0u64;
    while b.len() < size - 40 {
        n += 1;
        b.extend_from_slice(
            format!(
                "{{\"sku\":\"A{:06}\",\"qty\":{},\"name\":\"item {n}\"}},",
                (n * 7919 + i as u64) % 1_000_000,
                n % 9
            )
            .as_bytes(),
        );
    }
    b.extend_from_slice(b"{\"sku\":\"end\"}]}");
    b
}

fn json_16k(i: usize, gzip: bool) -> Exchange {
    let request = direction(
        headers(&[
            (":method", "PUT".into()),
            (":path", format!("/api/v1/orders/{i}")),
            ("authorization", format!("Bearer tok{i:016}")),
            ("content-type", "application/json".into()),
        ]),
        document(i, 16 << 10),
    );
    let mut response_headers = headers(&[
        (":status", "200".into()),
        ("content-type", "application/json".into()),
    ]);
    let mut body = document(i + 1, 16 << 10);
    if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&body).unwrap();
        body = e.finish().unwrap();
        response_headers.insert("content-encoding".into(), vec!["gzip".into()]);
    }
    exchange(i, request, direction(response_headers, body))
}

fn body_bytes(ex: &Exchange) -> usize {
    [&ex.request, &ex.response]
        .into_iter()
        .flatten()
        .map(|d| d.body.len())
        .sum()
}

fn measure(name: &str, records: &[Exchange]) {
    let bytes: usize = records.iter().map(body_bytes).sum();
    let mut best = Duration::MAX;
    let mut best_serialize = Duration::MAX;
    let mut redacted = 0;
    for _ in 0..5 {
        let batch: Vec<Exchange> = records.to_vec();
        let mut stages = Stages::from_config(&Config::default()).unwrap();
        let t = Instant::now();
        let out: Vec<Exchange> = batch
            .into_iter()
            .map(|ex| stages.run(ex).unwrap())
            .collect();
        best = best.min(t.elapsed());
        redacted = out.iter().filter(|e| !e.redacted.is_empty()).count();
        let t = Instant::now();
        let mut total = 0;
        for ex in &out {
            total += serde_json::to_vec(ex).unwrap().len();
        }
        best_serialize = best_serialize.min(t.elapsed());
        assert!(total > 0);
    }
    assert_eq!(redacted, records.len(), "{name}: every record had a secret");
    let secs = best.as_secs_f64();
    println!(
        "{name}: {} exchanges, {:.1} MB of bodies in {:.3} s = {:.0} exchanges/s, {:.0} MB/s \
         (serde_json of the same records: {:.0} exchanges/s)",
        records.len(),
        bytes as f64 / 1e6,
        secs,
        records.len() as f64 / secs,
        bytes as f64 / 1e6 / secs,
        records.len() as f64 / best_serialize.as_secs_f64(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 1 } else { 20 };
    measure(
        "small_json",
        &(0..20_000 / 20 * n).map(small_json).collect::<Vec<_>>(),
    );
    measure(
        "json_16k",
        &(0..2_000 / 20 * n)
            .map(|i| json_16k(i, false))
            .collect::<Vec<_>>(),
    );
    measure(
        "gzip_16k",
        &(0..2_000 / 20 * n)
            .map(|i| json_16k(i, true))
            .collect::<Vec<_>>(),
    );
}
