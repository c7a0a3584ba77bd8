//! `quiverctl revoke workload|identity|list`: revoke an identity (directly or through one of
//! its registered workloads) and list the revocations in force.

use clap::Subcommand;
use quiver_api::v1;

use super::Connection;
use super::client::{self, describe};

#[derive(Debug, Subcommand)]
pub enum RevokeCommand {
    /// Revoke the identity of a registered workload (every proxy of that identity loses its
    /// certificate; the workload stops being an endpoint at once).
    Workload {
        /// The workload's name (`quiverctl get workloads`).
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Why (kept with the revocation).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Revoke an identity: spiffe://<trust-domain>/ns/<namespace>/sa/<account>.
    Identity {
        spiffe_id: String,
        /// Why (kept with the revocation).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// List the revocations in force.
    List {
        /// Output format.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
        #[command(flatten)]
        conn: Connection,
    },
}

pub async fn run(cmd: RevokeCommand) -> anyhow::Result<()> {
    let (target, namespace, reason, conn) = match cmd {
        RevokeCommand::List { output, conn } => return list(&conn, &output).await,
        RevokeCommand::Workload {
            name,
            namespace,
            reason,
            conn,
        } => (
            v1::revoke_request::Target::Workload(name),
            namespace,
            reason,
            conn,
        ),
        RevokeCommand::Identity {
            spiffe_id,
            reason,
            conn,
        } => (
            v1::revoke_request::Target::SpiffeId(spiffe_id),
            String::new(),
            reason,
            conn,
        ),
    };
    let mut c = client::connect(&conn).await?;
    let r = c
        .revoke(v1::RevokeRequest {
            target: Some(target),
            namespace,
            reason,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
        .into_inner();
    println!(
        "revoked {}: its certificates issued before {} are refused (pushed to proxies until {}); \
         join tokens made before now no longer work",
        r.spiffe_id, r.revoked_at, r.expires_at
    );
    Ok(())
}

async fn list(conn: &Connection, output: &str) -> anyhow::Result<()> {
    let mut c = client::connect(conn).await?;
    let items = c
        .list_revocations(v1::ListRevocationsRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
        .into_inner()
        .items;
    if output != "table" {
        let rows: Vec<serde_json::Value> = items
            .iter()
            .map(|r| {
                serde_json::json!({
                    "spiffeId": r.spiffe_id,
                    "notBeforeUnix": r.not_before_unix,
                    "revokedAt": r.revoked_at,
                    "expiresAt": r.expires_at,
                    "reason": r.reason,
                    "workload": r.workload,
                })
            })
            .collect();
        super::print_doc(&rows, output)?;
        return Ok(());
    }
    let rows: Vec<[&str; 5]> = items
        .iter()
        .map(|r| {
            [
                r.spiffe_id.as_str(),
                r.revoked_at.as_str(),
                r.expires_at.as_str(),
                r.workload.as_str(),
                r.reason.as_str(),
            ]
        })
        .collect();
    let header = [
        "SPIFFE ID",
        "REVOKED AT",
        "PUSHED UNTIL",
        "WORKLOAD",
        "REASON",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}
