//! Command-line interface: `meshtap <command>`. Each command is a file of its own.

pub mod capture;
pub mod envoyfilter;
pub mod parse;
pub mod run;
pub mod tap;
pub mod target;

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
    /// Print an Istio EnvoyFilter that installs meshtap's v2 Lua filter, limited to the workloads,
    /// direction, paths and methods given, with the body cap and the headers never logged.
    Envoyfilter(envoyfilter::EnvoyFilterArgs),
    /// Stream records from Envoy's tap filter: attach to a sidecar's admin `/tap` endpoint
    /// (entering the pod's network namespace) or read a `file_per_tap` directory.
    Tap(Box<tap::TapArgs>),
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
    // kube's HTTP layer logs every failed request at error level, so an unreachable API would
    // log at each retry; the Kubernetes watcher reports it itself, once per outage. A filter that
    // names kube_client keeps control.
    let filter = if filter.to_string().contains("kube_client") {
        filter
    } else {
        filter.add_directive(
            "kube_client::client::builder=off"
                .parse()
                .expect("a valid directive"),
        )
    };
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
        Command::Envoyfilter(args) => envoyfilter::run(args),
        Command::Tap(args) => tap::run(*args),
        Command::Capture(args) => capture::run(*args),
    }
}

/// The flags `parse`, `tap` and `capture` share: the config whose stages (policy, decoding,
/// redaction) apply to what they print, and its sink with `--sink`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// YAML configuration (see config/meshtap.yaml): its stages (policy, redaction) apply, and
    /// its sink with --sink; flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Deliver the exchanges to the sink of --config (a file, Kafka, OTLP) instead of printing
    /// them: for example, replay a saved log into a backend for post-incident forensics.
    #[arg(long, requires = "config")]
    pub sink: bool,
    /// With --sink: seconds to keep retrying a failing sink before giving up.
    #[arg(long, default_value_t = 60, requires = "sink")]
    pub sink_timeout: u64,
}

impl ConfigArgs {
    /// The configuration named by --config, or the defaults.
    pub fn load(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        match &self.config {
            Some(path) => crate::config::Config::load(path),
            None => Ok(crate::config::Config::default()),
        }
    }
}

/// Delivers `batch` to `sink` with the agent's retry policy, giving up after `timeout` of
/// failures (the one-shot commands' `--sink-timeout`).
pub(crate) async fn deliver_within(
    sink: &mut crate::sink::config::ConfiguredSink,
    batch: &[crate::record::Exchange],
    timeout: std::time::Duration,
) -> Result<(), crate::sink::SinkError> {
    let mut backoff = crate::sink::Backoff::try_new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    )
    .expect("valid backoff");
    let (give_up_tx, give_up) = tokio::sync::watch::channel(false);
    let timer = tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let _ = give_up_tx.send(true);
    });
    let result = crate::sink::deliver_with_retry(
        sink,
        batch,
        &mut backoff,
        &give_up,
        |error| tracing::warn!(%error, "Could not deliver a batch; retrying."),
    )
    .await;
    timer.abort();
    result
}
