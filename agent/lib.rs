//! meshtap: HTTP API payload capture for an Istio service mesh.
//!
//! A log line travels through the stages in the order of the folders:
//!
//! 1. [`read`]: physical lines (with byte offsets) from a container log file, plain or gzip.
//! 2. [`decode`]: the container runtime's framing (CRI, docker json-file, or raw) removed, partial
//!    lines joined: [`decode::ContainerLine`].
//! 3. [`envoy`]: Envoy's log layouts (Envoy default, Istio text, Istio JSON) recognised and multi-line
//!    messages joined; only Lua `script log:` messages go on: [`envoy::LuaMessage`].
//! 4. [`marker`]: each Lua message classified as a `[logPayload]` event of the seed's format (v1) or
//!    of meshtap's own filter (v2).
//! 5. [`assemble`]: events reassembled into one [`record::Exchange`] per request/response.
//! 6. [`stage`]: the stages every exchange passes before delivery: Kubernetes enrichment, the
//!    [`policy`] (rules, sampling, body limits, rate limits), body decoding in [`content`], and
//!    redaction in [`redact`], last.
//! 7. [`output`] and [`sink`]: exchanges written out (NDJSON, files, Kafka, OTLP).
//!
//! [`pipeline`] wires the stages together for one file; [`k8s`] derives pod identity from log paths
//! and, when the Kubernetes API is reachable, enriches records and selects the pods captured.

pub mod assemble;
pub mod capture;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod content;
pub mod decode;
pub mod discover;
pub mod envoy;
pub mod envoyfilter;
pub mod k8s;
pub mod marker;
pub mod netns;
pub mod ops;
pub mod output;
pub mod pipeline;
pub mod policy;
pub mod read;
pub mod record;
pub mod redact;
pub mod run;
pub mod sink;
pub mod sources;
pub mod stage;
pub mod tail;
pub mod tap;
