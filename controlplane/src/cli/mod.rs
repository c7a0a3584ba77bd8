//! `quiverctl` commands. Each subcommand lives in its own module; this file only parses and
//! dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod ca;
pub mod certs;
mod check;
pub mod client;
mod completions;
pub mod profiles;
mod proxies;
pub mod resources;
mod revoke;
mod table;
mod tokens;
mod trust;
mod wide;

#[derive(Debug, Parser)]
#[command(name = "quiverctl", version, about = "Operate a Quiver mesh")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the control plane is and who we are. Each field left unset comes from the config
/// file's context ([`profiles`]), else the default.
#[derive(Debug, Clone, Default, Args)]
pub struct Connection {
    /// Control-plane API address (http:// for h2c, https:// for TLS) [default: the
    /// context's, else http://127.0.0.1:8080].
    #[arg(long, env = "QUIVER_SERVER", global = true)]
    pub server: Option<String>,
    /// API token (admin or viewer).
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify an https:// server with: for a control plane started
    /// with --tls-mesh-ca, the `api-ca.pem` it writes into its data directory.
    #[arg(long, visible_alias = "ca-cert", env = "QUIVER_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// A context of the config file (`quiverctl config get-contexts`) instead of the
    /// current one.
    #[arg(long, env = "QUIVER_CONTEXT", global = true)]
    pub context: Option<String>,
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
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "wide", "yaml", "json"])]
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
        /// Output format.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
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
    /// Every proxy: the snapshot version it runs against the latest pushed (SYNCED, STALE,
    /// REFUSED), its version, certificate expiry and last report.
    #[command(name = "proxy-status")]
    ProxyStatus(proxies::ProxyStatusArgs),
    /// The config one proxy runs (the snapshot it last applied, as the control plane
    /// pushed it), by Workload name.
    #[command(name = "proxy-config")]
    ProxyConfig(proxies::ProxyConfigArgs),
    /// Check the mesh: control plane and store, CA expiry, proxies in sync and their
    /// certificates, services without endpoints, references to missing services or subsets.
    /// Exits non-zero when any check fails.
    Check(check::CheckArgs),
    /// Named contexts in the config file (server, token, CA): use-context, get-contexts,
    /// set-context, current-context, delete-context.
    #[command(subcommand)]
    Config(profiles::ConfigCommand),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completion { shell: clap_complete::Shell },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Certs(c) => return certs::run(c),
        Command::Config(c) => return profiles::run(c),
        Command::Completion { shell } => {
            completions::print(shell);
            return Ok(());
        }
        other => other,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(command))
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
        Command::Status { output, conn } => tokens::status(&conn, &output).await,
        Command::TrustBundle { output, conn } => {
            trust::trust_bundle(&conn, output.as_deref()).await
        }
        Command::ProxyStatus(a) => proxies::status(a).await,
        Command::ProxyConfig(a) => proxies::config(a).await,
        Command::Check(a) => check::run(a).await,
        Command::Certs(_) | Command::Config(_) | Command::Completion { .. } => Ok(()),
    }
}

/// Print `doc` as `json` (pretty) or `yaml`, the machine-readable `-o` formats of the read
/// commands.
fn print_doc<T: serde::Serialize>(doc: &T, output: &str) -> anyhow::Result<()> {
    if output == "yaml" {
        print!("{}", serde_yaml::to_string(doc)?);
    } else {
        println!("{}", serde_json::to_string_pretty(doc)?);
    }
    Ok(())
}
