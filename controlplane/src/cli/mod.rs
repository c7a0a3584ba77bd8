//! `quiverctl` commands. Each subcommand lives in its own module; this file only dispatches.

use clap::{Parser, Subcommand};

pub mod certs;

#[derive(Debug, Parser)]
#[command(name = "quiverctl", version, about = "Operate a Quiver mesh")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint development certificates for static-config proxies and tests.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Certs(c) => certs::run(c),
    }
}
