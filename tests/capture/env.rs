//! The test's own network: two namespaces joined by a veth pair with private addresses, a real
//! HTTP server (hyper) inside namespace A that records what it received, and the built
//! `meshtap capture` running against A through setns.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub type Headers = BTreeMap<String, Vec<String>>;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `mcap-a-<pid>-<n>` and `mcap-b-<pid>-<n>` with a veth pair between them; deleted
/// on drop (also when a test fails half-way).
pub struct Namespaces {
    pub a: String,
    pub b: String,
    pub veth_a: String,
    veth_b: String,
    pub a_ip: Ipv4Addr,
    pub b_ip: Ipv4Addr,
}

impl Namespaces {
    pub fn create() -> Namespaces {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // A /30 out of 10.213.0.0/16 chosen by pid and test number, so parallel runs differ.
        let slot = (pid.wrapping_mul(16).wrapping_add(n)) % 16384;
        let base = [10u8, 213, (slot / 64) as u8, ((slot % 64) * 4) as u8];
        let ns = Namespaces {
            a: format!("mcap-a-{pid}-{n}"),
            b: format!("mcap-b-{pid}-{n}"),
            // Interface names are at most 15 bytes.
            veth_a: format!("mca{}{n}", pid % 1_000_000),
            veth_b: format!("mcb{}{n}", pid % 1_000_000),
            a_ip: Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1),
            b_ip: Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2),
        };
        ip(&["netns", "add", &ns.a]);
        ip(&["netns", "add", &ns.b]);
        ip(&[
            "link", "add", &ns.veth_a, "type", "veth", "peer", "name", &ns.veth_b,
        ]);
        ip(&["link", "set", &ns.veth_a, "netns", &ns.a]);
        ip(&["link", "set", &ns.veth_b, "netns", &ns.b]);
        for (netns, dev, addr) in [(&ns.a, &ns.veth_a, ns.a_ip), (&ns.b, &ns.veth_b, ns.b_ip)] {
            ip(&[
                "-n",
                netns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                dev,
            ]);
            ip(&["-n", netns, "link", "set", dev, "up"]);
            ip(&["-n", netns, "link", "set", "lo", "up"]);
        }
        ns
    }

    pub fn path(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
        // If the pair never moved into the namespaces it is still here.
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth_a])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth_b])
            .output();
    }
}

/// Runs `f` on a thread inside network namespace `name`, with a tokio runtime.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let netns = meshtap::netns::Netns::open(&Namespaces::path(name)).expect("open netns");
    let handle = meshtap::netns::spawn_in(netns, "test-netns", f).expect("spawn");
    std::thread::spawn(move || handle.join().expect("thread").expect("setns"))
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

pub fn header_map(map: &hyper::HeaderMap) -> Headers {
    let mut out = Headers::new();
    for (name, value) in map {
        out.entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out
}

/// A body sent in the given pieces with no length announced: chunked in HTTP/1.1, delimited by
/// the connection's end in HTTP/1.0.
pub struct Pieces(pub std::collections::VecDeque<Bytes>);

impl Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

pub fn pieces(parts: &[&[u8]]) -> Pieces {
    Pieces(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect())
}

/// A deterministic body of `n` bytes, binary included.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 7 + seed as usize) % 251) as u8)
        .collect()
}

pub const BIG: usize = 1 << 20;

/// The server's answers, by path.
async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = header_map(req.headers());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let mut echo = b"echo:".to_vec();
    echo.extend_from_slice(&body);
    seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        headers,
        body,
    });
    let response = match path.as_str() {
        "/chunked-resp" | "/close" => Response::builder()
            .header("content-type", "text/plain")
            .body(pieces(&[b"first ", b"second\r\n", b"third"]).boxed()),
        "/big" => Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(pattern(BIG, 3))).boxed()),
        _ => Response::builder()
            .status(if path.starts_with("/pipe/2") {
                201
            } else {
                200
            })
            .header("x-echo-path", path)
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(Full::new(Bytes::from(echo)).boxed()),
    };
    Ok(response.expect("valid response"))
}

/// The server in a namespace; stops on drop.
pub struct Server {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(netns: &str) -> Server {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = in_netns(netns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
                    .await
                    .expect("bind");
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let log = log.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |req| handle(req, log.clone()));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .pipeline_flush(true)
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server port");
        Server {
            port,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running `meshtap capture`: stdout lines are collected as they come.
pub struct Capture {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Capture {
    /// Starts `meshtap capture ARGS` and waits until it says it is listening.
    pub fn start(args: &[String]) -> Capture {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshtap"))
            .arg("capture")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run meshtap capture");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        let err = BufReader::new(child.stderr.take().unwrap());
        let l = lines.clone();
        let e = stderr.clone();
        let readers = vec![
            std::thread::spawn(move || {
                for line in out.lines().map_while(Result::ok) {
                    l.lock().unwrap().push(line);
                }
            }),
            std::thread::spawn(move || {
                for line in err.lines().map_while(Result::ok) {
                    if line.contains("listening on") {
                        let _ = ready_tx.send(());
                    }
                    let mut e = e.lock().unwrap();
                    e.push_str(&line);
                    e.push('\n');
                }
            }),
        ];
        let mut capture = Capture {
            child,
            lines,
            stderr,
            readers,
        };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = capture.child.kill();
            let _ = capture.child.wait();
            panic!(
                "meshtap capture did not start listening: {}",
                capture.stderr()
            );
        }
        capture
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `n` records were printed.
    pub fn wait_for_records(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.lines.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records after {timeout:?}; stderr: {}",
                self.lines.lock().unwrap().len(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then every record and the JSON summary (last stderr line).
    pub fn stop(self) -> (Vec<serde_json::Value>, serde_json::Value) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_for_exit(Duration::from_secs(30))
    }

    /// Waits for the capture to exit by itself; every record and the JSON summary.
    pub fn wait_for_exit(
        mut self,
        timeout: Duration,
    ) -> (Vec<serde_json::Value>, serde_json::Value) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("meshtap capture did not stop: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let stderr = self.stderr();
        assert!(
            status.success(),
            "meshtap capture failed ({status}): {stderr}"
        );
        let records = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l}: {e}")))
            .collect();
        let summary = stderr
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .unwrap_or_else(|| panic!("no JSON summary in: {stderr}"));
        (records, summary)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a pcap file's frames with their timestamps (ns).
pub fn pcap_frames(path: &Path) -> Vec<(i64, Vec<u8>)> {
    let file = std::fs::File::open(path).expect("pcap file");
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("pcap header");
    assert_eq!(reader.header().datalink, pcap_file::DataLink::ETHERNET);
    let mut out = Vec::new();
    while let Some(p) = reader.next_packet() {
        let p = p.expect("pcap packet");
        out.push((p.timestamp.as_nanos() as i64, p.data.into_owned()));
    }
    out
}
