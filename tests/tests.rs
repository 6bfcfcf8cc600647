//! Integration tests: meshtap end to end against a real Envoy (`real_envoy`), with the harness in
//! `support`. Run with `cargo test --test tests`; `scripts/install-test-deps.sh` installs Envoy
//! (the harness runs it when Envoy is missing; `MESHTAP_ENVOY` points at another binary).

mod agent;
mod content;
mod real_envoy;
mod support;

mod bad_input;
mod e2e_sinks;
mod replay;
mod v1_assembly;
