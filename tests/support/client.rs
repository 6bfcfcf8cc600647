//! The client: sends the [`scenario::plan`](super::scenario::plan) through Envoy and records what
//! came back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use super::scenario::{Mode, Spec, AUTHORITY};
use super::upstream::{header_list, HeaderList};

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub test_id: u32,
    pub status: u16,
    pub headers: HeaderList,
    pub body: Vec<u8>,
}

/// Sends every exchange of `plan` to Envoy at `envoy`: sequential ones one after the other, the
/// concurrent ones all at once (each on its own connection), in plan order.
pub async fn drive(envoy: SocketAddr, plan: &[Spec]) -> Vec<Received> {
    let mut received = Vec::new();
    let mut i = 0;
    while i < plan.len() {
        match &plan[i].mode {
            Mode::Sequential => received.push(send(envoy, &plan[i], None).await),
            Mode::Pieces { pieces, chunked } => {
                received.push(send_pieces(envoy, &plan[i], pieces, *chunked).await)
            }
            Mode::Concurrent => {
                let burst: Vec<Spec> = plan[i..]
                    .iter()
                    .take_while(|s| s.mode == Mode::Concurrent)
                    .cloned()
                    .collect();
                let barrier = Arc::new(Barrier::new(burst.len()));
                let tasks: Vec<_> = burst
                    .iter()
                    .cloned()
                    .map(|spec| {
                        let barrier = barrier.clone();
                        tokio::spawn(async move { send(envoy, &spec, Some(barrier)).await })
                    })
                    .collect();
                for task in tasks {
                    received.push(task.await.expect("concurrent exchange task"));
                }
                i += burst.len();
                continue;
            }
        }
        i += 1;
    }
    received
}

/// One exchange with hyper's HTTP/1.1 client on a fresh connection. With a `barrier`, waits for
/// the other concurrent exchanges to be connected before sending.
async fn send(envoy: SocketAddr, spec: &Spec, barrier: Option<Arc<Barrier>>) -> Received {
    let stream = TcpStream::connect(envoy).await.expect("connect to envoy");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(spec.method)
        .uri(&spec.path)
        .header("host", AUTHORITY);
    for (name, value) in &spec.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(spec.body.clone())))
        .unwrap();
    if let Some(barrier) = barrier {
        barrier.wait().await;
    }
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("exchange {} timed out", spec.id))
        .unwrap_or_else(|e| panic!("exchange {} failed: {e}", spec.id));
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .expect("response body")
        .to_bytes()
        .to_vec();
    Received {
        test_id: spec.id,
        status: parts.status.as_u16(),
        headers: header_list(&parts.headers),
        body,
    }
}

/// An upload written piece by piece over a raw socket, with a pause between the pieces so that
/// they reach Envoy separately (several body chunks in the Lua filter). `chunked` frames the body
/// with chunked transfer-encoding (one HTTP chunk per piece), else with a content-length.
async fn send_pieces(
    envoy: SocketAddr,
    spec: &Spec,
    pieces: &[Vec<u8>],
    chunked: bool,
) -> Received {
    let mut stream = TcpStream::connect(envoy).await.expect("connect to envoy");
    stream.set_nodelay(true).unwrap();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {AUTHORITY}\r\n",
        spec.method, spec.path
    );
    for (name, value) in &spec.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
    } else {
        let length: usize = pieces.iter().map(Vec::len).sum();
        head.push_str(&format!("content-length: {length}\r\n\r\n"));
    }
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    for piece in pieces {
        // Not a readiness wait: the pause makes each piece arrive on its own.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut chunk = Vec::new();
        if chunked {
            chunk.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        }
        chunk.extend_from_slice(piece);
        if chunked {
            chunk.extend_from_slice(b"\r\n");
        }
        stream.write_all(&chunk).await.unwrap();
        stream.flush().await.unwrap();
    }
    if chunked {
        tokio::time::sleep(Duration::from_millis(60)).await;
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        stream.flush().await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), read_response(&mut stream, spec.id))
        .await
        .unwrap_or_else(|_| panic!("exchange {} timed out", spec.id))
}

/// A minimal HTTP/1.1 response reader (content-length or chunked).
async fn read_response(stream: &mut TcpStream, test_id: u32) -> Received {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        read_more(stream, &mut buf).await;
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ascii response head");
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: HeaderList = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("header line");
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(length) = header("content-length") {
        let length: usize = length.parse().unwrap();
        while rest.len() < length {
            read_more(stream, &mut rest).await;
        }
        rest.truncate(length);
        rest
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
                    break pos;
                }
                read_more(stream, &mut rest).await;
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size =
                usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
            while rest.len() < line_end + 2 + size + 2 {
                read_more(stream, &mut rest).await;
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        panic!("response to exchange {test_id} has neither content-length nor chunked encoding");
    };
    Received {
        test_id,
        status,
        headers,
        body,
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16384];
    let n = stream.read(&mut chunk).await.expect("read response");
    assert!(n > 0, "connection closed before the response was complete");
    buf.extend_from_slice(&chunk[..n]);
}
