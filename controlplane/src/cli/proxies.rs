//! `quiverctl proxy-status` and `quiverctl proxy-config`: what each proxy runs, as the
//! proxies reported it to the control plane (never by reaching a proxy's admin port).

use clap::Args;
use quiver_api::v1;

use super::Connection;
use super::client::{self, describe};

#[derive(Debug, Args)]
pub struct ProxyStatusArgs {
    /// Only this namespace (default: all).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output format (wide adds the identity, refusal reason and times).
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "wide", "json", "yaml"])]
    output: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct ProxyConfigArgs {
    /// The Workload's name (`quiverctl proxy-status` lists them).
    workload: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Output format.
    #[arg(short = 'o', long, default_value = "yaml", value_parser = ["yaml", "json"])]
    output: String,
    #[command(flatten)]
    conn: Connection,
}

pub async fn status(a: ProxyStatusArgs) -> anyhow::Result<()> {
    let mut c = client::connect(&a.conn).await?;
    let list = c
        .list_proxy_status(v1::ListRequest {
            namespace: a.namespace.unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
        .into_inner();
    match a.output.as_str() {
        "json" | "yaml" => super::print_doc(&list.items, &a.output)?,
        other => print!("{}", table(&list.items, other == "wide")),
    }
    Ok(())
}

/// `SYNCED`, `STALE 42s`, `REFUSED v12`: the state column.
pub fn state_text(p: &v1::ProxyStatus) -> String {
    match p.state.as_str() {
        "STALE" => format!("STALE {}", age(p.stale_seconds)),
        "REFUSED" => format!("REFUSED v{}", p.refused_version),
        other => other.to_string(),
    }
}

/// Seconds as the largest unit or two: 42s, 3m10s, 5h2m, 4d3h.
pub fn age(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn table(items: &[v1::ProxyStatus], wide: bool) -> String {
    if items.is_empty() {
        return "No proxies are registered.\n".into();
    }
    let mut header = vec![
        "NAMESPACE",
        "WORKLOAD",
        "SERVICE",
        "VERSION",
        "APPLIED",
        "LATEST",
        "STATE",
        "CERT-EXPIRES",
        "LAST-SEEN",
    ];
    if wide {
        header.extend(["IDENTITY", "APPLIED-AT", "REFUSED"]);
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for p in items {
        let mut row = vec![
            p.namespace.clone(),
            p.workload.clone(),
            p.service.clone(),
            dash(&p.proxy_version),
            p.applied_version.to_string(),
            p.latest_version.to_string(),
            state_text(p),
            dash(&p.certificate_expires_at),
            if p.last_seen.is_empty() {
                "-".into()
            } else {
                format!("{} ago", age(p.last_seen_seconds))
            },
        ];
        if wide {
            row.push(p.spiffe_id.clone());
            row.push(dash(&p.applied_at));
            row.push(if p.refused_version == 0 {
                "-".into()
            } else {
                format!("v{}: {}", p.refused_version, p.refused_reason)
            });
        }
        rows.push(row);
    }
    super::table::render(&rows)
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

pub async fn config(a: ProxyConfigArgs) -> anyhow::Result<()> {
    let mut c = client::connect(&a.conn).await?;
    let cfg = c
        .get_proxy_config(v1::GetRequest {
            namespace: a.namespace.clone(),
            name: a.workload.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
        .into_inner();
    let status = cfg.status.unwrap_or_default();
    let Some(snapshot) = cfg.snapshot else {
        anyhow::bail!(
            "the control plane has not kept a snapshot for {}/{} yet (it runs version {}, {}); \
             it is kept when the proxy reports a version it was pushed",
            a.namespace,
            a.workload,
            status.applied_version,
            state_text(&status)
        );
    };
    if snapshot.version != status.applied_version {
        // Said on stderr so the document on stdout stays machine-readable.
        eprintln!(
            "note: the proxy runs version {}; the newest snapshot the control plane kept for it \
             is version {}",
            status.applied_version, snapshot.version
        );
    }
    let doc = serde_json::json!({
        "workload": format!("{}/{}", status.namespace, status.workload),
        "state": state_text(&status),
        "appliedVersion": status.applied_version,
        "latestVersion": status.latest_version,
        "snapshot": snapshot,
    });
    super::print_doc(&doc, &a.output)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(42), "42s");
        assert_eq!(age(190), "3m10s");
        assert_eq!(age(5 * 3600 + 130), "5h2m");
        assert_eq!(age(4 * 86_400 + 3 * 3600 + 5), "4d3h");
    }
}
