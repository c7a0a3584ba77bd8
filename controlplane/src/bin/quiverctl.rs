//! quiverctl: the operator's command line for a Quiver mesh.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = quiver_control::cli::Cli::parse();
    // Keep rustls on ring (https:// servers) even if another provider is ever linked in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match quiver_control::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<quiver_control::cli::Exit>() {
            Some(exit) => ExitCode::from(exit.0),
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
