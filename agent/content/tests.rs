use std::io::Write;

use super::*;
use crate::record::{Headers, Source};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = ::brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn text(lines: u32) -> Vec<u8> {
    (0..lines)
        .flat_map(|i| format!("{{\"line\":{i},\"text\":\"héllo wörld\"}}\n").into_bytes())
        .collect()
}

fn exchange(encoding: &str, body: Vec<u8>) -> Exchange {
    let response = Direction {
        status: Some(200),
        headers: Some(Headers::from([(
            "content-encoding".to_string(),
            vec![encoding.to_string()],
        )])),
        body_size: body.len() as u64,
        body,
        ended: true,
        ..Default::default()
    };
    Exchange {
        id: "x".into(),
        source: Source::LuaV2,
        time: "t".into(),
        k8s: None,
        log: Default::default(),
        request: Some(Direction::default()),
        response: Some(response),
        complete: true,
        warnings: vec![],
        redacted: vec![],
    }
}

fn run(config: DecodingConfig, mut ex: Exchange) -> Exchange {
    assert_eq!(Decoding::new(config).process(&mut ex), Verdict::Keep);
    ex
}

#[test]
fn every_encoding_round_trips_and_keeps_the_wire_size() {
    let plain = text(2000);
    for (name, encoded) in [
        ("gzip", gzip(&plain)),
        ("x-gzip", gzip(&plain)),
        ("deflate", zlib(&plain)),
        ("deflate", raw_deflate(&plain)),
        ("br", brotli(&plain)),
        ("GZip ", gzip(&plain)),
    ] {
        let wire = encoded.len() as u64;
        let ex = run(DecodingConfig::default(), exchange(name, encoded));
        let r = ex.response.unwrap();
        assert!(r.body == plain, "{name}: decoded body differs");
        assert_eq!(
            r.body_decoded_from.as_deref(),
            Some(name.trim().to_ascii_lowercase().as_str())
        );
        assert_eq!(r.body_size, wire, "{name}: body_size stays the wire size");
        assert!(!r.body_truncated, "{name}");
        assert!(ex.warnings.is_empty(), "{name}: {:?}", ex.warnings);
    }
}

#[test]
fn chains_are_undone_last_coding_first_and_identity_is_ignored() {
    let plain = text(300);
    let encoded = brotli(&gzip(&plain));
    let mut ex = exchange("gzip", encoded);
    // Two header lines are one list: gzip was applied, then br.
    ex.response.as_mut().unwrap().headers = Some(Headers::from([(
        "content-encoding".to_string(),
        vec!["identity, gzip".to_string(), "br".to_string()],
    )]));
    let ex = run(DecodingConfig::default(), ex);
    let r = ex.response.unwrap();
    assert!(r.body == plain);
    assert_eq!(r.body_decoded_from.as_deref(), Some("gzip, br"));
    assert!(ex.warnings.is_empty(), "{:?}", ex.warnings);
}

#[test]
fn a_decompression_bomb_is_capped_without_allocating_past_the_cap() {
    let zeros = vec![0u8; 10 << 20];
    let bomb = gzip(&zeros);
    assert!(
        bomb.len() < 20 << 10,
        "10 MB of zeros gzip to {} bytes",
        bomb.len()
    );
    let cap = 1 << 20;
    let out = decode(Encoding::Gzip, &bomb, cap);
    assert!(out.capped);
    assert_eq!(out.bytes.len(), cap);
    assert!(
        out.bytes.capacity() <= cap,
        "capacity {} beyond the cap",
        out.bytes.capacity()
    );

    let config = DecodingConfig {
        max_decoded_bytes: cap,
        ..Default::default()
    };
    for (name, encoded) in [("gzip", bomb), ("br", brotli(&zeros))] {
        let ex = run(config.clone(), exchange(name, encoded));
        let r = ex.response.unwrap();
        assert_eq!(r.body.len(), cap, "{name}");
        assert!(r.body_truncated, "{name}");
        assert!(
            r.truncated_reason
                .as_deref()
                .unwrap()
                .contains("decoding.max_decoded_bytes (1048576)"),
            "{name}: {:?}",
            r.truncated_reason
        );
        assert_eq!(r.body_decoded_from.as_deref(), Some(name));
    }
}

#[test]
fn a_body_exactly_at_the_cap_is_not_flagged() {
    let plain = vec![b'a'; 4096];
    let out = decode(Encoding::Gzip, &gzip(&plain), 4096);
    assert!(!out.capped && out.error.is_none());
    assert_eq!(out.bytes, plain);
    let out = decode(Encoding::Gzip, &gzip(&plain), 4095);
    assert!(out.capped);
}

#[test]
fn corrupt_streams_keep_the_logged_bytes_with_a_warning() {
    let plain = text(500);
    for (name, mut encoded) in [
        ("gzip", gzip(&plain)),
        ("deflate", zlib(&plain)),
        ("br", brotli(&plain)),
    ] {
        let n = encoded.len();
        for b in &mut encoded[n / 3..n / 3 + 16] {
            *b ^= 0x55;
        }
        let ex = run(DecodingConfig::default(), exchange(name, encoded.clone()));
        let r = ex.response.unwrap();
        assert!(r.body == encoded, "{name}: logged bytes kept");
        assert_eq!(r.body_decoded_from, None);
        assert!(
            ex.warnings[0].starts_with(&format!("response body left as logged: corrupt {name}")),
            "{name}: {:?}",
            ex.warnings
        );
    }
    // Not compressed at all, and cut short without the log saying so.
    let ex = run(
        DecodingConfig::default(),
        exchange("gzip", b"plain text".to_vec()),
    );
    assert_eq!(ex.response.unwrap().body, b"plain text");
    assert_eq!(ex.warnings.len(), 1);
    let gz = gzip(&plain);
    let ex = run(
        DecodingConfig::default(),
        exchange("gzip", gz[..gz.len() / 2].to_vec()),
    );
    assert!(ex.warnings[0].contains("corrupt gzip"), "{:?}", ex.warnings);
}

#[test]
fn a_truncated_body_is_decoded_as_far_as_it_goes() {
    let plain = text(3000);
    for (name, encoded) in [
        ("gzip", gzip(&plain)),
        ("deflate", zlib(&plain)),
        ("br", brotli(&plain)),
    ] {
        let mut ex = exchange(name, encoded[..encoded.len() / 2].to_vec());
        ex.response
            .as_mut()
            .unwrap()
            .truncate("body exceeded the filter's max_body");
        let ex = run(DecodingConfig::default(), ex);
        let r = ex.response.unwrap();
        assert!(
            !r.body.is_empty() && plain.starts_with(&r.body),
            "{name}: a prefix of the plain body ({} bytes)",
            r.body.len()
        );
        assert!(r.body_truncated);
        assert_eq!(
            r.truncated_reason.as_deref(),
            Some("body exceeded the filter's max_body")
        );
        assert_eq!(r.body_decoded_from.as_deref(), Some(name));
        assert_eq!(
            ex.warnings,
            [format!(
                "response body decoded from {name} is partial: the logged body was truncated"
            )]
        );
    }
}

#[test]
fn unknown_or_disabled_encodings_are_left_with_a_warning() {
    let ex = run(
        DecodingConfig::default(),
        exchange("zstd", b"\x28\xb5".to_vec()),
    );
    assert_eq!(ex.response.as_ref().unwrap().body, b"\x28\xb5");
    assert_eq!(
        ex.warnings,
        ["response body left as logged: content-encoding zstd is not decoded"]
    );
    let only_gzip = DecodingConfig {
        encodings: vec![Encoding::Gzip],
        ..Default::default()
    };
    let encoded = brotli(b"hello");
    let ex = run(only_gzip, exchange("br", encoded.clone()));
    assert_eq!(ex.response.unwrap().body, encoded);
    assert_eq!(ex.warnings.len(), 1);

    let off = DecodingConfig {
        enabled: false,
        ..Default::default()
    };
    let encoded = gzip(b"hello");
    let ex = run(off, exchange("gzip", encoded.clone()));
    assert_eq!(ex.response.unwrap().body, encoded);
    assert!(ex.warnings.is_empty());
}

#[test]
fn binary_decoded_bodies_stay_base64_and_empty_bodies_are_left_alone() {
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let ex = run(DecodingConfig::default(), exchange("gzip", gzip(&binary)));
    let v = serde_json::to_value(&ex).unwrap();
    assert_eq!(v["response"]["body_encoding"], "base64");
    assert_eq!(v["response"]["body_decoded_from"], "gzip");
    assert!(ex.response.unwrap().body == binary);

    let ex = run(DecodingConfig::default(), exchange("gzip", Vec::new()));
    assert_eq!(ex.response.unwrap().body_decoded_from, None);
    assert!(ex.warnings.is_empty());
}

#[test]
fn a_truncated_body_that_decodes_to_nothing_keeps_the_logged_bytes() {
    let encoded = gzip(&text(100));
    let mut ex = exchange("gzip", encoded[..6].to_vec());
    ex.response.as_mut().unwrap().truncate("cap");
    let ex = run(DecodingConfig::default(), ex);
    let r = ex.response.unwrap();
    assert_eq!(r.body, encoded[..6]);
    assert_eq!(r.body_decoded_from, None);
    assert!(ex.warnings[0].contains("corrupt gzip"), "{:?}", ex.warnings);
}
