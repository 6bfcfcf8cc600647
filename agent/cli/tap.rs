//! `meshtap tap`: records from Envoy's tap filter, ad hoc. Attaches to an Envoy's admin `/tap`
//! stream (in a pod's network namespace, or at a plain address), or reads a `file_per_tap`
//! directory, and prints NDJSON or ships to the configured sink.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{ArgGroup, Args, ValueEnum};
use tokio::sync::{mpsc, watch};

use crate::netns;
use crate::output::NdjsonWriter;
use crate::record::Exchange;
use crate::sink::config::ConfiguredSink;
use crate::sink::Sink as _;
use crate::stage::Stages;
use crate::tap::admin::{self, AdminTarget, Retry};
use crate::tap::config::{MatchRules, TapRequest, DEFAULT_CONFIG_ID, DEFAULT_MAX_BUFFERED_BYTES};
use crate::tap::file::{DoneAction, TapDir, TapDirSettings};

use super::target::{pod_meta, PodTargetArgs};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DoneArg {
    /// Move delivered files into `<dir>/done/`.
    Move,
    /// Delete delivered files.
    Delete,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(super::target::TARGET_FLAGS).args(["admin", "dir"])))]
pub struct TapArgs {
    /// The Envoy to tap: in a pod's, a process's or a named network namespace.
    #[command(flatten)]
    pub target: PodTargetArgs,
    /// Tap the Envoy whose admin listens at ADDR, from meshtap's own network namespace.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Read the files of a `file_per_tap` sink in DIR instead of attaching to an admin port.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Envoy's admin port inside the pod's network namespace (on 127.0.0.1).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// The tap filter's `admin_config.config_id` (deploy/envoyfilter-tap.yaml uses `meshtap`).
    #[arg(long, default_value = DEFAULT_CONFIG_ID)]
    pub config_id: String,
    /// Tap only requests whose `:path` (query string included) equals P.
    #[arg(long, value_name = "P")]
    pub path_exact: Option<String>,
    /// Tap only requests whose `:path` starts with P.
    #[arg(long, value_name = "P")]
    pub path_prefix: Option<String>,
    /// Tap only requests with this method (repeatable: any of them).
    #[arg(long, value_name = "M")]
    pub method: Vec<String>,
    /// Tap only requests carrying header NAME (with VALUE, when given) (repeatable: all of them).
    #[arg(long, value_name = "NAME[=VALUE]")]
    pub header: Vec<String>,
    /// Body bytes Envoy buffers per direction before it cuts and flags `body_truncated`
    /// (Envoy's own default is 1024).
    #[arg(long, default_value_t = DEFAULT_MAX_BUFFERED_BYTES)]
    pub max_buffered_bytes: u32,

    /// Exit after N records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after S seconds.
    #[arg(long, value_name = "S")]
    pub duration: Option<u64>,

    /// With --dir: what to do with a file once its records were written or delivered.
    #[arg(long, value_enum, default_value = "move", requires = "dir")]
    pub done: DoneArg,
    /// With --dir: exit once every file in DIR has been read (instead of watching for more).
    #[arg(long, requires = "dir")]
    pub once: bool,
    /// With --dir: milliseconds a file's size must stay unchanged before it is read.
    #[arg(long, default_value_t = 200, requires = "dir")]
    pub settle_ms: u64,

    /// --config, --sink, --sink-timeout.
    #[command(flatten)]
    pub output: super::ConfigArgs,
}

/// Where the records go: stdout (NDJSON) or the configured sink.
enum Output {
    Stdout(NdjsonWriter<io::BufWriter<io::Stdout>>),
    Sink {
        sink: Box<ConfiguredSink>,
        timeout: Duration,
    },
}

impl Output {
    /// Writes or delivers `batch`; returns once it is flushed or acknowledged.
    async fn deliver(&mut self, batch: &[Exchange]) -> anyhow::Result<()> {
        match self {
            Output::Stdout(writer) => {
                for exchange in batch {
                    writer.write(exchange)?;
                }
                writer.flush()?;
                Ok(())
            }
            Output::Sink { sink, timeout } => {
                let name = sink.name();
                super::deliver_within(sink.as_mut(), batch, *timeout)
                    .await
                    .with_context(|| format!("delivering to the {name} sink"))
            }
        }
    }
}

/// A broken stdout pipe (`meshtap tap ... | head`) ends the command quietly.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

pub fn run(args: TapArgs) -> anyhow::Result<i32> {
    super::init_logging("info", crate::config::LogFormat::Text);
    let config = args.output.load()?;
    let stages = Stages::from_config(&config)?;
    if args.max_buffered_bytes == 0 {
        anyhow::bail!("--max-buffered-bytes must be greater than 0");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let output = runtime.block_on(async {
        anyhow::Ok(if args.output.sink {
            Output::Sink {
                sink: Box::new(config.sink.build(None).await.context("opening the sink")?),
                timeout: Duration::from_secs(args.output.sink_timeout),
            }
        } else {
            Output::Stdout(NdjsonWriter::new(io::BufWriter::with_capacity(
                1 << 16,
                io::stdout(),
            )))
        })
    })?;
    // SIGINT/SIGTERM (and --duration) stop the command: the admin connection is dropped, which
    // detaches the tap in Envoy; a file being delivered is finished first.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_flag = Arc::new(AtomicBool::new(false));
    {
        let stop_flag = stop_flag.clone();
        let duration = args.duration.map(Duration::from_secs);
        runtime.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let timer = async {
                match duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                () = timer => {}
            }
            stop_flag.store(true, Ordering::SeqCst);
            let _ = stop_tx.send(true);
        });
    }
    let result = if let Some(dir) = args.dir.clone() {
        run_dir(&args, dir, stages, output, &runtime, &stop_flag)
    } else {
        runtime.block_on(run_admin(&args, stages, output, stop_rx))
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(0),
        other => other,
    }
}

/// The admin target the flags name.
fn admin_target(args: &TapArgs) -> anyhow::Result<AdminTarget> {
    if let Some(addr) = args.admin {
        return Ok(AdminTarget {
            addr,
            netns: None,
            label: addr.to_string(),
            k8s: None,
        });
    }
    let Some(target) = args.target.target() else {
        anyhow::bail!("one of --pod, --pod-uid, --pid, --netns, --admin or --dir is required");
    };
    let resolved = netns::resolve_named(&target, &args.target.roots())?;
    let missing = netns::missing_capabilities(&[netns::SETNS]);
    if !missing.is_empty() {
        tracing::warn!(missing = ?missing, "Entering another network namespace needs CAP_SYS_ADMIN; setns will probably fail.");
    }
    Ok(AdminTarget {
        addr: SocketAddr::from(([127, 0, 0, 1], args.admin_port)),
        netns: Some(resolved.path),
        label: resolved.label,
        k8s: resolved.pod.map(|pod| pod_meta(&pod, "istio-proxy")),
    })
}

fn tap_request(args: &TapArgs) -> anyhow::Result<TapRequest> {
    let headers = args
        .header
        .iter()
        .map(|h| MatchRules::parse_header(h).map_err(|e| anyhow::anyhow!("--header: {e}")))
        .collect::<anyhow::Result<_>>()?;
    Ok(TapRequest {
        config_id: args.config_id.clone(),
        rules: MatchRules {
            path_exact: args.path_exact.clone(),
            path_prefix: args.path_prefix.clone(),
            methods: args.method.iter().map(|m| m.to_ascii_uppercase()).collect(),
            headers,
        },
        max_buffered_rx_bytes: args.max_buffered_bytes,
        max_buffered_tx_bytes: args.max_buffered_bytes,
    })
}

async fn run_admin(
    args: &TapArgs,
    mut stages: Stages,
    mut output: Output,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<i32> {
    const BATCH: usize = 512;
    let target = admin_target(args)?;
    let request = tap_request(args)?;
    let (tx, mut rx) = mpsc::channel::<Exchange>(BATCH);
    let session = {
        let target = target.clone();
        let stop = stop.clone();
        tokio::spawn(
            async move { admin::run(&target, &request, &Retry::default(), tx, stop).await },
        )
    };
    let mut written = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    let mut failure = None;
    'outer: while let Some(first) = rx.recv().await {
        // Whatever else is already waiting goes in the same batch.
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(exchange) = next.take() {
            if let Ok(exchange) = stages.run(exchange) {
                batch.push(exchange);
                if written + batch.len() as u64 >= limit {
                    break;
                }
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = output.deliver(&batch).await {
            failure = Some(e);
            break 'outer;
        }
        written += batch.len() as u64;
        if written >= limit {
            break;
        }
    }
    // Dropping the receiver ends the session, which drops the connection: Envoy detaches.
    drop(rx);
    let stats = session.await.context("the tap session task failed")?;
    if let Some(e) = failure {
        return Err(e);
    }
    let stats = stats?;
    let mut stderr = io::stderr().lock();
    writeln!(
        stderr,
        "meshtap tap: {written} records from {} ({} traces, {} skipped, {} dropped by policy, {} attach(es))",
        target.label,
        stats.traces,
        stats.skipped,
        stages.dropped().values().sum::<u64>(),
        stats.attached
    )?;
    Ok(0)
}

/// Reads a `file_per_tap` directory on this thread (the runtime only delivers and handles
/// signals): poll, write or deliver each complete file's records, then mark the file done.
fn run_dir(
    args: &TapArgs,
    dir: PathBuf,
    mut stages: Stages,
    mut output: Output,
    runtime: &tokio::runtime::Runtime,
    stop: &AtomicBool,
) -> anyhow::Result<i32> {
    let mut settings = TapDirSettings::new(dir.clone());
    settings.done = match args.done {
        DoneArg::Move => DoneAction::Move,
        DoneArg::Delete => DoneAction::Delete,
    };
    settings.settle = Duration::from_millis(args.settle_ms);
    let mut source =
        TapDir::new(settings).with_context(|| format!("reading tap files in {}", dir.display()))?;
    let watcher = crate::discover::Watcher::new(&dir);
    let limit = args.count.unwrap_or(u64::MAX);
    let mut written = 0u64;
    let poll_every = Duration::from_millis(args.settle_ms.clamp(20, 1000));
    let mut last_poll = Instant::now() - poll_every;
    let mut first = true;
    'outer: while !stop.load(Ordering::SeqCst) {
        // Events wake us early; polls at `poll_every` see files settle.
        if !first {
            let wait = poll_every.saturating_sub(last_poll.elapsed());
            if !wait.is_zero() {
                watcher.wait(wait);
            }
        }
        first = false;
        last_poll = Instant::now();
        let ready = source
            .poll()
            .with_context(|| format!("scanning {}", dir.display()))?;
        for file in ready {
            let batch: Vec<Exchange> = file
                .exchanges
                .into_iter()
                .filter_map(|e| stages.run(e).ok())
                .collect();
            runtime.block_on(output.deliver(&batch))?;
            written += batch.len() as u64;
            source
                .mark_done(&file.path)
                .with_context(|| format!("marking {} done", file.path.display()))?;
            if written >= limit {
                break 'outer;
            }
        }
        if args.once && source.pending() == 0 {
            break;
        }
    }
    let stats = &source.stats;
    writeln!(
        io::stderr().lock(),
        "meshtap tap: {written} records from {} files in {} ({} failed, {} unsupported, {} dropped by policy)",
        stats.files,
        dir.display(),
        stats.failed,
        stats.unsupported,
        stages.dropped().values().sum::<u64>()
    )?;
    Ok(if stats.failed > 0 { 1 } else { 0 })
}
