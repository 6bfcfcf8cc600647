//! Sources the node agent runs next to the log path, for pods whose sidecar logs no exchanges.
//!
//! - [`supervisor`]: starts and stops the per-pod sources below, fed by the reader thread.
//! - [`capture`]: raw capture in the pod's network namespace ([`crate::capture`]), started by a
//!   supervisor for pods whose `istio-proxy` log showed no Lua exchange for a while (or that are
//!   named in the config), stopped when the pod goes away or its filter starts logging.
//! - [`tap`]: the same supervisor attached to the sidecars' admin `/tap` streams instead.
//!
//! The reader thread ([`crate::run::reader`]) owns the batches: a source hands its records over a
//! bounded channel that the reader drains every round into the same `emit` as the log path, so
//! they pass the same stages and reach the sink in the same batches.

pub mod capture;
pub mod supervisor;
pub mod tap;
