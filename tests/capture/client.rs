//! The client: what it sent is in the server's log; what it received is recorded here, per
//! request path. Keep-alive traffic goes through hyper's client; pipelining, `Expect:
//! 100-continue` and a close-delimited HTTP/1.0 response are written by hand on raw sockets.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

use super::env::{header_map, pattern, pieces, Headers, BIG};

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Got {
    /// The request path it answered.
    pub path: String,
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// Keep-alive: several requests on one connection, bodies sized, chunked and large.
pub async fn keep_alive(addr: SocketAddr) -> Vec<Got> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let driver = tokio::spawn(conn);
    let host = addr.to_string();
    let mut got = Vec::new();
    let requests: Vec<
        Request<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>,
    > = vec![
        Request::get("/ka/1?x=%20y")
            .header("host", &host)
            .header("x-multi", "one")
            .header("x-multi", "two")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        Request::post("/ka/2")
            .header("host", &host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static("{\"name\":\"Zoë\"}".as_bytes())).boxed())
            .unwrap(),
        Request::post("/ka/chunked-upload")
            .header("host", &host)
            .body(pieces(&[b"abc", b"defgh\r\n", b"ij"]).boxed())
            .unwrap(),
        Request::get("/chunked-resp")
            .header("host", &host)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        Request::get("/big")
            .header("host", &host)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        Request::put("/ka/upload-big")
            .header("host", &host)
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(pattern(BIG, 11))).boxed())
            .unwrap(),
    ];
    for req in requests {
        let path = req.uri().path_and_query().unwrap().to_string();
        let resp = send.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let headers = header_map(resp.headers());
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        got.push(Got {
            path,
            status,
            headers,
            body,
        });
    }
    drop(send);
    let _ = driver.await;
    got
}

/// Reads one final response (skipping 1xx) from `stream`, with `buf` holding bytes already read.
/// Bodies must be sized, or run to the end of the connection when `to_close`.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>, path: &str, to_close: bool) -> Got {
    loop {
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut storage);
        if let httparse::Status::Complete(len) = resp.parse(buf).expect("valid response head") {
            let status = resp.code.unwrap();
            let mut headers = Headers::new();
            for h in resp.headers.iter() {
                headers
                    .entry(h.name.to_ascii_lowercase())
                    .or_default()
                    .push(String::from_utf8(h.value.to_vec()).unwrap());
            }
            if (100..200).contains(&status) {
                buf.drain(..len);
                continue;
            }
            let body_len = if to_close {
                assert!(
                    !headers.contains_key("content-length")
                        && !headers.contains_key("transfer-encoding"),
                    "expected a close-delimited response: {headers:?}"
                );
                None
            } else {
                Some(headers["content-length"][0].parse::<usize>().unwrap())
            };
            loop {
                let have = buf.len() - len;
                if body_len.is_some_and(|n| have >= n) {
                    break;
                }
                let mut chunk = [0u8; 65536];
                let n = stream.read(&mut chunk).expect("read");
                if n == 0 {
                    assert!(body_len.is_none(), "connection closed mid-body");
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let end = len + body_len.unwrap_or(buf.len() - len);
            let body = buf[len..end].to_vec();
            buf.drain(..end);
            return Got {
                path: path.to_string(),
                status,
                headers,
                body,
            };
        }
        let mut chunk = [0u8; 65536];
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Three requests written in one go, then their three responses.
pub fn pipelined(addr: SocketAddr) -> Vec<Got> {
    let mut s = connect(addr);
    s.write_all(
        b"GET /pipe/1 HTTP/1.1\r\nHost: svc\r\n\r\n\
POST /pipe/2 HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc\
GET /pipe/3 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    ["/pipe/1", "/pipe/2", "/pipe/3"]
        .iter()
        .map(|p| read_response(&mut s, &mut buf, p, false))
        .collect()
}

/// `Expect: 100-continue`: the body goes out only after the interim response.
pub fn expect_continue(addr: SocketAddr) -> Got {
    let mut s = connect(addr);
    s.write_all(
        b"PUT /continue HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    s.write_all(b"12345").unwrap();
    read_response(&mut s, &mut buf, "/continue", false)
}

/// An HTTP/1.0 request whose response has no length: it ends when the server closes.
pub fn close_delimited(addr: SocketAddr) -> Got {
    let mut s = connect(addr);
    s.write_all(b"GET /close HTTP/1.0\r\nHost: svc\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf, "/close", true)
}

/// Everything above, in order, from the calling thread's namespace.
pub fn all(addr: SocketAddr) -> Vec<Got> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut got = rt.block_on(keep_alive(addr));
    got.extend(pipelined(addr));
    got.push(expect_continue(addr));
    got.push(close_delimited(addr));
    got
}
