//! `quiverctl` commands. Each subcommand lives in its own module; this file only parses and
//! dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod ca;
mod canary;
pub mod certs;
mod check;
pub mod client;
mod completions;
pub mod control_ca;
mod diff;
pub mod profiles;
mod proxies;
pub mod prune;
pub mod resources;
mod revoke;
mod table;
mod tokens;
mod trust;
mod watch;
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
        /// Have the server check every document exactly as an apply would (validation,
        /// references, resourceVersion) and say what it would do; nothing is stored.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "server",
              value_parser = ["server"], value_name = "server")]
        dry_run: Option<String>,
        /// Only the documents carrying these labels (key=value[,key=value...]) are applied;
        /// with --prune, the set of resources this apply owns.
        #[arg(short = 'l', long = "selector", value_name = "KEY=VALUE")]
        selector: Option<String>,
        /// Delete resources of the applied kinds that carry the -l labels and are not in the
        /// documents (needs -l).
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// What an apply of -f FILE|DIR would change, per field. Exit status: 0 no differences,
    /// 1 differences, 2 or more an error.
    Diff {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show resources: KIND (service, route, canary, authorizationpolicy, meshconfig,
    /// workload, httproute, grpcroute) and optionally a NAME.
    Get {
        kind: String,
        name: Option<String>,
        /// Namespace (default: all namespaces when listing, "default" with a NAME).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "wide", "yaml", "json"])]
        output: String,
        /// Watch: the objects there now (ADDED), then one line per change, until interrupted.
        #[arg(short = 'w', long, conflicts_with = "output")]
        watch: bool,
        /// Watch, printing only changes from now on.
        #[arg(long, conflicts_with = "output")]
        watch_only: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Delete a resource (KIND NAME), or those the documents of -f FILE|DIR name.
    Delete {
        #[arg(required_unless_present = "files", conflicts_with = "files")]
        kind: Option<String>,
        #[arg(required_unless_present = "files", conflicts_with = "files")]
        name: Option<String>,
        /// Namespace of KIND NAME (default "default"); documents name their own.
        #[arg(short = 'n', long, conflicts_with = "files")]
        namespace: Option<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// A resource that does not exist is not an error.
        #[arg(long)]
        ignore_not_found: bool,
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
    /// Control a running canary: pause, resume, promote now, abort.
    #[command(subcommand)]
    Canary(canary::CanaryCommand),
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

/// A command's exit status when it is not simply success or failure (`diff`: 1 means "there
/// are differences", 2 an error). Returned as the error; the binary exits with it and prints
/// nothing more (the command has said what it had to).
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

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
        Command::Apply {
            files,
            dry_run,
            selector,
            prune,
            conn,
        } => {
            let selector = match selector {
                Some(s) => Some(prune::Selector::parse(&s)?),
                None if prune => anyhow::bail!(
                    "--prune needs -l/--selector KEY=VALUE: only resources carrying those \
                     labels are pruned"
                ),
                None => None,
            };
            let opts = resources::ApplyOptions {
                dry_run: dry_run.is_some(),
                selector,
                prune,
            };
            resources::apply_with(&conn, &files, &opts).await
        }
        Command::Diff { files, conn } => diff::run(&conn, &files).await,
        Command::Get {
            kind,
            name,
            namespace,
            output,
            watch,
            watch_only,
            conn,
        } => {
            if watch || watch_only {
                watch::run(
                    &conn,
                    &kind,
                    name.as_deref(),
                    namespace.as_deref(),
                    watch_only,
                )
                .await
            } else {
                resources::get(&conn, &kind, name.as_deref(), namespace.as_deref(), &output).await
            }
        }
        Command::Delete {
            kind,
            name,
            namespace,
            files,
            ignore_not_found,
            conn,
        } => match (kind, name) {
            (Some(kind), Some(name)) => {
                let ns = namespace.as_deref().unwrap_or("default");
                resources::delete(&conn, &kind, ns, &name, ignore_not_found).await
            }
            _ => resources::delete_files(&conn, &files, ignore_not_found).await,
        },
        Command::Token(c) => tokens::token(c).await,
        Command::JoinToken(c) => tokens::join_token(c).await,
        Command::Revoke(c) => revoke::run(c).await,
        Command::Canary(c) => canary::run(c).await,
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
