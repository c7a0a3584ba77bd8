//! `quiverctl` commands. Each subcommand lives in its own module; this file only parses and
//! dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod ca;
pub mod certs;
pub mod client;
pub mod resources;
mod revoke;
mod tokens;
mod trust;

#[derive(Debug, Parser)]
#[command(name = "quiverctl", version, about = "Operate a Quiver mesh")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the control plane is and who we are.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Control-plane API address (http:// for h2c, https:// for TLS).
    #[arg(
        long,
        env = "QUIVER_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// API token (admin or viewer).
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify an https:// server with: for a control plane started
    /// with --tls-mesh-ca, the `api-ca.pem` it writes into its data directory.
    #[arg(long, visible_alias = "ca-cert", env = "QUIVER_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from YAML: -f FILE, -f DIR (its *.yaml, *.yml, *.json) or -f -.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show resources: KIND (service, route, canary, authorizationpolicy, meshconfig,
    /// workload) and optionally a NAME.
    Get {
        kind: String,
        name: Option<String>,
        /// Namespace (default: all namespaces when listing, "default" with a NAME).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "yaml", "json"])]
        output: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Delete a resource.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// API tokens (create, list, revoke); `list` and `revoke` also cover join tokens.
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// Join tokens for proxies.
    #[command(subcommand, name = "join-token")]
    JoinToken(tokens::JoinTokenCommand),
    /// Revoke an identity (directly or through a workload) and list revocations.
    #[command(subcommand)]
    Revoke(revoke::RevokeCommand),
    /// Show the control plane's status.
    Status {
        #[command(flatten)]
        conn: Connection,
    },
    /// Print the mesh CA certificates (PEM) a proxy passes as `--ca-cert`.
    #[command(name = "trust-bundle")]
    TrustBundle {
        /// Write them to this file instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Root rotation of the mesh CA: rotate, retire, status.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Mint development certificates for static-config proxies and tests.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Certs(c) = cli.command {
        return certs::run(c);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(cli.command))
}

async fn run_async(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Apply { files, conn } => resources::apply(&conn, &files).await,
        Command::Get {
            kind,
            name,
            namespace,
            output,
            conn,
        } => resources::get(&conn, &kind, name.as_deref(), namespace.as_deref(), &output).await,
        Command::Delete {
            kind,
            name,
            namespace,
            conn,
        } => resources::delete(&conn, &kind, &namespace, &name).await,
        Command::Token(c) => tokens::token(c).await,
        Command::JoinToken(c) => tokens::join_token(c).await,
        Command::Revoke(c) => revoke::run(c).await,
        Command::Ca(c) => ca::run(c).await,
        Command::Status { conn } => tokens::status(&conn).await,
        Command::TrustBundle { output, conn } => {
            trust::trust_bundle(&conn, output.as_deref()).await
        }
        Command::Certs(_) => Ok(()),
    }
}
