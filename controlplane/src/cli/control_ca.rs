//! `quiver-control ca ...`: CA work done on the store itself, not through the API, by the
//! operator on a control-plane host: `export-root` takes the generated mesh root offline. It
//! opens the store with the server's own flags (--database-url, --data-dir,
//! --ca-key-encryption-key, same environment variables), so it reaches what the server uses.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::ca::{self, KeyEncryptionKey};

#[derive(Debug, Parser)]
#[command(name = "quiver-control ca", about = "Work on the mesh CA in the store")]
pub struct ControlCa {
    #[command(subcommand)]
    pub command: ControlCaCommand,
}

#[derive(Debug, Subcommand)]
pub enum ControlCaCommand {
    /// Write the mesh root's certificate and private key (PEM) into --out, to keep offline;
    /// with --remove-key, then delete the key from the store. Without the key the control
    /// plane keeps signing with its intermediate but cannot renew it (it must be renewed
    /// before it expires: start the control plane with the root given back as --ca-cert
    /// DIR/mesh-root.pem --ca-key DIR/mesh-root.key).
    ExportRoot(ExportRoot),
}

#[derive(Debug, Args)]
pub struct ExportRoot {
    /// Directory to write mesh-root.pem and mesh-root.key (0600) into; existing files are
    /// never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// Delete the sealed root key from the store once the files are written.
    #[arg(long)]
    pub remove_key: bool,
    /// Postgres URL, as given to the server. Without it, SQLite in --data-dir.
    #[arg(long, env = "QUIVER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The server's data directory (its SQLite store and generated key-encryption key).
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = "./quiver-data")]
    pub data_dir: PathBuf,
    /// The key-encryption key file the server uses (--ca-key-encryption-key).
    #[arg(long, env = "QUIVER_CA_KEY_ENCRYPTION_KEY")]
    pub ca_key_encryption_key: Option<PathBuf>,
}

/// `quiver-control ca ARGS...` (`args` starts at "ca"): parse, run, and the exit status (64
/// for bad flags, like the server).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let mut argv = vec![OsString::from("quiver-control ca")];
    argv.extend(args.into_iter().skip(1));
    let cli = match ControlCa::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(64);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: ControlCa) -> anyhow::Result<()> {
    match cli.command {
        ControlCaCommand::ExportRoot(cmd) => export_root(cmd).await,
    }
}

async fn export_root(cmd: ExportRoot) -> anyhow::Result<()> {
    if cmd.database_url.is_none() {
        // Never create an empty store, or a key-encryption key nothing was sealed with.
        anyhow::ensure!(
            cmd.data_dir.is_dir(),
            "--data-dir {}: no such directory (give the server's)",
            cmd.data_dir.display()
        );
        anyhow::ensure!(
            cmd.ca_key_encryption_key.is_some()
                || cmd.data_dir.join(ca::GENERATED_KEK_FILE).exists(),
            "--ca-key-encryption-key: not given, and {} does not exist (give the server's)",
            cmd.data_dir.join(ca::GENERATED_KEK_FILE).display()
        );
    }
    let kek = KeyEncryptionKey::load(
        cmd.ca_key_encryption_key.as_deref(),
        &cmd.data_dir,
        cmd.database_url.is_some(),
    )?;
    let store = crate::store::open(cmd.database_url.as_deref(), &cmd.data_dir)
        .await
        .context("opening the store")?;
    let done = ca::export_root(store.as_ref(), &kek, &cmd.out, cmd.remove_key).await?;
    println!("root certificate: {}", done.cert.display());
    println!("root private key: {} (mode 0600)", done.key.display());
    let until = done
        .intermediate_not_after
        .map(|t| {
            crate::stored::rfc3339(
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or_default(),
            )
        })
        .unwrap_or_else(|| "-".into());
    if done.removed {
        println!(
            "the root key is no longer in the store: the intermediate (valid until {until}) \
             cannot be renewed or the root rotated until the control plane is started with \
             --ca-cert {} --ca-key {}",
            done.cert.display(),
            done.key.display()
        );
    } else {
        println!(
            "the root key is still in the store too (run again with --remove-key into an \
             empty --out to take it out)"
        );
    }
    Ok(())
}
