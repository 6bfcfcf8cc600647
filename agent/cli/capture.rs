//! `meshtap capture`: HTTP/1.x exchanges captured from packets in a pod's network namespace (the
//! fallback when the sidecar logs nothing), as NDJSON on stdout or to the configured sink.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Args};

use crate::capture::{self, Origin, Until};
use crate::netns::{self, Netns, Target};
use crate::output::NdjsonWriter;
use crate::record::Exchange;

use super::target::{pod_meta, PodTargetArgs};
use crate::stage::Stages;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(super::target::TARGET_FLAGS)))]
pub struct CaptureArgs {
    /// Where to capture: a pod, a process's or a named network namespace.
    #[command(flatten)]
    pub target: PodTargetArgs,
    /// Interfaces to listen on, repeatable [default: lo and eth0].
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// TCP ports to capture (either end), repeatable [default: all TCP].
    #[arg(long = "port", value_name = "N")]
    pub ports: Vec<u16>,
    /// Only exchanges whose request path starts with this prefix.
    #[arg(long, value_name = "PREFIX")]
    pub path: Option<String>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    pub duration: Option<u64>,
    /// Stop after this many exchanges were delivered.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Also write the captured frames to this pcap file (for Wireshark), rotated at
    /// --pcap-max-bytes into FILE.1, FILE.2, ...
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Rotate the pcap file at this size.
    #[arg(long, default_value_t = 100 << 20, requires = "pcap")]
    pub pcap_max_bytes: u64,
    /// Pcap files kept, the current one included.
    #[arg(long, default_value_t = 10, requires = "pcap")]
    pub pcap_max_files: usize,
    /// Body bytes kept per direction [default: assembly.max_body_bytes of the config, 4194304].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// --config, --sink, --sink-timeout.
    #[command(flatten)]
    pub output: super::ConfigArgs,
    /// Print the summary as JSON instead of a sentence.
    #[arg(long)]
    pub summary_json: bool,
}

pub fn run(args: CaptureArgs) -> anyhow::Result<i32> {
    super::init_logging("warn", crate::config::LogFormat::Text);
    let config = args.output.load()?;
    let mut limits = capture::flows::Limits::default();
    limits.http.max_body_bytes = args
        .max_body_bytes
        .unwrap_or(config.assembly.max_body_bytes);
    if limits.http.max_body_bytes == 0 {
        anyhow::bail!("--max-body-bytes must be greater than 0");
    }

    let target = args.target.target().expect("clap requires one target");
    if let Some(message) = capture::missing_capabilities_message(!matches!(target, Target::Path(_)))
    {
        eprintln!("meshtap capture: {message}");
        return Ok(1);
    }
    let resolved = netns::resolve_named(&target, &args.target.roots())?;
    let path = resolved.path;
    // Packets carry no container: the pod's containers share the network namespace.
    let (label, k8s) = (resolved.label, resolved.pod.map(|pod| pod_meta(&pod, "")));
    let origin = Origin {
        file: format!("capture:{label}"),
        k8s,
    };
    let options = capture::Options {
        interfaces: args.interfaces.clone(),
        ports: args.ports.clone(),
        path_prefix: args.path.clone(),
        limits,
        pcap: args.pcap.clone().map(|path| capture::pcap::Options {
            path,
            max_bytes: args.pcap_max_bytes,
            max_files: args.pcap_max_files,
        }),
        ..capture::Options::default()
    };
    let mut stages = Stages::from_config(&config)?;
    let netns = Netns::open(&path)?;
    let running = capture::start(netns, options)?;
    eprintln!(
        "meshtap capture: listening on {} in {} ({})",
        running.interfaces.join(", "),
        path.display(),
        if args.ports.is_empty() {
            "all TCP ports".to_string()
        } else {
            format!(
                "TCP ports {}",
                args.ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let until = Until {
        duration: args.duration.map(Duration::from_secs),
        count: args.count,
        stop: Arc::new(AtomicBool::new(false)),
    };
    stop_on_signals(Arc::clone(&until.stop));

    let summary = if args.output.sink {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        runtime.block_on(async {
            let mut sink = config.sink.build(None).await.context("opening the sink")?;
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Exchange>>(64);
            let until = until.clone();
            let capture = tokio::task::spawn_blocking(move || {
                running.run(&origin, &until, &mut |exchange| {
                    let Ok(exchange) = stages.run(exchange) else {
                        return false;
                    };
                    // One exchange per batch: a live capture should not hold records back.
                    tx.blocking_send(vec![exchange]).is_ok()
                })
            });
            let delivered = super::parse::deliver_batches(
                &mut sink,
                &config,
                &mut rx,
                args.output.sink_timeout,
            )
            .await?;
            let summary = capture.await.context("the capture thread failed")??;
            eprintln!(
                "meshtap capture: delivered {delivered} exchanges to the {} sink",
                config.sink.name()
            );
            anyhow::Ok(summary)
        })?
    } else {
        let stdout = io::stdout().lock();
        let mut writer = NdjsonWriter::new(io::BufWriter::new(stdout));
        let mut write_error = None;
        let stop = Arc::clone(&until.stop);
        let summary = running.run(&origin, &until, &mut |exchange| {
            let Ok(exchange) = stages.run(exchange) else {
                return false;
            };
            match writer.write(&exchange).and_then(|()| writer.flush()) {
                Ok(()) => true,
                Err(e) => {
                    write_error.get_or_insert(e);
                    stop.store(true, Ordering::Relaxed);
                    false
                }
            }
        })?;
        if let Some(e) = write_error {
            if e.kind() != io::ErrorKind::BrokenPipe {
                return Err(e).context("writing exchanges to stdout");
            }
        }
        summary
    };

    let mut stderr = io::stderr().lock();
    if args.summary_json {
        writeln!(stderr, "{}", serde_json::to_string(&summary)?)?;
    } else {
        let f = &summary.flows;
        writeln!(
            stderr,
            "meshtap capture: {} frames ({} dropped by the kernel, {} by meshtap), {} connections, \
             {} exchanges ({} left out by --path, {} delivered), {} gaps ({} bytes missing), \
             {} retransmitted bytes, {} HTTP/2 and {} TLS connections not parsed, {} connections evicted",
            summary.frames,
            summary.kernel_drops,
            summary.queue_drops,
            f.connections,
            summary.exchanges,
            summary.filtered_out,
            summary.delivered,
            f.gaps,
            f.gap_bytes,
            f.retransmitted_bytes,
            f.http2_connections,
            f.tls_connections,
            f.evicted_connections,
        )?;
    }
    if summary.kernel_drops > 0 || summary.queue_drops > 0 {
        writeln!(
            stderr,
            "meshtap capture: frames were dropped under load; exchanges on those connections carry gaps (see warnings)"
        )?;
    }
    Ok(0)
}

/// Sets `stop` on SIGINT or SIGTERM, from a small thread of its own.
fn stop_on_signals(stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("meshtap-signals".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                stop.store(true, Ordering::Relaxed);
            });
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Cannot watch for SIGINT/SIGTERM; stop with --duration or --count.");
    }
}
