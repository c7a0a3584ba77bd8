//! `quiverctl token create|list|revoke`, `quiverctl join-token create` and `quiverctl status`.

use clap::Subcommand;
use quiver_api::v1;

use super::Connection;
use super::client::{self, describe};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token. The secret is printed once; only its hash is stored.
    Create {
        /// admin (read-write) or viewer (read-only).
        #[arg(long, value_parser = ["admin", "viewer"])]
        role: String,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// How long the token is accepted, e.g. 30d (at most 365d). Default: until revoked.
        #[arg(long, default_value = "")]
        ttl: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// List API and join tokens: id, kind, role or identity, expiry. Never the secrets.
    List {
        /// Output format.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Revoke a token by the id `token list` shows: refused from then on.
    Revoke {
        id: String,
        /// api or join.
        #[arg(long, default_value = "api", value_parser = ["api", "join"])]
        kind: String,
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a join token a proxy exchanges (with a CSR) for its certificate.
    Create {
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// How long the token can be used, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many proxies may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[command(flatten)]
        conn: Connection,
    },
}

pub async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            role,
            description,
            ttl,
            conn,
        } => {
            let mut c = client::connect(&conn).await?;
            let resp = c
                .create_api_token(v1::CreateApiTokenRequest {
                    role,
                    description,
                    ttl,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
                .into_inner();
            let expires = if resp.expires_at.is_empty() {
                "does not expire".to_string()
            } else {
                format!("expires {}", resp.expires_at)
            };
            eprintln!(
                "created {} token {} ({expires}), shown once:",
                resp.role, resp.id
            );
            println!("{}", resp.token);
        }
        TokenCommand::List { output, conn } => {
            let mut c = client::connect(&conn).await?;
            let list = c
                .list_tokens(v1::ListTokensRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
                .into_inner();
            if output != "table" {
                let rows: Vec<serde_json::Value> = list
                    .items
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "kind": t.kind,
                            "id": t.id,
                            "role": t.role,
                            "description": t.description,
                            "spiffeId": t.spiffe_id,
                            "createdAt": t.created_at,
                            "expiresAt": t.expires_at,
                            "uses": t.uses,
                            "maxUses": t.max_uses,
                            "expired": t.expired,
                        })
                    })
                    .collect();
                super::print_doc(&rows, &output)?;
                return Ok(());
            }
            println!(
                "{:<14} {:<5} {:<8} {:<26} {:<22} {:<8} WHAT",
                "ID", "KIND", "ROLE", "EXPIRES", "CREATED", "STATE"
            );
            for t in list.items {
                let what = if t.kind == "join" {
                    format!("{} ({}/{} uses)", t.spiffe_id, t.uses, t.max_uses)
                } else {
                    t.description
                };
                let expires = if t.expires_at.is_empty() {
                    "never"
                } else {
                    t.expires_at.as_str()
                };
                let state = if t.expired { "expired" } else { "active" };
                let role = if t.role.is_empty() { "-" } else { &t.role };
                println!(
                    "{:<14} {:<5} {:<8} {:<26} {:<22} {:<8} {what}",
                    t.id, t.kind, role, expires, t.created_at, state
                );
            }
        }
        TokenCommand::Revoke { id, kind, conn } => {
            let mut c = client::connect(&conn).await?;
            c.revoke_token(v1::RevokeTokenRequest {
                kind: kind.clone(),
                id: id.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?;
            eprintln!("revoked {kind} token {id}");
        }
    }
    Ok(())
}

pub async fn join_token(cmd: JoinTokenCommand) -> anyhow::Result<()> {
    let JoinTokenCommand::Create {
        namespace,
        service_account,
        ttl,
        uses,
        conn,
    } = cmd;
    let mut c = client::connect(&conn).await?;
    let resp = c
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace,
            service_account,
            ttl,
            uses,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
        .into_inner();
    eprintln!(
        "join token {} for {} ({} use(s), expires {}), shown once:",
        resp.id, resp.spiffe_id, resp.uses, resp.expires_at
    );
    println!("{}", resp.token);
    Ok(())
}

pub async fn status(conn: &Connection, output: &str) -> anyhow::Result<()> {
    let target = super::profiles::resolve(conn)?;
    let mut c = client::connect_to(&target).await?;
    let s = c
        .status(v1::StatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
        .into_inner();
    if output == "json" || output == "yaml" {
        let doc = serde_json::json!({
            "server": target.server,
            "context": target.context,
            "version": s.version,
            "store": s.store,
            "trustDomain": s.trust_domain,
            "resourceVersion": s.resource_version,
            "watchers": s.watchers,
            "startedAt": s.started_at,
            "role": s.role,
            "counts": s.counts,
        });
        super::print_doc(&doc, output)?;
        return Ok(());
    }
    println!("server:               {}", target.server);
    if let Some(ctx) = &target.context {
        println!("context:              {ctx}");
    }
    println!("version:              {}", s.version);
    println!("store:                {}", s.store);
    println!("trust domain:         {}", s.trust_domain);
    println!("resourceVersion:      {}", s.resource_version);
    println!("watchers:             {}", s.watchers);
    println!("started:              {}", s.started_at);
    println!("your role:            {}", s.role);
    for (kind, n) in &s.counts {
        println!("{:<22}{n}", format!("{kind}:"));
    }
    Ok(())
}
