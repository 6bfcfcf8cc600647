//! The `meshtap` binary: parse arguments, set up logging, run a command, map errors to exit codes.

use clap::Parser;

fn main() {
    let cli = meshtap::cli::Cli::parse();
    match meshtap::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("meshtap: error: {e:#}");
            std::process::exit(1);
        }
    }
}
