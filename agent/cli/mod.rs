//! Command-line interface: `meshtap <command>`. Each command is a file of its own.

pub mod parse;

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
}

/// Runs a command; the exit code on success.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Parse(args) => parse::run(args),
    }
}
