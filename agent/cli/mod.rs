//! Command-line interface: `meshtap <command>`. Each command is a file of its own.

pub mod capture;
pub mod parse;
pub mod run;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "meshtap",
    version,
    about = "Capture HTTP API payloads across an Istio service mesh"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read istio-proxy container logs (CRI, docker json-file or raw; plain or .gz) and print one
    /// JSON exchange per line. The forensics tool for saved or rotated logs.
    Parse(parse::ParseArgs),
    /// Run the node agent: tail every istio-proxy container log under the log root, reassemble
    /// exchanges and deliver them to the configured sink, checkpointing what was delivered.
    Run(run::RunArgs),
    /// Capture HTTP/1.x exchanges from packets in a pod's network namespace: the fallback for
    /// pods whose sidecar logs nothing. Needs CAP_NET_RAW, CAP_SYS_ADMIN and CAP_SYS_PTRACE.
    Capture(Box<capture::CaptureArgs>),
}

/// Sets up meshtap's own diagnostic log on stderr: `MESHTAP_LOG`, else `RUST_LOG`, overrides
/// `level`.
pub fn init_logging(level: &str, format: crate::config::LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHTAP_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        crate::config::LogFormat::Json => builder.json().init(),
        crate::config::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Runs a command; the exit code on success.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Parse(args) => parse::run(args),
        Command::Run(args) => run::run(args),
        Command::Capture(args) => capture::run(*args),
    }
}
