//! Exchange records from captured HTTP exchanges: the same schema as every other source
//! (`docs/record.md`), with `source: "capture"`.
//!
//! - `headers` hold the header lines exactly as sent (lower-case names, every value in order) and
//!   no pseudo-headers: HTTP/1.x has none on the wire. `method`, `path`, `authority` (from `Host`)
//!   and `status` are in their own fields.
//! - `log.file` is `capture:<what was captured>` (the pod, `pid:<n>` or the namespace path),
//!   `log.offset` the connection's ordinal in this capture, and `log.stream`
//!   `<client> > <server> #<n>`: the connection and the exchange's position on it.
//! - `id` hashes the connection's addresses, its client ISN (or first sequence number seen) and the
//!   exchange's position: the same packets give the same ids.

use std::net::SocketAddr;

use crate::record::{Exchange, K8sMeta, LogPosition, Source};

use super::http::{format_ns, Done};

/// What the records of one capture share.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// `log.file` of every record: `capture:<label>`.
    pub file: String,
    /// Pod identity, when the capture was started for a pod.
    pub k8s: Option<K8sMeta>,
}

/// The connection an exchange travelled on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub anchor: u32,
    pub ordinal: u64,
}

pub fn build(done: Done, conn: &Conn, origin: &Origin) -> Exchange {
    let id = xxhash_rust::xxh3::xxh3_128(
        format!(
            "{}|{}|{}|{}",
            conn.client, conn.server, conn.anchor, done.index
        )
        .as_bytes(),
    );
    let ended = |d: &Option<crate::record::Direction>| d.as_ref().is_some_and(|d| d.ended);
    let complete = ended(&done.request) && ended(&done.response) && done.warnings.is_empty();
    Exchange {
        id: format!("{id:032x}"),
        source: Source::Capture,
        time: format_ns(done.start_ns),
        k8s: origin.k8s.clone(),
        log: LogPosition {
            file: origin.file.clone(),
            offset: conn.ordinal,
            thread: None,
            stream: Some(format!("{} > {} #{}", conn.client, conn.server, done.index)),
        },
        request: done.request,
        response: done.response,
        complete,
        warnings: done.warnings,
        redacted: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Direction;

    #[test]
    fn records_are_deterministic_and_say_where_they_came_from() {
        let done = Done {
            index: 2,
            request: Some(Direction {
                ended: true,
                ..Default::default()
            }),
            response: Some(Direction {
                ended: true,
                ..Default::default()
            }),
            start_ns: 1_764_000_000_123_456_789,
            warnings: vec![],
        };
        let conn = Conn {
            client: "10.0.0.2:5555".parse().unwrap(),
            server: "10.0.0.1:80".parse().unwrap(),
            anchor: 42,
            ordinal: 7,
        };
        let origin = Origin {
            file: "capture:shop/cart-1".into(),
            k8s: None,
        };
        let a = build(done.clone(), &conn, &origin);
        let b = build(done.clone(), &conn, &origin);
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        assert_eq!(a.source, Source::Capture);
        assert_eq!(a.time, "2025-11-24T16:00:00.123456Z");
        assert_eq!(a.log.offset, 7);
        assert_eq!(
            a.log.stream.as_deref(),
            Some("10.0.0.2:5555 > 10.0.0.1:80 #2")
        );
        assert!(a.complete);
        let other = build(
            Done {
                index: 3,
                ..done.clone()
            },
            &conn,
            &origin,
        );
        assert_ne!(other.id, a.id);
        let warned = build(
            Done {
                warnings: vec!["w".into()],
                ..done
            },
            &conn,
            &origin,
        );
        assert!(!warned.complete);
    }
}
