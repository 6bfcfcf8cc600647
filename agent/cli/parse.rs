//! `meshtap parse FILE...`: exchanges as NDJSON on stdout, a summary on stderr.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::config::Config;
use crate::decode::Format;
use crate::output::NdjsonWriter;
use crate::pipeline;

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
    /// YAML configuration (see config/meshtap.yaml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
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
}

pub fn run(args: ParseArgs) -> anyhow::Result<i32> {
    // Only problems are worth a line here: the summary says what happened.
    super::init_logging("warn", crate::config::LogFormat::Text);
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
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

    let stdout = io::stdout().lock();
    let mut writer = NdjsonWriter::new(io::BufWriter::with_capacity(1 << 16, stdout));
    let mut write_error = None;
    let summary = pipeline::parse_files(&args.files, &settings, &mut |exchange| {
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

    let mut stderr = io::stderr().lock();
    if args.summary_json {
        writeln!(stderr, "{}", serde_json::to_string(&summary)?)?;
    } else {
        let a = &summary.assemble;
        writeln!(
            stderr,
            "meshtap parse: {} files, {} lines, {} lua messages, {} exchanges ({} incomplete, {} with warnings), \
             {} skipped ({} malformed container lines, {} stray lines, {} unattributed v1 messages, {} malformed v2 lines), \
             {} lua script errors",
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
        )?;
    }
    for error in &summary.errors {
        writeln!(stderr, "meshtap parse: error: {error}")?;
    }
    Ok(if summary.errors.is_empty() { 0 } else { 1 })
}
