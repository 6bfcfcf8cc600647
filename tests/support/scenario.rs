//! The traffic that every end-to-end run sends through Envoy, and the bodies the upstream answers
//! with. Every exchange has a test id, sent as the `x-test-id` header AND embedded near the start of
//! every body (as [`token`]) so that a record can be matched to its exchange even when the filter
//! logs no headers (the seed's body-only filter) or only a prefix of a body.

/// The `:authority` every request carries (a realistic in-mesh host).
pub const AUTHORITY: &str = "productpage.default.svc.cluster.local:9080";

/// Size of the "big" bodies: over the v2 filter's default 64 KiB cap, over every runtime's line limit.
pub const BIG_BODY: usize = 200 * 1024;

/// How many exchanges run concurrently (each on its own connection).
pub const CONCURRENT: u32 = 20;

/// The marker embedded in every body of exchange `id`.
pub fn token(id: u32) -> String {
    format!("@@T{id:05}@@")
}

/// Every test id whose [`token`] occurs in `bytes`, in order of appearance.
pub fn find_tokens(bytes: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut i = 0;
    while i + 10 <= bytes.len() {
        let w = &bytes[i..i + 10];
        if &w[..3] == b"@@T" && &w[8..] == b"@@" && w[3..8].iter().all(u8::is_ascii_digit) {
            let digits = std::str::from_utf8(&w[3..8]).expect("ascii digits");
            ids.push(digits.parse().expect("five digits"));
            i += 10;
        } else {
            i += 1;
        }
    }
    ids
}

/// What the upstream app answers, chosen by the second-to-last path segment: `/<any>/<kind>/<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JSON body (and two `set-cookie` headers on the response).
    Json,
    /// Multi-line HTML (blank line included).
    Html,
    /// Non-ASCII UTF-8 text, with a TAB (the Istio text layout's field separator) and quotes.
    Utf8,
    /// Binary bytes: 0x00, 0xff, lone and paired CR/LF, every byte value.
    Bin,
    /// [`BIG_BODY`] bytes of multi-line ASCII.
    Big,
    /// The response body is the request body.
    Echo,
    /// A 404 with a short body.
    Missing,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Html => "html",
            Kind::Utf8 => "utf8",
            Kind::Bin => "bin",
            Kind::Big => "big",
            Kind::Echo => "echo",
            Kind::Missing => "missing",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "json" => Kind::Json,
            "html" => Kind::Html,
            "utf8" => Kind::Utf8,
            "bin" => Kind::Bin,
            "big" => Kind::Big,
            "echo" => Kind::Echo,
            "missing" => Kind::Missing,
            _ => return None,
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            Kind::Json => "application/json",
            Kind::Html => "text/html; charset=utf-8",
            Kind::Utf8 | Kind::Missing => "text/plain; charset=utf-8",
            Kind::Bin => "application/octet-stream",
            Kind::Big | Kind::Echo => "text/plain",
        }
    }
}

/// `(kind, id)` of a path `/<any>/<kind>/<id>`.
pub fn parse_path(path: &str) -> Option<(Kind, u32)> {
    let mut segments = path.rsplit('/');
    let id = segments.next()?.parse().ok()?;
    let kind = Kind::parse(segments.next()?)?;
    Some((kind, id))
}

/// Deterministic pseudo-random ASCII lines: `<line number> <letters>\n`, exactly `size` bytes,
/// starting with the exchange's token. Every 16th line is 40 000 letters long (minified-JSON
/// style), longer than every runtime's line limit, so a v1 filter's raw log line gets split.
fn big_text(id: u32, seed: u64, size: usize) -> Vec<u8> {
    let mut out = format!("{} big body {}\n", token(id), seed).into_bytes();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(id);
    let mut line = 0u32;
    while out.len() < size {
        line += 1;
        out.extend_from_slice(format!("{line:06} ").as_bytes());
        let letters = if line % 16 == 3 { 40_000 } else { 89 };
        for _ in 0..letters {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.push(b'a' + (state % 26) as u8);
        }
        out.push(b'\n');
    }
    out.truncate(size);
    out
}

fn binary(id: u32, salt: u8) -> Vec<u8> {
    let mut out = token(id).into_bytes();
    out.extend_from_slice(b" bin ");
    out.extend_from_slice(&[
        0x00, 0xff, 0xfe, b'\n', b'\r', b'\n', 0x01, 0x1b, 0x7f, 0x80,
    ]);
    out.extend_from_slice(&[
        0xc3, 0x28, b'"', b'\\', b'\t', b'\r', b'x', b'\n', b'\n', salt,
    ]);
    out.extend((0..=255u8).map(|b| b ^ salt));
    out.extend_from_slice(b"\r\nend\xff");
    out
}

/// Text bodies end their lines with `"\n"`, or `"\r\n"` when `crlf` (only for the v2 filter: under
/// containerd a v1 body line's CR is lost, see the module docs of `real_envoy`).
fn html(id: u32, what: &str, crlf: bool) -> Vec<u8> {
    let text = format!(
        "<!DOCTYPE html>\n<!-- {} {what} -->\n<html>\n  <head><title>Simple Bookstore App</title></head>\n\n  <body>\n    <p class=\"lead\">Hello &amp; welcome, exchange {id}</p>\n  </body>\n</html>\n",
        token(id)
    );
    if crlf {
        text.replace('\n', "\r\n").into_bytes()
    } else {
        text.into_bytes()
    }
}

fn utf8(id: u32, what: &str) -> Vec<u8> {
    format!(
        "{} {what}: héllo wörld, naïve café, 漢字かな交じり, emoji 😀🚀🇫🇷, tab\there, \"quoted\" and \\backslash\\ {{braces}}\nsecond line ünïcödé\n",
        token(id)
    )
    .into_bytes()
}

fn json(id: u32, what: &str) -> Vec<u8> {
    format!(
        "{{\"test_id\":\"{}\",\"what\":\"{what}\",\"user\":\"jason\",\"items\":[1,2,3],\"nested\":{{\"quote\":\"say \\\"hi\\\"\",\"path\":\"C:\\\\tmp\",\"unicode\":\"\\u00e9\"}}}}",
        token(id)
    )
    .into_bytes()
}

/// A request body of the given kind for exchange `id`.
pub fn request_body(kind: Kind, id: u32, crlf: bool) -> Vec<u8> {
    match kind {
        Kind::Json => json(id, "request"),
        Kind::Html => html(id, "request", crlf),
        Kind::Utf8 | Kind::Echo | Kind::Missing => utf8(id, "request"),
        Kind::Bin => binary(id, 0x00),
        Kind::Big => big_text(id, 1, BIG_BODY),
    }
}

/// The upstream app's response to `path` with `request_body`: status, headers it sets, body.
pub fn response_for(path: &str, request_body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let Some((kind, id)) = parse_path(path) else {
        return (
            400,
            vec![("content-type".into(), "text/plain".into())],
            b"unknown path\n".to_vec(),
        );
    };
    let mut headers = vec![
        ("content-type".to_string(), kind.content_type().to_string()),
        ("x-upstream".to_string(), "meshtap-test-app".to_string()),
    ];
    let (status, body) = match kind {
        Kind::Json => {
            headers.push(("set-cookie".into(), format!("session={id}; Path=/")));
            headers.push(("set-cookie".into(), "theme=dark; HttpOnly".into()));
            (200, json(id, "response"))
        }
        Kind::Html => (200, html(id, "response", false)),
        Kind::Utf8 => (200, utf8(id, "response")),
        Kind::Bin => (200, binary(id, 0x5a)),
        Kind::Big => (200, big_text(id, 2, BIG_BODY)),
        Kind::Echo => (200, request_body.to_vec()),
        Kind::Missing => (404, format!("not found {}\n", token(id)).into_bytes()),
    };
    (status, headers, body)
}

/// How an exchange is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Alone on its connection, after the previous exchange finished.
    Sequential,
    /// The body written piece by piece with a short pause between the pieces, so that Envoy sees
    /// several body chunks: with chunked transfer-encoding, or with a content-length.
    Pieces { pieces: Vec<Vec<u8>>, chunked: bool },
    /// Together with the other concurrent exchanges, each on its own connection.
    Concurrent,
}

/// One exchange the client sends.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: u32,
    pub method: &'static str,
    pub path: String,
    /// Request headers besides `host` (lower-case names; repeated names allowed).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub mode: Mode,
}

impl Spec {
    fn new(id: u32, method: &'static str, prefix: &str, kind: Kind, body: Option<Vec<u8>>) -> Spec {
        let mut headers = vec![
            ("x-test-id".to_string(), id.to_string()),
            ("user-agent".to_string(), "meshtap-e2e/1.0".to_string()),
            ("accept".to_string(), "*/*".to_string()),
        ];
        if body.is_some() {
            headers.push(("content-type".into(), kind.content_type().into()));
        }
        Spec {
            id,
            method,
            path: format!("/{prefix}/{}/{id}", kind.as_str()),
            headers,
            body: body.unwrap_or_default(),
            mode: Mode::Sequential,
        }
    }

    /// The request body as sent (pieces joined).
    pub fn sent_body(&self) -> Vec<u8> {
        match &self.mode {
            Mode::Pieces { pieces, .. } => pieces.concat(),
            _ => self.body.clone(),
        }
    }

    /// Whether the seed's headers variant logs this exchange (it only logs paths containing
    /// `productpage`).
    pub fn has_productpage(&self) -> bool {
        self.path.contains("productpage")
    }
}

/// Ids of the exchanges sent alone with single-write small bodies: a v1 record for them must be
/// exact and unflagged, except for the binary one (5), whose CR LF and invalid UTF-8 some runtimes
/// cannot carry: exact or flagged.
pub const SEQUENTIAL_SMALL: [u32; 8] = [1, 2, 3, 4, 5, 8, 9, 40];
/// The big-body exchange: 200 KiB each way; the request is written in two pieces (64 KiB, pause,
/// the rest) so that it reaches the filter in several chunks.
pub const BIG_ID: u32 = 6;
/// The multi-piece chunked upload.
pub const PIECES_ID: u32 = 7;
/// The exchange whose path has no `productpage` (the v1 headers variant must not log it).
pub const NO_PRODUCTPAGE_ID: u32 = 8;

/// The whole traffic of one run. `crlf` selects CRLF line ends in the HTML request body.
pub fn plan(crlf: bool) -> Vec<Spec> {
    let mut specs = Vec::new();

    let mut get = Spec::new(1, "GET", "productpage", Kind::Json, None);
    get.headers.push(("x-multi".into(), "one".into()));
    get.headers.push(("x-multi".into(), "two".into()));
    get.headers
        .push(("x-note".into(), "a, \"b\"; c=d:e".into()));
    specs.push(get);

    specs.push(Spec::new(
        2,
        "POST",
        "productpage",
        Kind::Json,
        Some(request_body(Kind::Json, 2, crlf)),
    ));
    specs.push(Spec::new(
        3,
        "POST",
        "productpage",
        Kind::Html,
        Some(request_body(Kind::Html, 3, crlf)),
    ));
    specs.push(Spec::new(
        4,
        "POST",
        "productpage",
        Kind::Utf8,
        Some(request_body(Kind::Utf8, 4, crlf)),
    ));
    specs.push(Spec::new(
        5,
        "POST",
        "productpage",
        Kind::Bin,
        Some(request_body(Kind::Bin, 5, crlf)),
    ));
    let mut big = Spec::new(
        BIG_ID,
        "POST",
        "productpage",
        Kind::Big,
        Some(request_body(Kind::Big, BIG_ID, crlf)),
    );
    let (head, tail) = big.body.split_at(64 * 1024);
    big.mode = Mode::Pieces {
        pieces: vec![head.to_vec(), tail.to_vec()],
        chunked: false,
    };
    specs.push(big);

    let mut pieces = Spec::new(
        PIECES_ID,
        "POST",
        "productpage",
        Kind::Echo,
        Some(Vec::new()),
    );
    let first = format!("{} chunked upload, piece 1 of 3\n", token(PIECES_ID));
    pieces.mode = Mode::Pieces {
        pieces: vec![
            first.into_bytes(),
            b"piece 2 of 3: more text that arrives later\nwith a second line\n".to_vec(),
            b"piece 3 of 3: the end, no newline".to_vec(),
        ],
        chunked: true,
    };
    specs.push(pieces);

    specs.push(Spec::new(
        NO_PRODUCTPAGE_ID,
        "GET",
        "reviews",
        Kind::Json,
        None,
    ));
    specs.push(Spec::new(9, "GET", "productpage", Kind::Missing, None));

    let kinds = [Kind::Json, Kind::Utf8, Kind::Html, Kind::Echo];
    for i in 0..CONCURRENT {
        let id = 10 + i;
        let kind = kinds[i as usize % kinds.len()];
        let mut spec = Spec::new(
            id,
            "POST",
            "productpage",
            kind,
            Some(request_body(kind, id, crlf)),
        );
        spec.mode = Mode::Concurrent;
        specs.push(spec);
    }

    specs.push(Spec::new(40, "GET", "productpage", Kind::Utf8, None));
    specs
}

#[test]
fn tokens_are_found_in_bodies() {
    let body = binary(42, 7);
    assert_eq!(find_tokens(&body), vec![42]);
    assert_eq!(find_tokens(b"x@@T00001@@y@@T00002@@"), vec![1, 2]);
    assert!(find_tokens(b"@@T0001@@").is_empty());
    assert_eq!(big_text(6, 1, BIG_BODY).len(), BIG_BODY);
    assert_eq!(parse_path("/productpage/json/12"), Some((Kind::Json, 12)));
}
