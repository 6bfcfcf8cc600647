//! Envoy's tap filter as a source of exchanges, beside the Lua filter's log lines.
//!
//! - [`admin`]: attach to an Envoy's admin `/tap` endpoint (inside the pod's network namespace
//!   when needed, through [`crate::netns`]) and stream buffered traces as they happen.
//! - [`file`]: read the files a `file_per_tap` sink writes, and mark them done after delivery.
//! - [`trace`]: Envoy's trace formats (JSON, binary protobuf) to [`crate::record::Exchange`]
//!   (`source: "tap"`).
//! - [`config`]: the tap configuration posted to the admin endpoint (match rules, buffer limits).
//!
//! `meshtap tap` (agent/cli/tap.rs) drives them; docs/tap.md is the user's guide.

pub mod admin;
pub mod config;
pub mod file;
pub mod trace;
