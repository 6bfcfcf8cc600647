//! The OTLP sink against real receivers: an in-test OTLP/gRPC receiver built on
//! `opentelemetry-proto`'s `LogsServiceServer`, an in-test OTLP/HTTP receiver on hyper, and rotel
//! (a real OTLP receiver, installed by `scripts/install-test-deps.sh`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::mapping::AgentIdentity;
use super::transport::RpcStatus;
use super::*;
use crate::record::Exchange;
use crate::sink::{deliver_with_retry, Backoff};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// The PNG signature: bytes that are not UTF-8.
const PNG: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// Long enough for any test step; a step that takes longer has hung.
const STEP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Records

/// A lua-v2 exchange with everything: k8s identity, headers (repeated, pseudo, traceparent), a
/// query, UTF-8 request body, binary and truncated response body, trailers.
fn full_exchange(id: &str) -> Exchange {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "source": "lua-v2",
        "time": "2026-11-25T08:58:36.571Z",
        "k8s": {
            "namespace": "bookinfo",
            "pod": "productpage-v1-6b746f74dc-9stvs",
            "pod_uid": "0c1a2b3c-1111-2222-3333-444455556666",
            "container": "istio-proxy"
        },
        "log": {
            "file": "/var/log/pods/bookinfo_productpage-v1_0c1a/istio-proxy/0.log",
            "offset": 310,
            "thread": 23,
            "stream": "6b06a33c.7f84ce6506b0.1"
        },
        "request": {
            "method": "POST",
            "path": "/productpage/reviews?page=2&sort=asc",
            "authority": "productpage:9080",
            "headers": {
                ":authority": ["productpage:9080"],
                ":method": ["POST"],
                ":path": ["/productpage/reviews?page=2&sort=asc"],
                ":scheme": ["http"],
                "content-type": ["application/json"],
                "traceparent": [TRACEPARENT],
                "x-forwarded-for": ["10.0.0.1", "10.0.0.2"]
            },
            "trailers": {},
            "body": "{\"reviewer\":\"Zoë\",\"stars\":5}",
            "body_encoding": "utf8",
            "body_size": 29,
            "body_truncated": false,
            "start_time": "2026-11-25T08:58:36.571Z",
            "end_time": "2026-11-25T08:58:36.572Z",
            "ended": true
        },
        "response": {
            "status": 413,
            "headers": {":status": ["413"], "content-type": ["image/png"]},
            "trailers": {"grpc-status": ["0"]},
            "body": "iVBORw0KGgo=",
            "body_encoding": "base64",
            "body_size": 70000,
            "body_truncated": true,
            "truncated_reason": "the filter logged the first 8 of 70000 body bytes",
            "start_time": "2026-11-25T08:58:36.573Z",
            "end_time": "2026-11-25T08:58:36.574Z",
            "ended": true
        },
        "complete": true,
        "warnings": []
    }))
    .unwrap()
}

/// A lua-v1 body-only exchange: no headers, no response, no k8s path, a warning.
fn bare_exchange(id: &str) -> Exchange {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "source": "lua-v1",
        "time": "2026-11-25T08:58:37Z",
        "k8s": null,
        "log": {"file": "saved.log", "offset": 0},
        "request": {
            "headers": null,
            "body": "hello",
            "body_encoding": "utf8",
            "body_size": 5,
            "body_truncated": false,
            "ended": true
        },
        "response": null,
        "complete": false,
        "warnings": ["request and response were paired by the order of events"]
    }))
    .unwrap()
}

fn s(v: &str) -> Value {
    Value::StringValue(v.to_string())
}

fn int(v: i64) -> Value {
    Value::IntValue(v)
}

fn boolean(v: bool) -> Value {
    Value::BoolValue(v)
}

fn strings(values: &[&str]) -> Value {
    Value::ArrayValue(ArrayValue {
        values: values
            .iter()
            .map(|v| AnyValue { value: Some(s(v)) })
            .collect(),
    })
}

/// Attributes as a map; every key must be there once.
fn attributes(list: &[KeyValue]) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for kv in list {
        let value = kv.value.clone().and_then(|v| v.value).expect("a value");
        assert!(
            map.insert(kv.key.clone(), value).is_none(),
            "attribute {} twice",
            kv.key
        );
    }
    map
}

fn expected(pairs: Vec<(&str, Value)>) -> BTreeMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn node(name: &str) -> AgentIdentity {
    AgentIdentity {
        node_name: Some(name.to_string()),
    }
}

fn body_text(record: &LogRecord) -> &str {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(text)) => text,
        other => panic!("body is not a string: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// In-test receivers

/// What a receiver answers.
#[derive(Debug, Clone)]
enum Reply {
    Accept,
    Partial(i64, &'static str),
    Refuse(tonic::Code, &'static str),
}

/// One export request a receiver got, with its headers (gRPC metadata) and HTTP path.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    request: ExportLogsServiceRequest,
}

/// Shared by the gRPC and HTTP receivers: what they got, what they answer.
#[derive(Debug, Clone)]
struct Collector {
    seen: Arc<Mutex<Vec<Received>>>,
    reply: Arc<Mutex<Reply>>,
}

impl Collector {
    fn new() -> Self {
        Collector {
            seen: Arc::default(),
            reply: Arc::new(Mutex::new(Reply::Accept)),
        }
    }

    fn answer(&self, reply: Reply) {
        *lock(&self.reply) = reply;
    }

    /// Requests with records (the sink's startup check sends an empty one).
    fn requests(&self) -> Vec<Received> {
        lock(&self.seen)
            .iter()
            .filter(|r| !r.request.resource_logs.is_empty())
            .cloned()
            .collect()
    }

    fn records(&self) -> Vec<LogRecord> {
        self.requests()
            .iter()
            .flat_map(|r| &r.request.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| s.log_records.clone())
            .collect()
    }

    fn ids(&self) -> Vec<String> {
        self.records()
            .iter()
            .map(|r| match &attributes(&r.attributes)["meshtap.id"] {
                Value::StringValue(id) => id.clone(),
                other => panic!("meshtap.id {other:?}"),
            })
            .collect()
    }

    /// Records the request; the answer as configured.
    fn receive(&self, received: Received) -> Result<ExportLogsServiceResponse, tonic::Status> {
        lock(&self.seen).push(received);
        match lock(&self.reply).clone() {
            Reply::Accept => Ok(ExportLogsServiceResponse::default()),
            Reply::Partial(rejected, message) => Ok(ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: message.to_string(),
                }),
            }),
            Reply::Refuse(code, message) => Err(tonic::Status::new(code, message)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let received = Received {
            path: "/opentelemetry.proto.collector.logs.v1.LogsService/Export".to_string(),
            headers: request.metadata().clone().into_headers(),
            request: request.into_inner(),
        };
        self.receive(received).map(tonic::Response::new)
    }
}

/// A running in-test receiver; [`Running::stop`] closes its listener and every connection.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// HTTP only: closes every open connection, the listener staying open.
    hang_up: Option<tokio::sync::mpsc::Sender<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(STEP, &mut self.task)
            .await
            .expect("receiver stopped")
            .unwrap();
    }

    fn endpoint(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }
}

/// A listener on 127.0.0.1, on a free port (`0`) or a given one (a restarted receiver).
async fn listen(port: u16) -> TcpListener {
    let started = Instant::now();
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(e) if started.elapsed() > STEP => panic!("cannot bind 127.0.0.1:{port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// OTLP/gRPC on `port`, optionally with TLS.
async fn start_grpc(collector: &Collector, port: u16, tls: Option<ServerTlsConfig>) -> Running {
    let listener = listen(port).await;
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).unwrap();
    }
    let router = builder.add_service(LogsServiceServer::new(collector.clone()));
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Running {
        addr,
        stop: Some(stop),
        task,
        hang_up: None,
    }
}

/// OTLP/HTTP (protobuf) on `port`: `POST /v1/logs`, answers as a collector does.
async fn start_http(collector: &Collector, port: u16) -> Running {
    let listener = listen(port).await;
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (hang_up, mut hung_up) = tokio::sync::mpsc::channel::<()>(1);
    let collector = collector.clone();
    let task = tokio::spawn(async move {
        // Dropped on stop: aborts every connection, as a crashed collector would.
        let mut connections = JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted.unwrap(),
                Some(()) = hung_up.recv() => {
                    connections.abort_all();
                    continue;
                }
                _ = &mut stopped => return,
            };
            let collector = collector.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| {
                    let collector = collector.clone();
                    async move { Ok::<_, Infallible>(http_export(&collector, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Running {
        addr,
        stop: Some(stop),
        task,
        hang_up: Some(hang_up),
    }
}

async fn http_export(
    collector: &Collector,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let respond = |status: u16, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if parts.uri.path() != "/v1/logs" {
        return hyper::Response::builder()
            .status(404)
            .header(CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(b"404 page not found\n")))
            .unwrap();
    }
    let body = body.collect().await.unwrap().to_bytes();
    let request = ExportLogsServiceRequest::decode(body).unwrap();
    let received = Received {
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        request,
    };
    match collector.receive(received) {
        Ok(response) => respond(200, response.encode_to_vec()),
        Err(status) => {
            let http_status = match status.code() {
                tonic::Code::Unauthenticated => 401,
                tonic::Code::InvalidArgument => 400,
                _ => 503,
            };
            let rpc = RpcStatus {
                code: status.code() as i32,
                message: status.message().to_string(),
            };
            respond(http_status, rpc.encode_to_vec())
        }
    }
}

async fn start(protocol: OtlpProtocol, collector: &Collector, port: u16) -> Running {
    match protocol {
        OtlpProtocol::Grpc => start_grpc(collector, port, None).await,
        OtlpProtocol::HttpProtobuf => start_http(collector, port).await,
    }
}

fn config(protocol: OtlpProtocol, running: &Running) -> OtlpSinkConfig {
    OtlpSinkConfig {
        protocol,
        timeout_ms: 2000,
        ..OtlpSinkConfig::new(running.endpoint("http"))
    }
}

async fn connect(config: OtlpSinkConfig) -> OtlpSink {
    tokio::time::timeout(STEP, OtlpSink::connect_as(config, node("node-a")))
        .await
        .expect("connect returned")
        .unwrap()
}

async fn deliver(sink: &mut OtlpSink, batch: &[Exchange]) -> Result<(), SinkError> {
    tokio::time::timeout(STEP, sink.deliver(batch))
        .await
        .expect("deliver returned")
}

/// A port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = listen(0).await;
    listener.local_addr().unwrap().port()
}

const BOTH: [OtlpProtocol; 2] = [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf];

// ---------------------------------------------------------------------------------------------
// 1. The mapping, exactly, over both protocols

#[tokio::test]
async fn every_attribute_body_and_trace_id_arrive_exactly() {
    let collector = Collector::new();
    let running = start_grpc(&collector, 0, None).await;
    let mut config = config(OtlpProtocol::Grpc, &running);
    config
        .headers
        .insert("authorization".into(), "Bearer t0ken".into());
    config
        .resource_attributes
        .insert("k8s.cluster.name".into(), "prod-eu".into());
    let mut sink = connect(config).await;
    let before = mapping::now_unix_nano();
    let batch = [full_exchange("id-full"), bare_exchange("id-bare")];
    deliver(&mut sink, &batch).await.unwrap();
    let after = mapping::now_unix_nano();

    let requests = collector.requests();
    assert_eq!(requests.len(), 1, "one request per batch");
    let received = &requests[0];
    assert_eq!(received.headers["authorization"], "Bearer t0ken");
    let ua = received.headers["user-agent"].to_str().unwrap();
    assert!(ua.starts_with(&format!("meshtap/{VERSION}")), "{ua}");
    let [resource_logs] = received.request.resource_logs.as_slice() else {
        panic!("one ResourceLogs");
    };
    let resource = resource_logs.resource.as_ref().unwrap();
    assert_eq!(
        attributes(&resource.attributes),
        expected(vec![
            ("service.name", s("meshtap")),
            ("service.version", s(VERSION)),
            ("host.name", s("node-a")),
            ("k8s.node.name", s("node-a")),
            ("k8s.cluster.name", s("prod-eu")),
        ])
    );
    let [scope_logs] = resource_logs.scope_logs.as_slice() else {
        panic!("one ScopeLogs");
    };
    let scope = scope_logs.scope.as_ref().unwrap();
    assert_eq!(
        (scope.name.as_str(), scope.version.as_str()),
        ("meshtap", VERSION)
    );
    let [full, bare] = scope_logs.log_records.as_slice() else {
        panic!("two records, in order");
    };

    assert_eq!(full.time_unix_nano, 1_795_597_116_571_000_000);
    assert!((before..=after).contains(&full.observed_time_unix_nano));
    assert_eq!(full.severity_number, 9);
    assert_eq!(full.severity_text, "INFO");
    assert_eq!(full.event_name, "meshtap.exchange");
    assert_eq!(
        body_text(full),
        "POST /productpage/reviews?page=2&sort=asc 413"
    );
    assert_eq!(hex(&full.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&full.span_id), "b7ad6b7169203331");
    assert_eq!(full.flags, 1);
    assert_eq!(full.dropped_attributes_count, 0);
    assert_eq!(
        attributes(&full.attributes),
        expected(vec![
            ("http.request.method", s("POST")),
            ("url.path", s("/productpage/reviews")),
            ("url.query", s("page=2&sort=asc")),
            ("url.scheme", s("http")),
            ("server.address", s("productpage")),
            ("server.port", int(9080)),
            ("http.response.status_code", int(413)),
            (
                "http.request.header.content-type",
                strings(&["application/json"])
            ),
            ("http.request.header.traceparent", strings(&[TRACEPARENT])),
            (
                "http.request.header.x-forwarded-for",
                strings(&["10.0.0.1", "10.0.0.2"])
            ),
            ("http.response.header.content-type", strings(&["image/png"])),
            ("k8s.namespace.name", s("bookinfo")),
            ("k8s.pod.name", s("productpage-v1-6b746f74dc-9stvs")),
            ("k8s.pod.uid", s("0c1a2b3c-1111-2222-3333-444455556666")),
            ("k8s.container.name", s("istio-proxy")),
            ("k8s.node.name", s("node-a")),
            ("meshtap.id", s("id-full")),
            ("meshtap.source", s("lua-v2")),
            ("meshtap.complete", boolean(true)),
            ("meshtap.warnings", strings(&[])),
            (
                "meshtap.log.file",
                s("/var/log/pods/bookinfo_productpage-v1_0c1a/istio-proxy/0.log"),
            ),
            ("meshtap.log.offset", int(310)),
            ("meshtap.log.thread", int(23)),
            ("meshtap.log.stream", s("6b06a33c.7f84ce6506b0.1")),
            (
                "meshtap.request.body",
                s("{\"reviewer\":\"Zoë\",\"stars\":5}")
            ),
            ("meshtap.request.body_encoding", s("utf8")),
            ("meshtap.request.body_size", int(29)),
            ("meshtap.request.body_truncated", boolean(false)),
            ("meshtap.request.start_time", s("2026-11-25T08:58:36.571Z")),
            ("meshtap.request.end_time", s("2026-11-25T08:58:36.572Z")),
            ("meshtap.request.ended", boolean(true)),
            ("meshtap.response.trailer.grpc-status", strings(&["0"])),
            ("meshtap.response.body", Value::BytesValue(PNG.to_vec())),
            ("meshtap.response.body_encoding", s("base64")),
            ("meshtap.response.body_size", int(70000)),
            ("meshtap.response.body_truncated", boolean(true)),
            (
                "meshtap.response.truncated_reason",
                s("the filter logged the first 8 of 70000 body bytes"),
            ),
            ("meshtap.response.start_time", s("2026-11-25T08:58:36.573Z")),
            ("meshtap.response.end_time", s("2026-11-25T08:58:36.574Z")),
            ("meshtap.response.ended", boolean(true)),
        ])
    );

    assert_eq!(bare.time_unix_nano, 1_795_597_117_000_000_000);
    assert_eq!(bare.observed_time_unix_nano, full.observed_time_unix_nano);
    assert_eq!(
        (bare.severity_number, bare.severity_text.as_str()),
        (13, "WARN")
    );
    assert_eq!(body_text(bare), "- - -");
    assert!(bare.trace_id.is_empty() && bare.span_id.is_empty() && bare.flags == 0);
    assert_eq!(
        attributes(&bare.attributes),
        expected(vec![
            ("k8s.node.name", s("node-a")),
            ("meshtap.id", s("id-bare")),
            ("meshtap.source", s("lua-v1")),
            ("meshtap.complete", boolean(false)),
            (
                "meshtap.warnings",
                strings(&["request and response were paired by the order of events"]),
            ),
            ("meshtap.log.file", s("saved.log")),
            ("meshtap.log.offset", int(0)),
            ("meshtap.request.body", s("hello")),
            ("meshtap.request.body_encoding", s("utf8")),
            ("meshtap.request.body_size", int(5)),
            ("meshtap.request.body_truncated", boolean(false)),
            ("meshtap.request.ended", boolean(true)),
        ])
    );
    running.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn http_protobuf_sends_the_same_request_as_grpc() {
    let (grpc, http) = (Collector::new(), Collector::new());
    let grpc_running = start_grpc(&grpc, 0, None).await;
    let http_running = start_http(&http, 0).await;
    let batch = [full_exchange("a"), bare_exchange("b"), full_exchange("c")];
    for (protocol, running) in [
        (OtlpProtocol::Grpc, &grpc_running),
        (OtlpProtocol::HttpProtobuf, &http_running),
    ] {
        let mut config = config(protocol, running);
        config
            .headers
            .insert("x-scope-orgid".into(), "tenant-1".into());
        let mut sink = connect(config).await;
        deliver(&mut sink, &batch).await.unwrap();
    }
    let (mut via_grpc, mut via_http) = (grpc.requests(), http.requests());
    assert_eq!((via_grpc.len(), via_http.len()), (1, 1));
    let received = &via_http[0];
    assert_eq!(received.path, "/v1/logs");
    assert_eq!(received.headers[CONTENT_TYPE], "application/x-protobuf");
    assert_eq!(received.headers["x-scope-orgid"], "tenant-1");
    assert_eq!(received.headers["host"], http_running.addr.to_string());
    for request in [&mut via_grpc[0].request, &mut via_http[0].request] {
        for record in &mut request.resource_logs[0].scope_logs[0].log_records {
            record.observed_time_unix_nano = 0;
        }
    }
    assert_eq!(via_grpc[0].request, via_http[0].request);
    assert_eq!(http.ids(), ["a", "b", "c"]);
    // The startup check was an empty export, on each protocol.
    for collector in [&grpc, &http] {
        let seen = lock(&collector.seen);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].request, ExportLogsServiceRequest::default());
    }
    grpc_running.stop().await;
    http_running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. rotel, a real OTLP receiver

/// A rotel process, killed when dropped.
struct Rotel {
    child: std::process::Child,
    stdout: PathBuf,
    grpc: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `.cache/venv/lib/python3.*/site-packages/rotel/rotel-agent`, installed if missing.
fn rotel_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let find = || {
        std::fs::read_dir(root.join(".cache/venv/lib"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("site-packages/rotel/rotel-agent"))
            .find(|p| p.is_file())
    };
    if let Some(found) = find() {
        return found;
    }
    let status = std::process::Command::new(root.join("scripts/install-test-deps.sh"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run scripts/install-test-deps.sh");
    assert!(status.success(), "scripts/install-test-deps.sh failed");
    find().expect("rotel-agent installed by scripts/install-test-deps.sh")
}

async fn free_addr() -> SocketAddr {
    listen(0).await.local_addr().unwrap()
}

async fn start_rotel() -> Rotel {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_addr().await, free_addr().await);
    let stdout = dir.path().join("stdout.log");
    let child = std::process::Command::new(rotel_binary())
        .args(["start", "--otlp-grpc-endpoint", &grpc.to_string()])
        .args(["--otlp-http-endpoint", &http.to_string()])
        .args(["--exporter", "blackhole"])
        .args(["--debug-log", "logs", "--debug-log-verbosity", "detailed"])
        .arg("--pid-file")
        .arg(dir.path().join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.path().join("rotel.log"))
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("start rotel-agent");
    let rotel = Rotel {
        child,
        stdout,
        grpc,
        http,
        _dir: dir,
    };
    let started = Instant::now();
    for addr in [grpc, http] {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(started.elapsed() < STEP, "rotel did not open {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    rotel
}

#[tokio::test]
async fn rotel_receives_every_record_over_grpc_and_http() {
    let started = Instant::now();
    let rotel = start_rotel().await;
    let ready = started.elapsed();
    let ids = [
        "rotel-grpc-1",
        "rotel-grpc-2",
        "rotel-grpc-3",
        "rotel-http-1",
        "rotel-http-2",
    ];
    for (protocol, addr, batch) in [
        (OtlpProtocol::Grpc, rotel.grpc, &ids[..3]),
        (OtlpProtocol::HttpProtobuf, rotel.http, &ids[3..]),
    ] {
        let config = OtlpSinkConfig {
            protocol,
            ..OtlpSinkConfig::new(format!("http://{addr}"))
        };
        let mut sink = connect(config).await;
        let batch: Vec<_> = batch.iter().map(|id| full_exchange(id)).collect();
        deliver(&mut sink, &batch).await.unwrap();
    }
    // rotel prints what it received (its `--debug-log`) on stdout.
    let printed = loop {
        let text = std::fs::read_to_string(&rotel.stdout).unwrap();
        if ids.iter().all(|id| text.contains(id)) || started.elapsed() > STEP {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let count = |needle: &str| printed.matches(needle).count();
    for id in ids {
        assert_eq!(
            count(&format!("meshtap.id: Str({id})")),
            1,
            "{id}\n{printed}"
        );
    }
    assert_eq!(count("LogRecord #"), 5, "{printed}");
    assert_eq!(count("InstrumentationScope meshtap"), 2, "{printed}");
    assert_eq!(count("service.name: Str(meshtap)"), 2, "{printed}");
    assert_eq!(
        count("Body: Str(POST /productpage/reviews?page=2&sort=asc 413)"),
        5
    );
    assert_eq!(
        count("Trace ID       : 0af7651916cd43dd8448eb211c80319c"),
        5
    );
    assert_eq!(count("Span ID        : b7ad6b7169203331"), 5);
    assert_eq!(count("SeverityNumber: SEVERITY_NUMBER_INFO(9)"), 5);
    assert_eq!(count("Timestamp: 1795597116571000000"), 5);
    assert_eq!(count("http.response.status_code: Int(413)"), 5, "{printed}");
    assert_eq!(
        count("k8s.pod.name: Str(productpage-v1-6b746f74dc-9stvs)"),
        5
    );
    assert_eq!(
        count("meshtap.response.body: Bytes([137, 80, 78, 71, 13, 10, 26, 10])"),
        5
    );
    eprintln!(
        "rotel: ready in {ready:?}, 2 exports checked in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Outage: the receiver goes away and comes back on the same port

#[tokio::test]
async fn a_collector_outage_fails_within_the_timeout_and_recovers() {
    for protocol in BOTH {
        let collector = Collector::new();
        let running = start(protocol, &collector, 0).await;
        let port = running.addr.port();
        let config = config(protocol, &running);
        let endpoint = config.endpoint.clone();
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut sink = connect(config).await;
        deliver(&mut sink, &[full_exchange("before")])
            .await
            .unwrap();

        running.stop().await;
        let during = [full_exchange("during-1"), bare_exchange("during-2")];
        let t = Instant::now();
        let e = deliver(&mut sink, &during).await.unwrap_err();
        let failed_in = t.elapsed();
        assert!(
            failed_in <= timeout + Duration::from_millis(500),
            "{failed_in:?}"
        );
        let message = e.to_string();
        assert!(
            message.starts_with(&format!("otlp: export of 2 records to {endpoint} failed: ")),
            "{message}"
        );

        let running = start(protocol, &collector, port).await;
        let t = Instant::now();
        deliver(&mut sink, &during).await.unwrap();
        let recovered_in = t.elapsed();
        assert_eq!(collector.ids(), ["before", "during-1", "during-2"]);
        eprintln!(
            "{}: failed in {failed_in:?} while down ({message}); delivered in {recovered_in:?} \
             after the restart",
            protocol.as_str()
        );
        running.stop().await;
    }
}

/// A collector restarted between two batches (a rollout) costs no failed delivery.
#[tokio::test]
async fn a_collector_restart_between_batches_is_not_a_failure() {
    for protocol in BOTH {
        let collector = Collector::new();
        let mut running = start(protocol, &collector, 0).await;
        let port = running.addr.port();
        let mut sink = connect(config(protocol, &running)).await;
        for i in 0..3 {
            deliver(&mut sink, &[bare_exchange(&format!("batch-{i}"))])
                .await
                .unwrap();
            running.stop().await;
            running = start(protocol, &collector, port).await;
        }
        deliver(&mut sink, &[bare_exchange("batch-3")])
            .await
            .unwrap();
        assert_eq!(
            collector.ids(),
            ["batch-0", "batch-1", "batch-2", "batch-3"]
        );
        running.stop().await;
    }
}

/// The agent's own retry loop rides out an outage: nothing is lost, nothing is doubled.
#[tokio::test]
async fn the_agents_retry_loop_delivers_after_the_outage() {
    for protocol in BOTH {
        let collector = Collector::new();
        let running = start(protocol, &collector, 0).await;
        let port = running.addr.port();
        let mut sink = connect(config(protocol, &running)).await;
        running.stop().await;

        let batch = [full_exchange("r1"), full_exchange("r2")];
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let (failed_tx, failed_rx) = oneshot::channel();
        let mut failed_tx = Some(failed_tx);
        let mut failures = 0;
        let restart = async {
            failed_rx.await.unwrap();
            start(protocol, &collector, port).await
        };
        let mut backoff =
            Backoff::try_new(Duration::from_millis(50), Duration::from_millis(200)).unwrap();
        let retry = deliver_with_retry(&mut sink, &batch, &mut backoff, &shutdown, |_| {
            failures += 1;
            if let Some(tx) = failed_tx.take() {
                let _ = tx.send(());
            }
        });
        let (delivered, running) =
            tokio::time::timeout(STEP, async { tokio::join!(retry, restart) })
                .await
                .expect("delivered after the restart");
        delivered.unwrap();
        assert!(failures >= 1);
        assert_eq!(collector.ids(), ["r1", "r2"]);
        running.stop().await;
    }
}

/// Collectors close idle keep-alive connections; the next export opens a new one, without failing.
#[tokio::test]
async fn an_idle_http_connection_closed_by_the_collector_is_not_a_failure() {
    let collector = Collector::new();
    let running = start_http(&collector, 0).await;
    let mut sink = connect(config(OtlpProtocol::HttpProtobuf, &running)).await;
    for i in 0..5 {
        running.hang_up.as_ref().unwrap().send(()).await.unwrap();
        if i % 2 == 0 {
            // Give the client time to see the close (otherwise the request finds it).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        deliver(&mut sink, &[bare_exchange(&format!("after-close-{i}"))])
            .await
            .unwrap();
    }
    assert_eq!(collector.ids().len(), 5);
    running.stop().await;
}

#[tokio::test]
async fn a_silent_collector_is_a_timeout() {
    // Accepts connections and never answers.
    let listener = listen(0).await;
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    for protocol in BOTH {
        let config = OtlpSinkConfig {
            protocol,
            timeout_ms: 300,
            ..OtlpSinkConfig::new(format!("http://{addr}"))
        };
        let t = Instant::now();
        let e = OtlpSink::connect_as(config, AgentIdentity::default())
            .await
            .unwrap_err()
            .to_string();
        let took = t.elapsed();
        assert!(
            (Duration::from_millis(300)..Duration::from_millis(1300)).contains(&took),
            "{took:?}"
        );
        let prefix = format!(
            "otlp: startup check of the OTLP collector at http://{addr} ({}) failed: ",
            protocol.as_str()
        );
        assert!(e.starts_with(&prefix), "{e}");
        eprintln!("silent collector, {}: {took:?}: {e}", protocol.as_str());
    }
    hold.abort();
}

// ---------------------------------------------------------------------------------------------
// The collector's answers

#[tokio::test]
async fn rejections_are_failures_with_the_collectors_message() {
    for protocol in BOTH {
        let collector = Collector::new();
        let running = start(protocol, &collector, 0).await;
        let mut sink = connect(config(protocol, &running)).await;
        let batch = [full_exchange("a"), full_exchange("b"), bare_exchange("c")];

        collector.answer(Reply::Partial(2, "attribute limit exceeded"));
        let e = deliver(&mut sink, &batch).await.unwrap_err().to_string();
        assert!(
            e.ends_with("the collector rejected 2 of 3 log records: attribute limit exceeded"),
            "{e}"
        );
        collector.answer(Reply::Partial(
            0,
            "records older than 7 days were kept anyway",
        ));
        deliver(&mut sink, &batch).await.unwrap();
        collector.answer(Reply::Refuse(tonic::Code::Unauthenticated, "token expired"));
        let e = deliver(&mut sink, &batch).await.unwrap_err().to_string();
        let detail = match protocol {
            OtlpProtocol::Grpc => "Unauthenticated: token expired",
            OtlpProtocol::HttpProtobuf => "HTTP 401 Unauthorized: token expired",
        };
        assert!(e.ends_with(detail), "{e}");
        collector.answer(Reply::Accept);
        deliver(&mut sink, &batch).await.unwrap();
        assert_eq!(collector.requests().len(), 4);
        running.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Request size

#[tokio::test]
async fn large_batches_are_split_and_oversized_bodies_cut() {
    const LIMIT: usize = 64 << 10;
    for protocol in BOTH {
        let collector = Collector::new();
        let running = start(protocol, &collector, 0).await;
        let mut sink = connect(OtlpSinkConfig {
            max_request_bytes: LIMIT,
            ..config(protocol, &running)
        })
        .await;

        // Ten records of ~20 KB: several requests, each within the limit, records in order.
        let batch: Vec<_> = (0..10)
            .map(|i| {
                let mut ex = full_exchange(&format!("r{i}"));
                let request = ex.request.as_mut().unwrap();
                request.body = vec![b'x'; 20_000];
                ex
            })
            .collect();
        deliver(&mut sink, &batch).await.unwrap();
        let requests = collector.requests();
        assert!(requests.len() >= 4, "{} requests", requests.len());
        for r in &requests {
            assert!(
                r.request.encoded_len() <= LIMIT,
                "{}",
                r.request.encoded_len()
            );
        }
        let ids: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
        assert_eq!(collector.ids(), ids);
        // A failed request names the part of the batch it carried.
        collector.answer(Reply::Refuse(tonic::Code::Unavailable, "overloaded"));
        let e = deliver(&mut sink, &batch).await.unwrap_err().to_string();
        let first = collector.requests().pop().unwrap();
        let n = first.request.resource_logs[0].scope_logs[0]
            .log_records
            .len();
        assert!(
            e.starts_with(&format!(
                "otlp: export of records 1-{n} of a batch of 10 to "
            )),
            "{e}"
        );
        assert!(e.ends_with("overloaded"), "{e}");
        collector.answer(Reply::Accept);
        lock(&collector.seen).pop();

        let kept = collector.records();
        assert!(kept.iter().all(|r| {
            attributes(&r.attributes)["meshtap.request.body"] == s(&"x".repeat(20_000))
        }));

        // One record above the limit: its bodies are cut (on a character boundary) and flagged.
        let mut big = full_exchange("big");
        let text = "é".repeat(100_000); // 200 000 bytes
        let request = big.request.as_mut().unwrap();
        request.body = text.clone().into_bytes();
        request.body_size = 200_000;
        big.response.as_mut().unwrap().body = vec![0xff; 50_000];
        deliver(&mut sink, &[big]).await.unwrap();
        let last = collector.requests().pop().unwrap();
        assert!(last.request.encoded_len() <= LIMIT);
        let record = &last.request.resource_logs[0].scope_logs[0].log_records[0];
        let a = attributes(&record.attributes);
        let Value::StringValue(body) = &a["meshtap.request.body"] else {
            panic!("a string body");
        };
        assert!(
            body.len() > 20_000 && text.starts_with(body.as_str()),
            "{}",
            body.len()
        );
        let Value::BytesValue(response_body) = &a["meshtap.response.body"] else {
            panic!("a bytes body");
        };
        assert!(response_body.len() >= 20_000, "{}", response_body.len());
        assert_eq!(a["meshtap.request.body_size"], int(200_000));
        assert_eq!(a["meshtap.request.body_truncated"], boolean(true));
        assert_eq!(
            a["meshtap.request.truncated_reason"],
            s(&format!(
                "cut to {} of 200000 logged bytes to fit the OTLP sink's max_request_bytes (65536)",
                body.len()
            ))
        );
        let Value::StringValue(reason) = &a["meshtap.response.truncated_reason"] else {
            panic!("a reason");
        };
        assert!(
            reason.starts_with("the filter logged the first 8 of 70000 body bytes; then cut to "),
            "{reason}"
        );
        running.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Config and startup errors

#[tokio::test]
async fn an_unreachable_endpoint_at_connect_is_a_clear_error() {
    let port = closed_port().await;
    for protocol in BOTH {
        let endpoint = format!("http://127.0.0.1:{port}");
        let config = OtlpSinkConfig {
            protocol,
            timeout_ms: 1000,
            ..OtlpSinkConfig::new(endpoint.clone())
        };
        let t = Instant::now();
        let e = OtlpSink::connect(config).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "otlp: startup check of the OTLP collector at {endpoint} ({}) failed: ",
                protocol.as_str()
            )),
            "{e}"
        );
        assert!(e.contains("Connection refused"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        eprintln!("{e}");
    }

    // Something that is not an OTLP receiver.
    let collector = Collector::new();
    let running = start_http(&collector, 0).await;
    let e = OtlpSink::connect(OtlpSinkConfig {
        protocol: OtlpProtocol::HttpProtobuf,
        ..OtlpSinkConfig::new(format!("{}/otlp/v1/logs", running.endpoint("http")))
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.ends_with("failed: HTTP 404 Not Found: 404 page not found"),
        "{e}"
    );
    let e = OtlpSink::connect(OtlpSinkConfig {
        timeout_ms: 1000,
        ..OtlpSinkConfig::new(running.endpoint("http"))
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!("at {} (grpc) failed: ", running.endpoint("http"))),
        "{e}"
    );
    eprintln!("gRPC to an HTTP/1 server: {e}");
    running.stop().await;

    // An invalid config is refused before any I/O, with the field named.
    let e = OtlpSink::connect(OtlpSinkConfig {
        timeout_ms: 0,
        ..OtlpSinkConfig::new(format!("http://127.0.0.1:{port}"))
    })
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(e, "otlp: sink.timeout_ms must be greater than 0");
}

#[test]
fn the_example_config_file_is_a_valid_agent_config() {
    let text = include_str!("../../../config/meshtap-otlp.yaml");
    // The `sink:` section, as the lead's `SinkConfig` will read it ...
    let config = super::config::tests::parse(text).unwrap();
    assert_eq!(config.endpoint, "http://otel-collector.observability:4317");
    assert_eq!(config.protocol, OtlpProtocol::Grpc);
    assert_eq!(config.timeout_ms, 10_000);
    // ... and the rest of the file, as the agent reads it today.
    let mut rest = String::new();
    let mut in_sink = false;
    for line in text.lines() {
        if !line.starts_with([' ', '#']) && !line.is_empty() {
            in_sink = line.starts_with("sink:");
        }
        if !in_sink {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    crate::config::Config::from_yaml(&rest).unwrap();
}

#[test]
fn every_attribute_is_in_the_docs() {
    let doc = include_str!("../../../docs/otlp.md");
    let record = mapping::log_record(&full_exchange("x"), &node("n"), 0, None);
    let bare = mapping::log_record(&bare_exchange("y"), &node("n"), 0, None);
    let sink_config = OtlpSinkConfig {
        resource_attributes: BTreeMap::new(),
        ..OtlpSinkConfig::new("http://c:4317")
    };
    let resource = mapping::resource(&sink_config, &node("n"));
    let keys = record
        .attributes
        .iter()
        .chain(&bare.attributes)
        .chain(&resource.attributes)
        .map(|kv| {
            // Header and trailer names are data: the docs write `<name>`.
            match kv
                .key
                .match_indices(".header.")
                .chain(kv.key.match_indices(".trailer."))
                .next()
            {
                Some((i, part)) => format!("{}<name>", &kv.key[..i + part.len()]),
                None => kv.key.clone(),
            }
        });
    for key in keys {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/otlp.md does not list `{key}`"
        );
    }
    for field in [
        "time_unix_nano",
        "observed_time_unix_nano",
        "severity_number",
        "event_name",
        "trace_id",
        "span_id",
        "flags",
    ] {
        assert!(
            doc.contains(&format!("`{field}`")),
            "docs/otlp.md lacks `{field}`"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// TLS

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("agent/sink/otlp/testdata")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(testdata(name)).unwrap()
}

#[tokio::test]
async fn mutual_tls_with_the_collectors_ca() {
    let collector = Collector::new();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.pem"), read("server.key")))
        .client_ca_root(Certificate::from_pem(read("ca.pem")));
    let running = start_grpc(&collector, 0, Some(tls)).await;
    let port = running.addr.port();
    let tls = OtlpTlsConfig {
        ca_file: Some(testdata("ca.pem")),
        cert_file: Some(testdata("client.pem")),
        key_file: Some(testdata("client.key")),
        server_name: None,
    };
    let with = |endpoint: String, tls: OtlpTlsConfig| OtlpSinkConfig {
        tls: Some(tls),
        timeout_ms: 2000,
        ..OtlpSinkConfig::new(endpoint)
    };

    let mut sink = connect(with(format!("https://localhost:{port}"), tls.clone())).await;
    deliver(&mut sink, &[full_exchange("over-tls")])
        .await
        .unwrap();
    assert_eq!(collector.ids(), ["over-tls"]);

    let failures = [
        (
            "no client certificate",
            with(
                format!("https://localhost:{port}"),
                OtlpTlsConfig {
                    cert_file: None,
                    key_file: None,
                    ..tls.clone()
                },
            ),
            "CertificateRequired",
        ),
        (
            "the system's roots do not know the test CA",
            with(
                format!("https://localhost:{port}"),
                OtlpTlsConfig {
                    ca_file: None,
                    ..tls.clone()
                },
            ),
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            "a server name the certificate does not carry",
            with(
                format!("https://127.0.0.1:{port}"),
                OtlpTlsConfig {
                    server_name: Some("collector.example".into()),
                    ..tls.clone()
                },
            ),
            "certificate not valid for name \"collector.example\"",
        ),
        (
            "a CA file that is not there",
            with(
                format!("https://localhost:{port}"),
                OtlpTlsConfig {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..tls.clone()
                },
            ),
            "cannot read sink.tls.ca_file /nonexistent/ca.pem: No such file or directory",
        ),
    ];
    for (case, config, expected) in failures {
        let e = OtlpSink::connect(config).await.unwrap_err().to_string();
        assert!(e.contains(expected), "{case}: {e}");
        eprintln!("{case}: {e}");
    }
    // The IP address is in the certificate too; server_name may name the DNS one.
    let mut sink = connect(with(
        format!("https://127.0.0.1:{port}"),
        OtlpTlsConfig {
            server_name: Some("localhost".into()),
            ..tls
        },
    ))
    .await;
    deliver(&mut sink, &[bare_exchange("by-ip")]).await.unwrap();
    assert_eq!(collector.ids(), ["over-tls", "by-ip"]);
    running.stop().await;
}
