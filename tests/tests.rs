//! Integration tests: meshtap end to end against a real Envoy (`real_envoy`), with the harness in
//! `support`. Run with `cargo test --test tests`; `scripts/install-test-deps.sh` installs Envoy
//! (the harness runs it when Envoy is missing; `MESHTAP_ENVOY` points at another binary).

mod agent;
mod capture;
mod content;
mod k8s;
mod real_envoy;
mod support;
mod tap;

mod bad_input;
mod deploy;
mod e2e_sinks;
mod envoyfilter;
mod policy;
mod replay;
mod v1_assembly;
