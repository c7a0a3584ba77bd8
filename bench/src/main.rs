//! `quiver-bench`: the data-plane benchmark, `quiver-bench propagation`, `tracing` and `load`
//! (docs/benchmarks.md). Everything lives in the `quiver_bench` library; this only parses the
//! command line and maps the outcome to an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use quiver_bench::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Propagation(args)) => quiver_bench::propagation::main(args),
        Some(Command::Tracing(args)) => quiver_bench::tracing::main(args),
        Some(Command::Load(args)) => quiver_bench::remote_load::main(*args),
        None => quiver_bench::main(cli.data_plane),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("quiver-bench: some rows had errors (flagged with !! above)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("quiver-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
