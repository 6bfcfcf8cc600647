//! `meshtap run`: the node agent. Three parts, each in its own file:
//!
//! - [`reader`]: one thread that discovers container log streams, tails them, runs each through a
//!   [`crate::pipeline::LogStream`], hands exchanges to the sink in batches, and writes checkpoints
//!   once the sink acknowledged what precedes them;
//! - [`deliver`]: a task that delivers batches to the sink with retries and reports acknowledgements;
//! - the ops endpoint ([`crate::ops`]): metrics, liveness and readiness.
//!
//! Backpressure: the queue between reader and sink is bounded; when it is full the reader stops
//! reading, so a slow or failing sink costs bounded memory and nothing is dropped. Shutdown: on
//! SIGTERM/SIGINT the reader stops reading, hands over its last batch, waits (within the grace
//! period) for the sink to acknowledge it, and writes the checkpoint last.

pub mod deliver;
pub mod reader;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{CheckpointError, Store};
use crate::config::Config;
use crate::ops::{Metrics, OpsState};
use crate::record::Exchange;
use crate::sink::Sink as _;
use crate::stage::Stages;

/// Exchanges handed from the reader to the sink, numbered in order.
pub struct Batch {
    pub seq: u64,
    pub exchanges: Vec<Exchange>,
}

/// The sink delivered batch `seq` (and every earlier one).
pub struct Ack {
    pub seq: u64,
    /// The file sink's position after the batch, saved with the checkpoint.
    pub sink_position: Option<crate::sink::FilePosition>,
    /// The batch's exchanges, handed back so that the reader thread, which allocated them, frees
    /// them. Freed on the sink's thread, their memory went back to the reader's glibc arena under
    /// its lock, while the reader was allocating from it: with a Kafka backlog both threads spent
    /// thousands of futex waits a second on that lock (docs/benchmarks.md, 2026-12-07).
    pub exchanges: Vec<Exchange>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    // The source is printed after the message by the caller's error chain.
    #[error("cannot start the sink")]
    Sink(#[source] crate::sink::SinkError),
    #[error("cannot listen on {addr} for metrics and health: {source}")]
    Ops {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Stages(crate::config::ConfigError),
    #[error(transparent)]
    Kubernetes(#[from] crate::k8s::K8sError),
    #[error("the reader thread failed: {0}")]
    Reader(String),
}

/// Runs the agent until SIGTERM or SIGINT; returns once the last checkpoint is written.
pub fn run(config: Config) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("meshtap-io")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: Config) -> Result<(), RunError> {
    // Signal handlers first: from the first moment (and surely once /readyz says ready) a
    // SIGTERM means a graceful stop, not the default termination.
    let signals = Signals::install();
    let store = Store::open(&config.agent.state_dir)?;
    let mut checkpoint = store.load()?;
    let metrics = Arc::new(Metrics::new());
    let ops_state = Arc::new(OpsState::new(metrics.clone()));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);

    let ops_task = if config.ops.enabled {
        let listener = tokio::net::TcpListener::bind(config.ops.listen)
            .await
            .map_err(|source| RunError::Ops {
                addr: config.ops.listen,
                source,
            })?;
        tracing::info!(addr = %config.ops.listen, "Serving /metrics, /healthz and /readyz.");
        Some(tokio::spawn(crate::ops::serve(
            listener,
            ops_state.clone(),
            shutdown_rx.clone(),
        )))
    } else {
        None
    };

    let sink = config
        .sink
        .build(checkpoint.sink_position.clone())
        .await
        .map_err(RunError::Sink)?;
    // Where the file sink stands now (after rolling back to the checkpoint): the first checkpoint
    // must record it too, or a crash before the first acknowledgement could not roll back.
    checkpoint.sink_position = sink.checkpoint_position();
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel::<Batch>(config.agent.queue_batches);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<Ack>();
    let deliver_task = tokio::spawn(deliver::deliver(
        sink,
        batch_rx,
        ack_tx,
        metrics.clone(),
        ops_state.clone(),
        shutdown_rx.clone(),
    ));

    let mut stages = Stages::from_config(&config).map_err(RunError::Stages)?;
    // Enrichment and selection come first: the policy matches on the labels they fill in.
    // Started before the reader so the first records are enriched (see `Kubernetes::start`).
    let kubernetes =
        crate::k8s::Kubernetes::start(&config.kubernetes, metrics.clone(), shutdown_rx.clone())
            .await?;
    stages.push_front(kubernetes.stage(metrics.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = reader::Reader::new(
        &config,
        store,
        checkpoint,
        (batch_tx, ack_rx),
        metrics.clone(),
        stop.clone(),
        stages,
    );
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let reader_thread = std::thread::Builder::new()
        .name("meshtap-reader".into())
        .spawn(move || {
            let result = reader.run();
            let _ = done_tx.send(());
            result
        })
        .map_err(|e| RunError::Reader(e.to_string()))?;
    ops_state.set_ready(true);

    // Normally the reader runs until a signal; if it stops by itself (a checkpoint it cannot
    // write, a panic), the agent stops too instead of idling without reading.
    let mut done_rx = done_rx;
    tokio::select! {
        _ = signals.recv() => {
            tracing::info!("Shutting down: delivering what was read and writing the last checkpoint.");
        }
        _ = &mut done_rx => {
            tracing::error!("The reader stopped unexpectedly; shutting down.");
        }
    }
    ops_state.set_ready(false);
    stop.store(true, Ordering::SeqCst);

    // The reader hands over its last batch, waits for its acknowledgement within the grace
    // period, and writes the checkpoint; the deliver task ends when the reader drops its sender.
    let grace = Duration::from_secs(config.agent.shutdown_grace_seconds);
    let joined = tokio::task::spawn_blocking(move || reader_thread.join());
    let result = match tokio::time::timeout(grace + Duration::from_secs(2), joined).await {
        Ok(Ok(Ok(Ok(())))) => Ok(()),
        Ok(Ok(Ok(Err(e)))) => Err(RunError::Reader(e)),
        Ok(Ok(Err(_))) | Ok(Err(_)) => Err(RunError::Reader("the reader thread panicked".into())),
        Err(_) => Err(RunError::Reader(
            "the reader did not stop within the grace period".into(),
        )),
    };
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), deliver_task).await;
    if let Some(task) = ops_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    result
}

/// SIGTERM and SIGINT, registered when created (so none is missed once the agent says ready).
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn recv(mut self) {
        match (self.term.as_mut(), self.int.as_mut()) {
            (Some(term), Some(int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
