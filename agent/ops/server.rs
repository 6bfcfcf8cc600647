//! The ops HTTP endpoint: `GET /metrics` for Prometheus, `GET /healthz` for the liveness probe and
//! `GET /readyz` for the readiness probe. HTTP/1.1 only, one task per connection.
//!
//! Liveness only says the process still answers: restarting the agent fixes neither a failing sink
//! nor a slow log. Readiness says whether the agent is doing its job (started, sink delivering);
//! the `503` body says why not, for `kubectl describe pod`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::metrics::{self, Metrics};

/// What the endpoint serves: the metrics, and whether the agent is ready.
#[derive(Debug)]
pub struct OpsState {
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    not_ready_reason: Mutex<Option<String>>,
}

impl OpsState {
    /// Not ready until [`OpsState::set_ready`]`(true)`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        OpsState {
            metrics,
            ready: AtomicBool::new(false),
            not_ready_reason: Mutex::new(None),
        }
    }

    /// The metrics served at `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Marks the agent started (`true`, once its sink opened and its tailers run) or stopping.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Sets (`Some`, e.g. "sink stdout is failing") or clears (`None`) a reason the agent is not
    /// ready even though started.
    pub fn set_not_ready_reason(&self, reason: Option<String>) {
        *self.reason() = reason;
    }

    /// Ready: started, and no reason not to be.
    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// `Ok` when ready, else the one-line reason.
    fn readiness(&self) -> Result<(), String> {
        if let Some(reason) = self.reason().as_ref() {
            return Err(reason.lines().next().unwrap_or_default().to_owned());
        }
        if !self.ready.load(Ordering::Relaxed) {
            return Err("starting or shutting down".into());
        }
        Ok(())
    }

    fn reason(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.not_ready_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long a client may take to send a request's headers: a stuck scraper must not pin a task.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests in flight may take to finish after shutdown; then their connections are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the endpoint on `listener` until `shutdown` turns `true` (or its sender is dropped):
/// then stops accepting, closes idle keep-alive connections, lets requests in flight finish (for
/// up to [`DRAIN_TIMEOUT`]), and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<OpsState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // E.g. out of file descriptors: pause instead of spinning on the error.
                    tracing::warn!(error = %error, "Could not accept an ops connection.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let state = Arc::clone(&state);
        let mut shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&state, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped(&mut shutdown) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(error = %error, "Ops connection ended with an error.");
            }
        });
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
        tracing::debug!("Cutting ops connections still open after shutdown.");
        connections.abort_all();
    }
}

/// Resolves once `shutdown` is `true` or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn respond(state: &OpsState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => match state.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::ops::metrics::skip;

    const TIMEOUT: Duration = Duration::from_secs(10);

    struct Server {
        addr: SocketAddr,
        state: Arc<OpsState>,
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OpsState::new(Arc::new(Metrics::new())));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(serve(listener, Arc::clone(&state), shutdown));
        Server {
            addr,
            state,
            stop,
            task,
        }
    }

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    /// One HTTP/1.1 request on a new connection, read to the server's close.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request =
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.unwrap();
            reply
        };
        let reply = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .expect("reply");
        let (head, body) = reply.split_once("\r\n\r\n").expect("a whole response");
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        Reply {
            status: status_line.split(' ').nth(1).unwrap().parse().unwrap(),
            headers: headers.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> Reply {
        request(addr, "GET", path).await
    }

    async fn stop(server: Server) {
        server.stop.send(true).unwrap();
        tokio::time::timeout(TIMEOUT, server.task)
            .await
            .expect("the server stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn healthz_answers_while_running() {
        let server = start().await;
        let reply = get(server.addr, "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
        stop(server).await;
    }

    #[tokio::test]
    async fn readyz_follows_the_state() {
        let server = start().await;
        let reply = get(server.addr, "/readyz").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (503, "starting or shutting down\n")
        );

        server.state.set_ready(true);
        assert!(server.state.ready());
        let reply = get(server.addr, "/readyz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ready\n"));

        server
            .state
            .set_not_ready_reason(Some("sink stdout is failing\nsecond line".into()));
        assert!(!server.state.ready());
        let reply = get(server.addr, "/readyz").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (503, "sink stdout is failing\n")
        );

        server.state.set_not_ready_reason(None);
        assert_eq!(get(server.addr, "/readyz").await.status, 200);
        stop(server).await;
    }

    #[tokio::test]
    async fn metrics_are_served_and_move() {
        let server = start().await;
        let reply = get(server.addr, "/metrics").await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.headers.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{}",
            reply.headers
        );
        assert!(reply.body.contains("# TYPE meshtap_skipped counter\n"));
        assert!(reply
            .body
            .contains("meshtap_skipped_total{reason=\"expired\"} 0\n"));
        assert!(reply.body.ends_with("# EOF\n"));

        server.state.metrics().skipped(skip::EXPIRED, 4);
        let reply = get(server.addr, "/metrics").await;
        assert!(reply
            .body
            .contains("meshtap_skipped_total{reason=\"expired\"} 4\n"));
        stop(server).await;
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_refused() {
        let server = start().await;
        assert_eq!(get(server.addr, "/").await.status, 404);
        assert_eq!(get(server.addr, "/metrics/x").await.status, 404);
        let reply = request(server.addr, "POST", "/metrics").await;
        assert_eq!(reply.status, 405);
        assert!(
            reply.headers.contains("allow: get, head"),
            "{}",
            reply.headers
        );
        let reply = request(server.addr, "HEAD", "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, ""));
        stop(server).await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_stops_accepting() {
        let server = start().await;
        let addr = server.addr;
        // A keep-alive connection, idle after one request, like a scraper's.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = vec![0; 1024];
        let n = tokio::time::timeout(TIMEOUT, idle.read(&mut first))
            .await
            .unwrap()
            .unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));

        stop(server).await;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(TIMEOUT, idle.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the idle connection was closed");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
