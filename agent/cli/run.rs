//! `meshtap run --config FILE`: the node agent (see [`crate::run`]).

use std::path::PathBuf;

use clap::Args;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML configuration (see config/meshtap.yaml); without it every default applies.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Exit code for a configuration that cannot be used (as linkerd2-proxy does).
pub const EXIT_CONFIG: i32 = 64;

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    // Validated before any I/O: a bad file is one message and a distinct exit code.
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("meshtap: {e}");
            return Ok(EXIT_CONFIG);
        }
    };
    super::init_logging(&config.log.level, config.log.format);
    match crate::run::run(config) {
        Ok(()) => Ok(0),
        Err(crate::run::RunError::Stages(e)) => {
            eprintln!("meshtap: {e}");
            Ok(EXIT_CONFIG)
        }
        Err(e) => Err(e.into()),
    }
}
