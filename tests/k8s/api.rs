//! A stand-in for kube-apiserver (none can run here): a local HTTP/1.1 server that answers the
//! requests the agent makes with responses shaped as the real API shapes them: `PodList`s with a
//! `resourceVersion`, watch streams of newline-delimited `WatchEvent`s (chunked, as the API
//! streams them), `ERROR` events carrying a `410 Gone` `Status`, and ReplicaSets as
//! `PartialObjectMetadata`. Each list and watch request takes the next scripted answer; every
//! request is recorded for the test to check.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use serde_json::{json, Value};

/// One answer to a watch request.
pub enum Watch {
    /// These events, then the stream ends (the API's watch timeout, or a restart).
    Events(Vec<Value>),
    /// A `410 Gone` error event (the resource version is too old), then the end.
    Gone,
    /// These events, then the stream stays open: [`FakeApi::push`] sends more.
    Live(Vec<Value>),
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: HashMap<String, String>,
    pub accept: String,
    pub authorization: String,
}

impl Seen {
    pub fn is_watch(&self) -> bool {
        self.query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
    }
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    lists: VecDeque<Value>,
    watches: VecDeque<Watch>,
    replica_sets: HashMap<(String, String), Value>,
    live: Option<tokio::sync::mpsc::UnboundedSender<Bytes>>,
}

/// The running server; dropping it stops it.
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

type Body = BoxBody<Bytes, Infallible>;

impl FakeApi {
    /// Serves `lists` (in turn; the last one again once they run out), `watches` (in turn; a
    /// quiet open stream once they run out) and `replica_sets`.
    pub fn start(lists: Vec<Value>, watches: Vec<Watch>, replica_sets: Vec<Value>) -> FakeApi {
        let state = Arc::new(Mutex::new(State {
            lists: lists.into(),
            watches: watches.into(),
            replica_sets: replica_sets
                .into_iter()
                .map(|rs| {
                    let m = &rs["metadata"];
                    let key = (
                        m["namespace"].as_str().unwrap().to_string(),
                        m["name"].as_str().unwrap().to_string(),
                    );
                    (key, rs)
                })
                .collect(),
            ..State::default()
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Whether a [`Watch::Live`] (or the quiet stream after the script) is open.
    pub fn live(&self) -> bool {
        self.state.lock().unwrap().live.is_some()
    }

    /// Sends an event on the open live watch.
    pub fn push(&self, event: Value) {
        let state = self.state.lock().unwrap();
        let live = state.live.as_ref().expect("a live watch is open");
        live.send(line(&event)).expect("the agent holds the watch");
    }

    /// A kubeconfig for this server, as `kubectl` would write it (plain HTTP, a bearer token).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n    namespace: default\n\
             current-context: fake\nusers:\n- name: agent\n  user:\n    token: test-token\n",
            self.addr
        )
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn line(event: &Value) -> Bytes {
    let mut text = serde_json::to_vec(event).unwrap();
    text.push(b'\n');
    Bytes::from(text)
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed())
        .unwrap()
}

/// A `Status` as the API returns it for errors.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(state: &Mutex<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let seen = Seen {
        path: req.uri().path().to_string(),
        query,
        accept: header("accept"),
        authorization: header("authorization"),
    };
    let mut state = state.lock().unwrap();
    state.seen.push(seen.clone());
    if req.method() != hyper::Method::GET {
        return json_response(405, &status(405, "MethodNotAllowed", "only GET here"));
    }
    if seen.path == "/api/v1/pods" {
        if !seen.is_watch() {
            let list = if state.lists.len() > 1 {
                state.lists.pop_front()
            } else {
                state.lists.front().cloned()
            };
            return match list {
                Some(list) => json_response(200, &list),
                None => json_response(500, &status(500, "InternalError", "no list scripted")),
            };
        }
        let (events, end) = match state.watches.pop_front() {
            Some(Watch::Events(events)) => (events, true),
            Some(Watch::Gone) => (
                vec![json!({"type": "ERROR", "object": status(410, "Expired",
                    "too old resource version: 1005 (1900)")})],
                true,
            ),
            Some(Watch::Live(events)) => (events, false),
            None => (Vec::new(), false),
        };
        let first: Vec<Result<Frame<Bytes>, Infallible>> =
            events.iter().map(|e| Ok(Frame::data(line(e)))).collect();
        let head = futures::stream::iter(first);
        let body: Body = if end {
            BodyExt::boxed(StreamBody::new(head))
        } else {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
            state.live = Some(tx);
            let tail = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
            });
            BodyExt::boxed(StreamBody::new(futures::StreamExt::chain(head, tail)))
        };
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
    }
    if let Some(rest) = seen.path.strip_prefix("/apis/apps/v1/namespaces/") {
        if let Some((ns, name)) = rest.split_once("/replicasets/") {
            return match state.replica_sets.get(&(ns.to_string(), name.to_string())) {
                Some(rs) => json_response(200, rs),
                None => json_response(
                    404,
                    &status(
                        404,
                        "NotFound",
                        &format!("replicasets.apps \"{name}\" not found"),
                    ),
                ),
            };
        }
    }
    json_response(
        404,
        &status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    )
}
