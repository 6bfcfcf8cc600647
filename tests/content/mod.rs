//! Body decoding and redaction against a REAL Envoy (1.40) running meshtap's v2 Lua filter
//! (`deploy/envoyfilter-lua-v2.yaml`): an upstream of this module answers with gzip, br and
//! deflate encoded bodies and a decompression bomb, a client sends a login with an
//! `Authorization` header and a JSON password through Envoy, and `meshtap parse` with the
//! default configuration must write the plain bodies (with `body_decoded_from`), the bomb capped
//! at `decoding.max_decoded_bytes`, and no secret.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use crate::support::envoy::{Envoy, Layout};
use crate::support::manifests::{Filter, V2_MAX_BODY};
use crate::support::meshtap;

const PASSWORD: &str = "correct-horse-battery-staple-41";
const BEARER: &str = "mF_9.B5f-4.1JqM-live-bearer-token";
const ISSUED_TOKEN: &str = "issued-access-token-7f3a9c";
const COOKIE: &str = "s3ss10n-cookie-value-99";
/// The bomb: this many zero bytes, gzipped (about 10 KB on the wire).
const BOMB_BYTES: usize = 10 << 20;

/// The plain text the upstream encodes: JSON lines with non-ASCII text, a few KiB.
fn plain(what: &str) -> Vec<u8> {
    (0..120)
        .flat_map(|i| {
            format!("{{\"what\":\"{what}\",\"line\":{i},\"text\":\"héllo wörld, naïve café\"}}\n")
                .into_bytes()
        })
        .collect()
}

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

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

/// The upstream's answer to `path`: content-encoding (if any), content-type, body on the wire.
fn answer(path: &str) -> (Option<&'static str>, &'static str, Vec<u8>) {
    match path {
        "/gzip" => (Some("gzip"), "application/x-ndjson", gzip(&plain("gzip"))),
        "/br" => (Some("br"), "text/plain; charset=utf-8", brotli(&plain("br"))),
        "/deflate" => (Some("deflate"), "text/plain", zlib(&plain("deflate"))),
        "/bomb" => (Some("gzip"), "text/plain", gzip(&vec![0u8; BOMB_BYTES])),
        "/login" => (
            None,
            "application/json",
            format!("{{\"access_token\":\"{ISSUED_TOKEN}\",\"token_type\":\"Bearer\",\"expires_in\":3600}}")
                .into_bytes(),
        ),
        _ => (None, "text/plain", b"unknown\n".to_vec()),
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let _ = req.into_body().collect().await;
    let (encoding, content_type, body) = answer(&path);
    let mut response = Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("set-cookie", format!("sid={COOKIE}; Path=/; HttpOnly"));
    if let Some(encoding) = encoding {
        response = response.header("content-encoding", encoding);
    }
    Ok(response.body(Full::new(Bytes::from(body))).unwrap())
}

async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
    addr
}

/// One request through Envoy on a fresh connection: the response's encoding and raw body.
async fn send(
    envoy: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (Option<String>, Vec<u8>) {
    let stream = TcpStream::connect(envoy).await.expect("connect to envoy");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.example");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body.to_vec()))).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("{path} timed out"))
        .unwrap_or_else(|e| panic!("{path} failed: {e}"));
    assert_eq!(response.status(), 200, "{path}");
    let encoding = response
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (encoding, body.to_vec())
}

fn record<'a>(records: &'a [Value], path: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["request"]["path"] == path)
        .collect();
    assert_eq!(found.len(), 1, "records for {path}: {found:?}");
    found[0]
}

fn decode_gzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn encoded_bodies_through_real_envoy_are_decoded_and_secrets_redacted() {
    let dir = tempfile::Builder::new()
        .prefix("meshtap-content-")
        .tempdir()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(upstream());
    let lua = Filter::V2 {
        max_body: V2_MAX_BODY,
    }
    .lua();
    let envoy = Envoy::start(dir.path(), &lua, app, Layout::IstioText);

    let login_body = format!("{{\"user\":\"ann\",\"password\":\"{PASSWORD}\",\"remember\":true}}");
    let authorization = format!("Bearer {BEARER}");
    let cookie = format!("sid={COOKIE}; theme=dark");
    let received = rt.block_on(async {
        let mut received = Vec::new();
        for path in ["/gzip", "/br", "/deflate", "/bomb"] {
            received.push((path, send(envoy.listener, "GET", path, &[], b"").await));
        }
        let login = send(
            envoy.listener,
            "POST",
            "/login?client=web&access_token=query-secret-token-5",
            &[
                ("authorization", &authorization),
                ("cookie", &cookie),
                ("content-type", "application/json"),
            ],
            login_body.as_bytes(),
        )
        .await;
        received.push(("/login", login));
        received
    });
    let stderr = envoy.stop();
    rt.shutdown_timeout(Duration::from_secs(1));

    // Envoy passed the encoded bodies through untouched: the client got what the upstream sent.
    for (path, (encoding, body)) in &received {
        let (sent_encoding, _, sent_body) = answer(path);
        assert_eq!(encoding.as_deref(), sent_encoding, "{path}");
        assert!(*body == sent_body, "{path}: the client got another body");
    }

    let log = dir.path().join("istio-proxy.log");
    std::fs::write(&log, &stderr).unwrap();
    let parsed = meshtap::parse(&log);
    assert!(parsed.success, "meshtap parse failed: {}", parsed.stderr);
    assert_eq!(parsed.records.len(), 5, "{}", parsed.stderr);
    let text = parsed
        .records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");

    for (path, encoding) in [("/gzip", "gzip"), ("/br", "br"), ("/deflate", "deflate")] {
        let r = record(&parsed.records, path);
        let response = &r["response"];
        let body = meshtap::body(response).unwrap();
        let what = &path[1..];
        assert!(
            body == plain(what),
            "{path}: decoded body {}",
            meshtap::show(&body)
        );
        assert_eq!(response["body_decoded_from"], encoding, "{path}");
        assert_eq!(response["body_encoding"], "utf8", "{path}");
        assert_eq!(response["body_truncated"], false, "{path}");
        assert_eq!(
            response["body_size"],
            answer(path).2.len(),
            "{path}: body_size is the size on the wire"
        );
        assert_eq!(
            response["headers"]["content-encoding"][0], encoding,
            "{path}: headers stay as logged"
        );
        assert_eq!(r["warnings"], serde_json::json!([]), "{path}");
    }

    // The bomb: ~10 KB on the wire, 10 MiB decoded, cut at the default 4 MiB.
    let bomb = record(&parsed.records, "/bomb");
    let response = &bomb["response"];
    let body = meshtap::body(response).unwrap();
    assert_eq!(body.len(), 4 << 20);
    assert!(body.iter().all(|b| *b == 0));
    assert_eq!(response["body_truncated"], true);
    assert_eq!(response["body_decoded_from"], "gzip");
    assert!(
        response["truncated_reason"]
            .as_str()
            .unwrap()
            .contains("decoding.max_decoded_bytes (4194304)"),
        "{}",
        response["truncated_reason"]
    );
    assert_eq!(
        decode_gzip(&answer("/bomb").2).len(),
        BOMB_BYTES,
        "the bomb is what it claims"
    );

    // The login: every secret redacted, everything else kept.
    let login = record(&parsed.records, "/login?client=web&access_token=[REDACTED]");
    let request = &login["request"];
    assert_eq!(request["headers"]["authorization"][0], "Bearer [REDACTED]");
    assert_eq!(
        request["headers"]["cookie"][0],
        "sid=[REDACTED]; theme=[REDACTED]"
    );
    let body: Value = serde_json::from_slice(&meshtap::body(request).unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"user": "ann", "password": "[REDACTED]", "remember": true})
    );
    let response: Value =
        serde_json::from_slice(&meshtap::body(&login["response"]).unwrap()).unwrap();
    assert_eq!(response["access_token"], "[REDACTED]");
    assert_eq!(response["token_type"], "Bearer");
    assert_eq!(
        login["response"]["headers"]["set-cookie"][0],
        "sid=[REDACTED]; Path=/; HttpOnly"
    );
    assert_eq!(
        login["redacted"],
        serde_json::json!([
            "request.headers.authorization",
            "request.headers.cookie",
            "request.query.access_token",
            "request.body.$..password",
            "response.headers.set-cookie",
            "response.body.$..access_token",
        ])
    );
    for secret in [
        PASSWORD,
        BEARER,
        ISSUED_TOKEN,
        COOKIE,
        "query-secret-token-5",
    ] {
        assert!(!text.contains(secret), "a record holds {secret:?}");
        assert!(
            !parsed.stderr.contains(secret),
            "meshtap's stderr holds {secret:?}"
        );
    }
}
