//! `quiver-bench`: the data-plane benchmark (docs/benchmarks.md). Everything lives in
//! `quiver_tests::bench`; this only parses the command line and maps the outcome to an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use quiver_tests::bench::{self, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    match bench::main(args) {
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
