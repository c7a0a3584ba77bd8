//! `quiverctl ca rotate|retire|status`: root rotation of the generated mesh CA. `rotate` adds
//! a new root (proxies move to it as they renew), `retire` drops the old one once no proxy
//! holds a certificate from it, `status` shows roots, intermediate, expiry and phase.

use clap::Subcommand;
use quiver_api::v1;

use super::Connection;
use super::client::{self, describe};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Start a root rotation: a new root and intermediate sign every SVID from now on; the
    /// trust bundle pushed to proxies holds the new root and the old one until `retire`.
    Rotate {
        /// Also retire the old root in the same call (refused, like `retire`, while proxies
        /// still hold certificates from it, unless --force).
        #[arg(long)]
        retire_old: bool,
        /// With --retire-old: retire even though proxies still hold old-root certificates.
        #[arg(long, requires = "retire_old")]
        force: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// End a root rotation: the old root leaves the trust bundle. Refused while proxies hold
    /// unexpired certificates from it that they have not renewed, naming them.
    Retire {
        /// Retire even so: proxies still on the old root are refused by every peer.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show the roots, the intermediate, their expiry and the rotation phase.
    Status {
        /// Output format (json and yaml include the certificates' PEM).
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
        #[command(flatten)]
        conn: Connection,
    },
}

pub async fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Rotate {
            retire_old,
            force,
            conn,
        } => {
            let mut c = client::connect(&conn).await?;
            let status = c
                .rotate_ca(v1::RotateCaRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
                .into_inner();
            println!(
                "rotated: new SVIDs come from the new root; proxies get the new bundle now and \
                 move to the new root as they renew"
            );
            if !retire_old {
                print_status(&status);
                println!("run `quiverctl ca retire` once `quiverctl ca status` shows no holders");
                return Ok(());
            }
            retire(&conn, force).await
        }
        CaCommand::Retire { force, conn } => retire(&conn, force).await,
        CaCommand::Status { output, conn } => {
            let mut c = client::connect(&conn).await?;
            let status = c
                .get_ca_status(v1::GetCaStatusRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
                .into_inner();
            if output != "table" {
                super::print_doc(&to_json(&status), &output)?;
            } else {
                print_status(&status);
            }
            Ok(())
        }
    }
}

async fn retire(conn: &Connection, force: bool) -> anyhow::Result<()> {
    let mut c = client::connect(conn).await?;
    let status = c
        .retire_ca(v1::RetireCaRequest { force })
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
        .into_inner();
    println!(
        "retired {} old root(s): the trust bundle is the new root only",
        status.retired
    );
    print_status(&status);
    Ok(())
}

fn print_status(s: &v1::CaStatus) {
    println!("phase: {}", s.phase);
    if s.certificates.iter().any(|c| c.role == "root-offline") {
        let until = s
            .certificates
            .iter()
            .find(|c| c.role == "intermediate")
            .map_or("-", |c| c.not_after.as_str());
        println!(
            "root key: OFFLINE (exported): the intermediate expires {until} and cannot be \
             renewed until the control plane is started with the root given back \
             (--ca-cert/--ca-key)"
        );
    }
    println!(
        "{:<14} {:<24} {:<20} SUBJECT",
        "ROLE", "NOT AFTER", "SHA-256"
    );
    for c in &s.certificates {
        println!(
            "{:<14} {:<24} {:<20} {}",
            c.role,
            c.not_after,
            c.fingerprint.get(..16).unwrap_or(&c.fingerprint),
            c.subject
        );
    }
    if !s.old_root_holders.is_empty() {
        println!("still on the old root (unexpired, not renewed since the rotation):");
        for h in &s.old_root_holders {
            println!("  {} ({} certificate(s))", h.spiffe_id, h.certificates);
        }
    }
}

fn to_json(s: &v1::CaStatus) -> serde_json::Value {
    serde_json::json!({
        "phase": s.phase,
        "certificates": s.certificates.iter().map(|c| serde_json::json!({
            "role": c.role,
            "subject": c.subject,
            "fingerprint": c.fingerprint,
            "notBefore": c.not_before,
            "notAfter": c.not_after,
            "pem": c.pem,
        })).collect::<Vec<_>>(),
        "oldRootHolders": s.old_root_holders.iter().map(|h| serde_json::json!({
            "spiffeId": h.spiffe_id,
            "certificates": h.certificates,
        })).collect::<Vec<_>>(),
    })
}
