//! The control plane under test: a child process of the shipped `quiver-control` binary, on a
//! scratch store (SQLite in a temp dir, or a Postgres database created for the run and
//! dropped after it). Its RSS is read from `/proc/PID/status`, so it is the control plane's
//! own, not the watchers'.
//!
//! The child is SIGKILLed and its files removed when [`ControlPlane`] drops; the scratch
//! database is dropped (with `FORCE`) when [`ScratchDatabase`] drops, so an error, a panic or
//! Ctrl-C never leaves either behind. The scratch database is the test kit's
//! ([`quiver_tests::scratch`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use quiver_api::v1::{self, mesh_admin_client::MeshAdminClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::pair::free_tcp_ports;
use crate::procstat;
use quiver_tests::pki::temp_dir;

/// The admin token the child is started with (`QUIVER_ADMIN_TOKEN`).
const ADMIN_TOKEN: &str = "qvr_bench-admin-token-at-least-32-chars";

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
            // The benchmark registers its `reviews` endpoints at made-up 10.0.x.y addresses
            // from one identity: grant that network and lift the per-identity limit.
            .arg("--registration-exception=spiffe://mesh.local/ns/shop/sa/reviews=10.0.0.0/16")
            .arg("--max-endpoints-per-identity=1000000")
            .env("QUIVER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // In the environment, not argv, so a password does not show in `ps`; removed when
        // SQLite is wanted, whatever the caller's environment says.
        match database_url {
            Some(url) => cmd.env("QUIVER_DATABASE_URL", url).env(
                "QUIVER_CA_KEY_ENCRYPTION_KEY",
                quiver_tests::scratch::ca_key_encryption_key(&dir),
            ),
            None => cmd
                .env_remove("QUIVER_DATABASE_URL")
                .env_remove("QUIVER_CA_KEY_ENCRYPTION_KEY"),
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
