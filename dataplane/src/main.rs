//! `quiver-proxy`: the sidecar. The command line lives in [`quiver_proxy::cli`] so that other
//! binaries (the demo) run exactly the same proxy.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    quiver_proxy::cli::main_from(std::env::args_os())
}
