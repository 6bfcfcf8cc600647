//! The upstream app: an HTTP/1.1 server (hyper) that records every request exactly as Envoy
//! forwarded it, and the response it sent back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::scenario::response_for;

/// A header list in wire order; repeated names appear once per value.
pub type HeaderList = Vec<(String, String)>;

/// The response the upstream sent.
#[derive(Debug, Clone)]
pub struct SentResponse {
    pub status: u16,
    /// The headers the app set (hyper adds `date` and `content-length` on its own).
    pub headers: HeaderList,
    pub body: Vec<u8>,
}

/// One request as the upstream received it, and what it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    /// From the `x-test-id` header.
    pub test_id: Option<u32>,
    pub method: String,
    pub path: String,
    /// Every header as received (after Envoy added e.g. `x-request-id`, `x-forwarded-proto`,
    /// `x-envoy-expected-rq-timeout-ms`).
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub response: SentResponse,
}

/// The running app; it stops with the tokio runtime that started it.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, log.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub fn header_list(headers: &hyper::HeaderMap) -> HeaderList {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn handle(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => format!("<body error: {e}>").into_bytes(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let (status, headers, response_body) = response_for(&path, &body);
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        response = response.header(name, value);
    }
    let response = response
        .body(Full::new(Bytes::from(response_body.clone())))
        .unwrap();
    let test_id = parts
        .headers
        .get("x-test-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    log.lock().unwrap().push(Seen {
        test_id,
        method: parts.method.to_string(),
        path,
        headers: header_list(&parts.headers),
        body,
        response: SentResponse {
            status,
            headers,
            body: response_body,
        },
    });
    Ok(response)
}
