//! The `meshtap` binary: parse arguments, set up logging, run a command, map errors to exit codes.

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHTAP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = meshtap::cli::Cli::parse();
    match meshtap::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("meshtap: error: {e:#}");
            std::process::exit(1);
        }
    }
}
