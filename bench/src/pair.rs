//! The proxy pair under test: two child processes of the release `quiver-proxy` binary.
//! B fronts the backends (inbound http1, grpc, tcp); A has one explicit outbound listener per
//! protocol, all leading to B's QUIC address, which must prove B's SPIFFE id.
//!
//! Children are killed when their [`ProxyProcess`] drops, so an error, a panic or Ctrl-C in the
//! benchmark never leaves a proxy running.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::backends::Backends;
use super::procstat;
use quiver_tests::harness::identity_yaml;
use quiver_tests::pki::{Pki, temp_dir};

/// How to start the pair.
#[derive(Debug, Clone)]
pub struct PairOptions {
    pub proxy_bin: PathBuf,
    /// `tuning.workers` of each proxy.
    pub workers: usize,
    /// Extra `tuning:` keys for both proxies (YAML scalars, verbatim).
    pub tuning: Vec<(String, String)>,
    /// `RUST_LOG` for the proxies (their logs go to files in the pair's directory).
    pub log: String,
    /// Keep configs, logs and certificates after the pair stops (their paths are printed).
    pub keep_files: bool,
    /// Give the pair the `policy` scenario's config: a Route with five match rules, an 80/20
    /// split and retries on A, an AuthorizationPolicy on B.
    pub policy: bool,
}

/// A's policy for the `policy` scenario. The last rule matches the load (`GET /`); the four
/// before it are evaluated and rejected on every request, as a realistic route table would.
/// Both subsets select B (one endpoint), so the split costs what a split costs without
/// changing where requests land.
fn policy_a() -> String {
    format!(
        "routes:
  - service: {HTTP_SERVICE}
    rules:
      - {{name: admin, match: {{path: {{prefix: /admin/}}}}, backends: [{{subset: stable, weight: 100}}]}}
      - {{name: items, match: {{path: {{regex: \"/items/[0-9]+\"}}}}, backends: [{{subset: stable, weight: 100}}]}}
      - {{name: testers, match: {{headers: [{{name: x-user, exact: tester}}]}}, backends: [{{subset: canary, weight: 100}}]}}
      - {{name: writes, match: {{methods: [POST, PUT, PATCH, DELETE]}}, backends: [{{subset: stable, weight: 100}}]}}
      - name: split
        match: {{path: {{prefix: /}}}}
        backends: [{{subset: stable, weight: 80}}, {{subset: canary, weight: 20}}]
        retries: {{attempts: 3, retryOn: [gateway-error, reset, connect-failure]}}
"
    )
}

/// B's authorization for the `policy` scenario: only A may call, and only with GET/HEAD.
fn policy_b(a_id: &str) -> String {
    format!(
        "authorization:
  - name: a-only
    service: {HTTP_SERVICE}
    allow:
      - {{sources: [\"{a_id}\"], methods: [GET, HEAD]}}
"
    )
}

/// One running `quiver-proxy` child.
pub struct ProxyProcess {
    pub name: &'static str,
    pub admin: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl ProxyProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // SIGKILL: the benchmark has nothing to drain, and the pair must never outlive it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where apps enter the pair.
#[derive(Debug, Clone, Copy)]
pub struct Entries {
    /// A's outbound HTTP/1.1 listener (also takes h2c).
    pub http: SocketAddr,
    /// A's outbound gRPC listener.
    pub grpc: SocketAddr,
    /// A's outbound TCP listener (each connection becomes an HTTP/3 CONNECT stream to B).
    pub tcp: SocketAddr,
    /// B's QUIC (HTTP/3 + mTLS) address.
    pub b_quic: SocketAddr,
}

/// A started, ready pair. Dropping it kills both proxies and removes its files.
pub struct ProxyPair {
    pub a: ProxyProcess,
    pub b: ProxyProcess,
    pub entries: Entries,
    pub dir: PathBuf,
    pub pki_dir: PathBuf,
    keep_files: bool,
}

impl Drop for ProxyPair {
    fn drop(&mut self) {
        // Fields drop after this body, so kill the children first, then remove their files.
        let _ = self.a.child.kill();
        let _ = self.b.child.kill();
        let _ = self.a.child.wait();
        let _ = self.b.child.wait();
        if self.keep_files {
            eprintln!(
                "kept proxy configs and logs in {}, certificates in {}",
                self.dir.display(),
                self.pki_dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_dir_all(&self.pki_dir);
        }
    }
}

// Service names and ports B serves; A's listeners name them.
const HTTP_SERVICE: &str = "bench-http";
const GRPC_SERVICE: &str = "bench-grpc";
const TCP_SERVICE: &str = "bench-sink";

impl ProxyPair {
    /// Mint identities, write both configs, start B then A, and wait until both are ready.
    pub async fn start(opts: &PairOptions, backends: &Backends) -> anyhow::Result<Self> {
        if !opts.proxy_bin.is_file() {
            bail!(
                "proxy binary {} not found: run `cargo build --release --workspace` or pass --proxy-bin",
                opts.proxy_bin.display()
            );
        }
        let pki = Pki::new();
        let dir = temp_dir("bench");
        let b_quic = loopback(free_udp_port()?);
        let [http, grpc, tcp, a_admin, b_admin] = free_tcp_ports()?;
        let entries = Entries {
            http,
            grpc,
            tcp,
            b_quic,
        };
        let tuning = tuning_yaml(opts);
        let b_yaml = format!(
            "{id}listen: {{quic: \"{b_quic}\", admin: \"{b_admin}\"}}
drain_timeout: 1s
inbound:
  - {{service: {HTTP_SERVICE}, port: 8080, protocol: http1, app: \"{http}\"}}
  - {{service: {GRPC_SERVICE}, port: 50051, protocol: grpc, app: \"{grpc}\"}}
  - {{service: {TCP_SERVICE}, port: 9000, protocol: tcp, app: \"{sink}\"}}
{tuning}{policy}",
            policy = if opts.policy {
                policy_b(pki.id("a").as_str())
            } else {
                String::new()
            },
            id = identity_yaml(&pki.issue("b")),
            http = backends.http,
            grpc = backends.grpc,
            sink = backends.sink,
        );
        let b_id = pki.id("b");
        let a_yaml = format!(
            "{id}listen: {{quic: \"127.0.0.1:0\", admin: \"{a_admin}\"}}
drain_timeout: 1s
outbound:
  - {{listen: \"{http}\", service: {HTTP_SERVICE}, port: 8080, protocol: http1}}
  - {{listen: \"{grpc}\", service: {GRPC_SERVICE}, port: 50051, protocol: grpc}}
  - {{listen: \"{tcp}\", service: {TCP_SERVICE}, port: 9000, protocol: tcp}}
services:
  - {{name: {HTTP_SERVICE}, subsets: [{{name: stable, labels: {{track: stable}}}}, {{name: canary, labels: {{}}}}], endpoints: [{{address: \"{b_quic}\", identity: \"{b_id}\", labels: {{track: stable}}}}]}}
  - {{name: {GRPC_SERVICE}, endpoints: [{{address: \"{b_quic}\", identity: \"{b_id}\"}}]}}
  - {{name: {TCP_SERVICE}, endpoints: [{{address: \"{b_quic}\", identity: \"{b_id}\"}}]}}
{tuning}{policy}",
            policy = if opts.policy { policy_a() } else { String::new() },
            id = identity_yaml(&pki.issue("a")),
            http = entries.http,
            grpc = entries.grpc,
            tcp = entries.tcp,
        );
        let b = spawn(opts, &dir, "b", &b_yaml, b_admin)?;
        let a = spawn(opts, &dir, "a", &a_yaml, a_admin);
        // Build the pair as soon as both children exist, so a failure below still kills them.
        let a = match a {
            Ok(a) => a,
            Err(e) => {
                drop(b);
                return Err(e);
            }
        };
        let mut pair = Self {
            a,
            b,
            entries,
            dir,
            pki_dir: pki.dir.clone(),
            keep_files: opts.keep_files,
        };
        wait_ready(&mut pair.b).await?;
        wait_ready(&mut pair.a).await?;
        Ok(pair)
    }

    /// utime + stime of both proxies, in clock ticks.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        Ok(procstat::cpu_ticks(self.a.pid())? + procstat::cpu_ticks(self.b.pid())?)
    }

    /// The larger of the two proxies' peak RSS, in MiB.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        let a = procstat::peak_rss_kib(self.a.pid())?;
        let b = procstat::peak_rss_kib(self.b.pid())?;
        Ok(a.max(b) as f64 / 1024.0)
    }

    /// Fail with the proxies' log tails if either has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in [&mut self.a, &mut self.b] {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "proxy {} exited ({status}); log {}:\n{}",
                    p.name,
                    p.log.display(),
                    p.log_tail()
                );
            }
        }
        Ok(())
    }
}

fn tuning_yaml(opts: &PairOptions) -> String {
    let mut keys = BTreeMap::new();
    keys.insert("workers".to_string(), opts.workers.to_string());
    for (k, v) in &opts.tuning {
        keys.insert(k.clone(), v.clone());
    }
    let mut y = String::from("tuning:\n");
    for (k, v) in keys {
        y.push_str(&format!("  {k}: {v}\n"));
    }
    y
}

fn spawn(
    opts: &PairOptions,
    dir: &Path,
    name: &'static str,
    yaml: &str,
    admin: SocketAddr,
) -> anyhow::Result<ProxyProcess> {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
    let log = dir.join(format!("{name}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(&opts.proxy_bin)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", &opts.log)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", opts.proxy_bin.display()))?;
    Ok(ProxyProcess {
        name,
        admin,
        log,
        child,
    })
}

/// Poll `/readyz` until 200; fail early with the log if the child exits.
async fn wait_ready(p: &mut ProxyProcess) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = p.child.try_wait()? {
            bail!(
                "proxy {} exited during start-up ({status}); log {}:\n{}",
                p.name,
                p.log.display(),
                p.log_tail()
            );
        }
        if admin_status(p.admin, "/readyz").await == Some(200) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "proxy {} not ready on {} after 15s; log {}:\n{}",
                p.name,
                p.admin,
                p.log.display(),
                p.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status code of `GET path` on an admin listener, or None if it does not answer.
async fn admin_status(admin: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let head = std::str::from_utf8(buf.get(..12)?).ok()?;
        head.strip_prefix("HTTP/1.1 ")?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// The proxies run in other processes, so their ports are chosen here: ask the kernel for a
// free one and release it. Another process could take it in between; start-up then fails
// with the proxy's "address in use" in the error, and a rerun picks new ports.
pub(crate) fn free_tcp_ports<const N: usize>() -> anyhow::Result<[SocketAddr; N]> {
    // Hold every listener until all are chosen, so the kernel cannot hand out one port twice.
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = [loopback(0); N];
    for (slot, l) in out.iter_mut().zip(&listeners) {
        *slot = l.local_addr()?;
    }
    Ok(out)
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}
