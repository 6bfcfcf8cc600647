//! Operating the agent: [`Metrics`] (Prometheus counters, gauges and a histogram for every stage)
//! and the HTTP endpoint that serves them with the liveness and readiness probes ([`serve`], with
//! [`OpsState`] holding the metrics and the readiness flags). [`OpsConfig`] is its config section.

pub mod config;
pub mod metrics;
pub mod server;

pub use config::OpsConfig;
pub use metrics::Metrics;
pub use server::{serve, OpsState};
