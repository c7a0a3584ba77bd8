//! quiver-demo: a whole sample mesh on this machine (`cargo run --release -- demo` from the
//! repository root).
//!
//! The flags are the demo's ([`DemoArgs`]); a leading `demo` is accepted too, so the README's
//! command reads as it always has. The first argument may instead name one of the demo's
//! child processes, hidden: `demo-app NAME` (a sample app) and `sidecar ARGS...` (the
//! quiver-proxy library), so that one binary is all the demo needs.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use quiver_demo::{DemoArgs, apps, children};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let _program = args.next();
    match args.next().as_ref().and_then(|a| a.to_str()) {
        Some("demo-app") => match parse::<apps::AppArgs>(std::env::args_os().skip(1)) {
            Ok(a) => {
                children::exit_with_parent();
                apps::main(a)
            }
            Err(code) => code,
        },
        Some("sidecar") => {
            // The proxy's own command line, unchanged: `quiver-demo sidecar --help` is
            // `quiver-proxy --help`.
            children::exit_with_parent();
            let argv = std::iter::once("quiver-demo sidecar".into()).chain(args);
            quiver_proxy::cli::main_from(argv)
        }
        // clap takes the first item as the program name: `demo` stands in for it.
        Some("demo") => demo(std::env::args_os().skip(1)),
        _ => demo(std::env::args_os()),
    }
}

fn demo(args: impl Iterator<Item = OsString>) -> ExitCode {
    match parse::<DemoArgs>(args) {
        Ok(a) => quiver_demo::main(a),
        Err(code) => code,
    }
}

/// Parse a command's flags; on error print it and give the exit status (64 for bad flags).
fn parse<P: Parser>(args: impl Iterator<Item = OsString>) -> Result<P, ExitCode> {
    P::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(64)
        } else {
            ExitCode::SUCCESS
        }
    })
}
