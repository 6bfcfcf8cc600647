//! `meshtap parse FILE...`: exchanges as NDJSON on stdout, a summary on stderr.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::config::Config;
use crate::decode::Format;
use crate::output::NdjsonWriter;
use crate::pipeline;
use crate::stage::Stages;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Auto,
    Cri,
    Docker,
    Raw,
}

#[derive(Debug, Args)]
pub struct ParseArgs {
    /// Container log files. Rotated files of one container (`0.log.<time>[.gz]`, `0.log`) are read
    /// as one stream, oldest first.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Container log format [default: auto, detected per file].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Body bytes kept per direction; larger bodies are cut and flagged `body_truncated`
    /// [default: 4194304].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Print the summary as JSON instead of a sentence.
    #[arg(long)]
    pub summary_json: bool,
    /// --config, --sink, --sink-timeout.
    #[command(flatten)]
    pub output: super::ConfigArgs,
}

pub fn run(args: ParseArgs) -> anyhow::Result<i32> {
    // Only problems are worth a line here: the summary says what happened.
    super::init_logging("warn", crate::config::LogFormat::Text);
    let config = args.output.load()?;
    let mut settings = config.settings();
    if let Some(format) = args.format {
        settings.format = match format {
            FormatArg::Auto => None,
            FormatArg::Cri => Some(Format::Cri),
            FormatArg::Docker => Some(Format::Docker),
            FormatArg::Raw => Some(Format::Raw),
        };
    }
    if let Some(max) = args.max_body_bytes {
        if max == 0 {
            anyhow::bail!("--max-body-bytes must be greater than 0");
        }
        settings.limits.max_body_bytes = max;
    }

    let mut stages = Stages::from_config(&config)?;
    let (summary, dropped) = if args.output.sink {
        replay_into_sink(&args, &config, settings, stages)?
    } else {
        let stdout = io::stdout().lock();
        let mut writer = NdjsonWriter::new(io::BufWriter::with_capacity(1 << 16, stdout));
        let mut write_error = None;
        let summary = pipeline::parse_files(&args.files, &settings, &mut |exchange| {
            let Ok(exchange) = stages.run(exchange) else {
                return;
            };
            if write_error.is_none() {
                if let Err(e) = writer.write(&exchange) {
                    write_error = Some(e);
                }
            }
        });
        if let Some(e) = write_error {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(0);
            }
            return Err(e).context("writing exchanges to stdout");
        }
        writer.flush().context("writing exchanges to stdout")?;
        (summary, dropped_counts(&stages))
    };

    let mut stderr = io::stderr().lock();
    if args.summary_json {
        /// The summary's fields in their order, then the drops.
        #[derive(serde::Serialize)]
        struct WithDrops<'a> {
            #[serde(flatten)]
            summary: &'a pipeline::Summary,
            dropped: &'a BTreeMap<&'static str, u64>,
        }
        let json = WithDrops {
            summary: &summary,
            dropped: &dropped,
        };
        writeln!(stderr, "{}", serde_json::to_string(&json)?)?;
    } else {
        let a = &summary.assemble;
        writeln!(
            stderr,
            "meshtap parse: {} files, {} lines, {} lua messages, {} exchanges ({} incomplete, {} with warnings), \
             {} skipped ({} malformed container lines, {} stray lines, {} unattributed v1 messages, {} malformed v2 lines), \
             {} lua script errors, {} dropped by the stages ({})",
            summary.files,
            summary.lines,
            summary.envoy.lua_messages,
            a.exchanges,
            a.incomplete,
            a.with_warnings,
            summary.skipped(),
            summary.decode.malformed,
            summary.envoy.stray_lines,
            a.unattributed_v1,
            a.malformed_v2,
            a.script_errors,
            dropped.values().sum::<u64>(),
            dropped
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        )?;
    }
    for error in &summary.errors {
        writeln!(stderr, "meshtap parse: error: {error}")?;
    }
    Ok(if summary.errors.is_empty() { 0 } else { 1 })
}

/// Exchanges the stages dropped, by reason; every known reason is present (0 when none).
fn dropped_counts(stages: &Stages) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> =
        crate::stage::DROP_REASONS.iter().map(|r| (*r, 0)).collect();
    for (reason, n) in stages.dropped() {
        *counts.entry(reason).or_default() += n;
    }
    counts
}

/// Parses on a blocking thread and delivers batches to the configured sink as they come, with
/// the agent's retry policy, giving up after `--sink-timeout` seconds of failure.
fn replay_into_sink(
    args: &ParseArgs,
    config: &Config,
    settings: pipeline::Settings,
    mut stages: Stages,
) -> anyhow::Result<(pipeline::Summary, BTreeMap<&'static str, u64>)> {
    const BATCH: usize = 512;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let mut sink = config.sink.build(None).await.context("opening the sink")?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<crate::record::Exchange>>(4);
        let files = args.files.clone();
        let parser = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let summary = pipeline::parse_files(&files, &settings, &mut |exchange| {
                let Ok(exchange) = stages.run(exchange) else {
                    return;
                };
                batch.push(exchange);
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    // The receiver only goes away on a delivery failure, reported there.
                    let _ = tx.blocking_send(full);
                }
            });
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            (summary, dropped_counts(&stages))
        });
        let delivered =
            deliver_batches(&mut sink, config, &mut rx, args.output.sink_timeout).await?;
        let (summary, dropped) = parser.await.context("the parser thread failed")?;
        eprintln!(
            "meshtap parse: delivered {delivered} exchanges to the {} sink",
            config.sink.name()
        );
        Ok((summary, dropped))
    })
}

/// Delivers batches from `rx` to `sink` as they come, with the agent's retry policy, giving up
/// after `sink_timeout` seconds of failure on one batch; the number of exchanges delivered.
/// Shared by `meshtap parse --sink` and `meshtap capture --sink`.
pub(crate) async fn deliver_batches(
    sink: &mut crate::sink::ConfiguredSink,
    config: &Config,
    rx: &mut tokio::sync::mpsc::Receiver<Vec<crate::record::Exchange>>,
    sink_timeout: u64,
) -> anyhow::Result<usize> {
    let mut delivered = 0usize;
    while let Some(batch) = rx.recv().await {
        super::deliver_within(sink, &batch, std::time::Duration::from_secs(sink_timeout))
            .await
            .with_context(|| {
                format!(
                    "delivering to the {} sink ({delivered} exchanges delivered before)",
                    config.sink.name()
                )
            })?;
        delivered += batch.len();
    }
    Ok(delivered)
}
