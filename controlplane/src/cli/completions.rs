//! `quiverctl completion SHELL`: a completion script generated from the command definitions
//! themselves (clap_complete), so it never lags behind a new flag.

use clap::CommandFactory;

/// Print the script for `shell` on stdout.
pub fn print(shell: clap_complete::Shell) {
    let mut cmd = super::Cli::command();
    clap_complete::generate(shell, &mut cmd, "quiverctl", &mut std::io::stdout());
}
