//! The stdout sink: NDJSON on the agent's standard output, for `kubectl logs` or a log shipper that
//! already collects the agent's own container log (Fluent Bit, Vector, Promtail).
//!
//! A batch counts as delivered once it was written and flushed to the stdout pipe. Whatever reads
//! the pipe owns durability from there on. A closed stdout (`EPIPE`) is an ordinary
//! [`SinkError`]: Rust ignores `SIGPIPE`, so the write fails and the agent retries. A batch that
//! failed part-way is written again whole, so a reader may see its first lines twice.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{encode_line, BoxFuture, Sink, SinkError};
use crate::record::Exchange;

const NAME: &str = "stdout";

/// Writes exchanges as NDJSON to tokio's stdout, or to any [`AsyncWrite`] (for tests).
#[derive(Debug)]
pub struct StdoutSink<W = tokio::io::Stdout> {
    out: W,
    /// The batch being written, kept between batches to reuse its allocation.
    buf: Vec<u8>,
}

impl StdoutSink {
    /// A sink writing to the process's stdout.
    pub fn new() -> Self {
        StdoutSink::with_writer(tokio::io::stdout())
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink::new()
    }
}

impl<W: AsyncWrite + Unpin + Send> StdoutSink<W> {
    /// A sink writing to `out` instead of stdout.
    pub fn with_writer(out: W) -> Self {
        StdoutSink {
            out,
            buf: Vec::new(),
        }
    }

    /// The writer, e.g. to inspect what a test wrote.
    pub fn into_inner(self) -> W {
        self.out
    }

    async fn write_batch(&mut self, batch: &[Exchange]) -> Result<(), SinkError> {
        self.buf.clear();
        for record in batch {
            encode_line(NAME, record, &mut self.buf)?;
        }
        let failed = |source| SinkError::Io {
            sink: NAME,
            message: "cannot write to stdout".into(),
            source,
        };
        self.out.write_all(&self.buf).await.map_err(failed)?;
        self.out.flush().await.map_err(failed)
    }
}

impl<W: AsyncWrite + Unpin + Send> Sink for StdoutSink<W> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn deliver<'a>(&'a mut self, batch: &'a [Exchange]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.write_batch(batch))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::ErrorKind;

    use super::*;
    use crate::record::{Direction, LogPosition, Source};

    /// A small exchange whose id and body make each record recognisable.
    pub(crate) fn exchange(id: &str, body: &str) -> Exchange {
        Exchange {
            id: id.into(),
            source: Source::LuaV2,
            time: "2025-01-01T00:00:00Z".into(),
            k8s: None,
            log: LogPosition {
                file: "/var/log/pods/x/istio-proxy/0.log".into(),
                offset: 7,
                thread: None,
                stream: None,
            },
            request: Some(Direction {
                body: body.as_bytes().to_vec(),
                body_size: body.len() as u64,
                ..Default::default()
            }),
            response: None,
            complete: false,
            warnings: vec![],
            redacted: Vec::new(),
        }
    }

    /// The NDJSON line the sinks write for `record`.
    pub(crate) fn line(record: &Exchange) -> String {
        serde_json::to_string(record).unwrap() + "\n"
    }

    #[tokio::test]
    async fn writes_one_json_line_per_record() {
        let batch = [exchange("a", "{\"x\":1}\nsecond line"), exchange("b", "")];
        let mut sink = StdoutSink::with_writer(Vec::new());
        assert_eq!(sink.name(), "stdout");
        sink.deliver(&batch).await.unwrap();
        sink.deliver(&batch[..1]).await.unwrap();
        let out = String::from_utf8(sink.into_inner()).unwrap();
        assert_eq!(
            out,
            [line(&batch[0]), line(&batch[1]), line(&batch[0])].concat()
        );
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 3, "a body's newline stays escaped");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["request"]["body"], "{\"x\":1}\nsecond line");
    }

    #[tokio::test]
    async fn an_empty_batch_writes_nothing() {
        let mut sink = StdoutSink::with_writer(Vec::new());
        sink.deliver(&[]).await.unwrap();
        assert!(sink.into_inner().is_empty());
    }

    #[tokio::test]
    async fn a_closed_pipe_is_an_error_not_a_panic() {
        let (tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
        drop(rx);
        let mut sink = StdoutSink::with_writer(tx);
        let e = sink.deliver(&[exchange("a", "b")]).await.unwrap_err();
        assert_eq!(e.to_string(), "stdout: cannot write to stdout");
        match e {
            SinkError::Io { source, .. } => assert_eq!(source.kind(), ErrorKind::BrokenPipe),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }
}
