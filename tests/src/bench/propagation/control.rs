//! The control plane under test: a child process of the shipped `quiver-control` binary, on a
//! scratch store (SQLite in a temp dir, or a Postgres database created for the run and
//! dropped after it). Its RSS is read from `/proc/PID/status`, so it is the control plane's
//! own, not the watchers'.
//!
//! The child is SIGKILLed and its files removed when [`ControlPlane`] drops; the scratch
//! database is dropped (with `FORCE`) when [`ScratchDatabase`] drops, so an error, a panic or
//! Ctrl-C never leaves either behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use quiver_api::v1::{self, mesh_admin_client::MeshAdminClient};
use sqlx::Connection;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::bench::pair::free_tcp_ports;
use crate::bench::procstat;
use crate::pki::temp_dir;

/// The admin token the child is started with (`QUIVER_ADMIN_TOKEN`).
const ADMIN_TOKEN: &str = "qvr_bench-admin";

/// How long start-up (Postgres migrations included) may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Adds `authorization: Bearer <token>` to every admin call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A MeshAdmin client holding the admin token.
pub type Admin = MeshAdminClient<InterceptedService<Channel, Bearer>>;

/// A running `quiver-control` child.
pub struct ControlPlane {
    /// The API port (MeshAdmin, h2c).
    pub api: SocketAddr,
    /// The discovery listener (MeshDiscovery over TLS).
    pub discovery: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// The trust bundle (PEM), read from the API once it answered.
    pub bundle_pem: String,
    admin: Admin,
    dir: PathBuf,
    child: Child,
}

impl ControlPlane {
    /// Start `bin` on free loopback ports with SQLite in a temp dir (`database_url` None) or
    /// on Postgres, and wait until the admin API answers.
    pub async fn start(bin: &Path, database_url: Option<&str>, log: &str) -> anyhow::Result<Self> {
        if !bin.is_file() {
            bail!(
                "control-plane binary {} not found: run `cargo build --release --workspace` or \
                 pass --control-bin",
                bin.display()
            );
        }
        let dir = temp_dir("propagation");
        let [api, discovery] = free_tcp_ports()?;
        let log_path = dir.join("quiver-control.log");
        let log_file = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--listen={api}"))
            .arg(format!("--discovery-listen={discovery}"))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            // Registered endpoints must not lapse mid-run: a sweep would be one more change
            // racing the measured one.
            .arg("--lease-ttl=1h")
            .env("QUIVER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // In the environment, not argv, so a password does not show in `ps`; removed when
        // SQLite is wanted, whatever the caller's environment says.
        match database_url {
            Some(url) => cmd.env("QUIVER_DATABASE_URL", url),
            None => cmd.env_remove("QUIVER_DATABASE_URL"),
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let auth = format!("Bearer {ADMIN_TOKEN}")
            .parse()
            .context("admin token header")?;
        let channel = Channel::from_shared(format!("http://{api}"))?.connect_lazy();
        let mut cp = Self {
            api,
            discovery,
            log: log_path,
            bundle_pem: String::new(),
            admin: MeshAdminClient::with_interceptor(channel, Bearer(auth)),
            dir,
            child,
        };
        cp.bundle_pem = cp.wait_ready().await?;
        Ok(cp)
    }

    /// Poll the admin API (GetTrustBundle) until it answers; fail early if the child exits.
    async fn wait_ready(&mut self) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            self.check_alive()?;
            let call = self.admin.get_trust_bundle(v1::GetTrustBundleRequest {});
            match tokio::time::timeout(Duration::from_secs(2), call).await {
                Ok(Ok(bundle)) => return Ok(bundle.into_inner().pem),
                _ if tokio::time::Instant::now() > deadline => bail!(
                    "control plane not answering on {} after {START_TIMEOUT:?}; log {}:\n{}",
                    self.api,
                    self.log.display(),
                    self.log_tail()
                ),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A MeshAdmin client with the admin token.
    pub fn admin(&self) -> Admin {
        self.admin.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Current resident set size (VmRSS), MiB.
    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        Ok(procstat::rss_kib(self.pid())? as f64 / 1024.0)
    }

    /// Peak resident set size (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        Ok(procstat::peak_rss_kib(self.pid())? as f64 / 1024.0)
    }

    /// Fail with the log tail if the child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "quiver-control exited ({status}); log {}:\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // SIGKILL: nothing to drain, and the child must never outlive the benchmark.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Postgres database made for one run (a benchmark, a test) next to the one `server_url` names (which must let
/// its user CREATE DATABASE), dropped with its connections when this value drops.
pub struct ScratchDatabase {
    /// The URL of the new database.
    pub url: String,
    name: String,
    server_url: String,
}

impl ScratchDatabase {
    pub async fn create(server_url: &str) -> anyhow::Result<Self> {
        // Unique across processes (pid) and across tests running at once in one (random).
        let name = format!(
            "quiver_scratch_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let url = sibling_database_url(server_url, &name)?;
        let mut conn = sqlx::PgConnection::connect(server_url)
            .await
            .with_context(|| format!("connecting to Postgres at {}", redact(server_url)))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let _ = conn.close().await;
        Ok(Self {
            url,
            name,
            server_url: server_url.to_string(),
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Drop may run inside the benchmark's runtime, which must not block on itself: a
        // short-lived runtime on its own thread does the DROP.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&server_url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not drop scratch database {}; drop it by hand",
                self.name
            );
        }
    }
}

/// `postgres://u@h:5432/postgres?x=y` with the database part replaced by `name`.
fn sibling_database_url(server_url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server_url, None),
    };
    let authority = base
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("--database-url {}: not a URL", redact(server_url)))?;
    let head = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{head}/{name}?{q}"),
        None => format!("{head}/{name}"),
    })
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_database_sits_next_to_the_named_one() {
        let url = |s| sibling_database_url(s, "scratch").unwrap();
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/scratch"
        );
        assert_eq!(
            url("postgres://u:pw@db/quiver?sslmode=disable"),
            "postgres://u:pw@db/scratch?sslmode=disable"
        );
        assert_eq!(url("postgres://db:5432"), "postgres://db:5432/scratch");
        assert!(sibling_database_url("nonsense", "x").is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://u:secret@db/q"), "postgres://***@db/q");
        assert_eq!(redact("postgres://db/q"), "postgres://db/q");
    }
}
