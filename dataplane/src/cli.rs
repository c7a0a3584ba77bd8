//! The `quiver-proxy` command line, as a library function so other binaries (the demo's
//! `quiver-control sidecar`) run exactly the same proxy.
//!
//! Two modes:
//! - static: `--config FILE` with an `identity:` section and the services to call;
//! - control plane: `--control-plane HOST:PORT --join-token T --ca-cert FILE --service NAME`
//!   (flags, `QUIVER_*` environment variables, or a `control_plane:` section in `--config`;
//!   flags win over the file).

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{ControlPlaneFile, Overrides, ProxyConfig};
use crate::snapshot::Protocol;

/// Quiver's sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "quiver-proxy", version, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (YAML). See docs/proxy-config.md. Optional in control-plane mode.
    #[arg(long, short = 'c', env = "QUIVER_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the config, print every problem with its field, and exit (like `nginx -t`).
    #[arg(long)]
    check: bool,
    /// How often to re-read a static config file for live changes; 0s turns it off.
    #[arg(long, default_value = "5s", value_parser = quiver_api::duration::parse)]
    reload_interval: Duration,
    /// Log as JSON lines instead of text (same as --log-format json).
    #[arg(long, env = "QUIVER_LOG_JSON")]
    log_json: bool,
    /// Log format: text or json. Access logs (one line per request) use the `access`
    /// target: RUST_LOG=info,access=off silences them.
    #[arg(long, env = "QUIVER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Control-plane mode: the discovery listener, HOST:PORT (usually port 15010).
    #[arg(
        long,
        env = "QUIVER_CONTROL_PLANE",
        help_heading = "Control-plane mode"
    )]
    control_plane: Option<String>,
    /// One-time join token (`quiverctl join-token create`).
    #[arg(
        long,
        env = "QUIVER_JOIN_TOKEN",
        hide_env_values = true,
        help_heading = "Control-plane mode"
    )]
    join_token: Option<String>,
    /// The mesh CA certificate (PEM), from `quiverctl trust-bundle`: the control plane must
    /// present a certificate that chains to it.
    #[arg(long, env = "QUIVER_CA_CERT", help_heading = "Control-plane mode")]
    ca_cert: Option<PathBuf>,
    /// The mesh's trust domain [default: mesh.local].
    #[arg(long, env = "QUIVER_TRUST_DOMAIN", help_heading = "Control-plane mode")]
    trust_domain: Option<String>,
    /// The SPIFFE id the control plane must prove; any other certificate of the mesh is
    /// refused as the control plane [default:
    /// spiffe://<trust domain>/ns/quiver-system/sa/control-plane].
    #[arg(
        long,
        env = "QUIVER_CONTROL_PLANE_ID",
        help_heading = "Control-plane mode"
    )]
    control_plane_id: Option<String>,
    /// The Service this workload is an endpoint of (its ports come from the Service).
    #[arg(long, env = "QUIVER_SERVICE", help_heading = "Control-plane mode")]
    service: Option<String>,
    /// Workload label KEY=VALUE, repeatable (e.g. --label version=v2); Service subsets
    /// select on them.
    #[arg(
        long = "label",
        env = "QUIVER_LABELS",
        value_delimiter = ',',
        value_parser = parse_label,
        help_heading = "Control-plane mode"
    )]
    labels: Vec<(String, String)>,
    /// IP:PORT peers dial to reach this proxy [default: the QUIC address, or the local IP
    /// that routes to the control plane when that is 0.0.0.0].
    #[arg(long, env = "QUIVER_ADVERTISE", help_heading = "Control-plane mode")]
    advertise: Option<SocketAddr>,
    /// Where the local app listens: inbound requests go to APP_HOST:targetPort
    /// [default: 127.0.0.1].
    #[arg(long, env = "QUIVER_APP_HOST", help_heading = "Control-plane mode")]
    app_host: Option<IpAddr>,
    /// Spans held for the control plane while it is slow or away; beyond that new spans are
    /// dropped and counted (quiver_spans_dropped_total) [default: 8192].
    #[arg(long, env = "QUIVER_SPAN_QUEUE", help_heading = "Control-plane mode")]
    span_queue: Option<usize>,
    /// How often per-destination request counts (what canaries are judged by) go to the
    /// control plane, 1s..60s [default: 10s].
    #[arg(long, env = "QUIVER_EDGE_INTERVAL", help_heading = "Control-plane mode", value_parser = quiver_api::duration::parse)]
    edge_interval: Option<std::time::Duration>,

    /// UDP address for QUIC [default: 0.0.0.0:15443].
    #[arg(long, env = "QUIVER_QUIC_LISTEN", help_heading = "Listeners")]
    quic_listen: Option<SocketAddr>,
    /// Admin HTTP address [default: 127.0.0.1:15020].
    #[arg(long, env = "QUIVER_ADMIN_LISTEN", help_heading = "Listeners")]
    admin_listen: Option<SocketAddr>,
    /// HTTP proxy listener [default: 127.0.0.1:15001 in control-plane mode, off in static].
    #[arg(long, env = "QUIVER_HTTP_PROXY_LISTEN", help_heading = "Listeners")]
    http_proxy_listen: Option<SocketAddr>,
    /// Explicit upstream LISTEN=SERVICE[:PORT][/PROTOCOL], repeatable, e.g.
    /// 127.0.0.1:7001=catalog/http1 or 127.0.0.1:7002=ratings:9090/grpc.
    #[arg(long = "outbound", value_parser = parse_outbound, help_heading = "Listeners")]
    outbound: Vec<(SocketAddr, String, Option<u16>, Protocol)>,
    /// Transparent capture: serve the listeners `quiver-proxy capture install` redirects the
    /// workload's TCP and DNS to (127.0.0.1:15002 outbound, 0.0.0.0:15006 inbound, DNS on
    /// 127.0.0.1:15053; the config file's `capture:` section changes them).
    #[arg(long, env = "QUIVER_CAPTURE", help_heading = "Capture")]
    capture: bool,
    /// Captured connections to destinations outside the mesh: allow (passed through as plain
    /// TCP) or deny; both are counted (quiver_capture_connections_total) [default: allow].
    #[arg(long, env = "QUIVER_EGRESS", value_parser = ["allow", "deny"], help_heading = "Capture")]
    egress: Option<String>,
    /// Plaintext TCP from outside the pod to the workload's ports: refuse (strict: only mTLS
    /// mesh traffic reaches the app) or allow (permissive) [default: refuse].
    #[arg(long, env = "QUIVER_INBOUND_PLAINTEXT", value_parser = ["refuse", "allow"], help_heading = "Capture")]
    inbound_plaintext: Option<String>,
    /// The app's probes the admin listener checks for kubelet, as JSON: `/app-health/...`
    /// paths to Kubernetes probe handlers (`httpGet`, `tcpSocket`, `grpc`, `timeoutSeconds`);
    /// the sidecar injector sets it (docs/deploy.md, "Probes").
    #[arg(long, env = "QUIVER_APP_PROBES", value_parser = parse_json)]
    app_probes: Option<serde_json::Value>,
    /// Where this proxy runs, for locality-aware balancing.
    #[arg(long, env = "QUIVER_ZONE")]
    zone: Option<String>,
    /// How long in-flight requests may finish after SIGTERM [default: 10s].
    #[arg(long, value_parser = quiver_api::duration::parse)]
    drain_timeout: Option<Duration>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Transparent capture's nftables rules for this network namespace (docs/deploy.md).
    #[command(subcommand)]
    Capture(CaptureCommand),
}

#[derive(Debug, clap::Subcommand)]
enum CaptureCommand {
    /// Redirect the workload's TCP (and DNS) to its sidecar. Run once per pod or network
    /// namespace, with NET_ADMIN, before the app starts; running it again replaces the rules.
    Install(CaptureArgs),
    /// Take the rules out (nothing to do when they are not there).
    Remove {
        /// The nft binary [default: nft on PATH, /usr/sbin/nft].
        #[arg(long, env = "QUIVER_CAPTURE_NFT")]
        nft: Option<PathBuf>,
    },
    /// Print the nftables script `install` would apply, and exit.
    Show(CaptureArgs),
}

#[derive(Debug, clap::Args)]
struct CaptureArgs {
    /// The proxy's uid: its own sockets are never captured.
    #[arg(long, env = "QUIVER_CAPTURE_PROXY_UID", default_value_t = 1337)]
    proxy_uid: u32,
    /// The proxy's transparent outbound listener (capture.outbound_listen).
    #[arg(long, env = "QUIVER_CAPTURE_OUTBOUND_PORT", default_value_t = 15002, value_parser = clap::value_parser!(u16).range(1..))]
    outbound_port: u16,
    /// The proxy's transparent inbound listener (capture.inbound_listen).
    #[arg(long, env = "QUIVER_CAPTURE_INBOUND_PORT", default_value_t = 15006, value_parser = clap::value_parser!(u16).range(1..))]
    inbound_port: u16,
    /// The proxy's DNS resolver (capture.dns_listen); 0 leaves DNS alone.
    #[arg(long, env = "QUIVER_CAPTURE_DNS_PORT", default_value_t = 15053)]
    dns_port: u16,
    /// Inbound TCP ports to capture: `*` (all but the excluded) or a list, e.g. 8080,9090.
    #[arg(long, env = "QUIVER_CAPTURE_INBOUND_PORTS", default_value = "*", value_parser = parse_inbound_ports)]
    inbound_ports: crate::capture::InboundPorts,
    /// Inbound ports never captured (the admin port 15020 and the proxy's own always are).
    #[arg(long, env = "QUIVER_CAPTURE_EXCLUDE_INBOUND_PORTS", default_value = "", value_parser = parse_port_list)]
    exclude_inbound_ports: PortList,
    /// Outbound destination ports never captured [the control plane's discovery port, 15010].
    #[arg(long, env = "QUIVER_CAPTURE_EXCLUDE_OUTBOUND_PORTS", default_value = "15010", value_parser = parse_port_list)]
    exclude_outbound_ports: PortList,
    /// Outbound destinations never captured: IPv4 CIDRs, e.g. 10.0.0.5,169.254.0.0/16.
    #[arg(long, env = "QUIVER_CAPTURE_EXCLUDE_CIDRS", default_value = "", value_parser = parse_cidr_list)]
    exclude_cidrs: CidrList,
    /// The nft binary [default: nft on PATH, /usr/sbin/nft].
    #[arg(long, env = "QUIVER_CAPTURE_NFT")]
    nft: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct PortList(Vec<u16>);
#[derive(Debug, Clone)]
struct CidrList(Vec<(std::net::Ipv4Addr, u8)>);

fn parse_inbound_ports(s: &str) -> Result<crate::capture::InboundPorts, String> {
    s.parse()
}
fn parse_port_list(s: &str) -> Result<PortList, String> {
    crate::capture::parse_ports(s).map(PortList)
}
fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    crate::capture::parse_cidrs(s).map(CidrList)
}

impl CaptureArgs {
    fn rules(&self) -> crate::capture::Rules {
        crate::capture::Rules {
            proxy_uid: self.proxy_uid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            dns_port: (self.dns_port != 0).then_some(self.dns_port),
            inbound_ports: self.inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.0.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.0.clone(),
            exclude_cidrs: self.exclude_cidrs.0.clone(),
        }
    }
}

fn capture(cmd: CaptureCommand) -> ExitCode {
    let (nft, script) = match cmd {
        CaptureCommand::Show(a) => {
            print!("{}", a.rules().install_script());
            return ExitCode::SUCCESS;
        }
        CaptureCommand::Install(a) => (a.nft.clone(), a.rules().install_script()),
        CaptureCommand::Remove { nft } => (nft, crate::capture::remove_script()),
    };
    match crate::capture::apply(nft, &script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: capture: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status for a bad config or flags (EX_USAGE, like linkerd's 64).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status when the control plane refuses to let this proxy join (EX_NOPERM).
pub const EXIT_REFUSED: u8 = 77;

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().into(), v.trim().into())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_outbound(s: &str) -> Result<(SocketAddr, String, Option<u16>, Protocol), String> {
    let (listen, target) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LISTEN=SERVICE[:PORT][/PROTOCOL]"))?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not ip:port"))?;
    let (target, protocol) = match target.split_once('/') {
        None => (target, Protocol::Http1),
        Some((t, p)) => {
            let p = Protocol::from_name(p)
                .ok_or_else(|| format!("protocol {p:?} is not http1, http2, grpc or tcp"))?;
            (t, p)
        }
    };
    let (service, port) = match target.split_once(':') {
        None => (target, None),
        Some((svc, p)) => match p.parse::<u16>() {
            Ok(n) if n > 0 => (svc, Some(n)),
            _ => return Err(format!("port {p:?} is not 1-65535")),
        },
    };
    quiver_api::validate::check_dns_label(service)?;
    Ok((listen, service.to_string(), port, protocol))
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

impl Args {
    fn overrides(&self) -> Overrides {
        Overrides {
            control_plane: ControlPlaneFile {
                address: self.control_plane.clone(),
                join_token: self.join_token.clone(),
                ca_cert: self.ca_cert.clone(),
                trust_domain: self.trust_domain.clone(),
                control_plane_id: self.control_plane_id.clone(),
                service: self.service.clone(),
                labels: self.labels.iter().cloned().collect(),
                advertise: self.advertise,
                app_host: self.app_host,
                span_queue: self.span_queue,
                edge_interval: self.edge_interval,
            },
            quic_listen: self.quic_listen,
            admin_listen: self.admin_listen,
            http_proxy_listen: self.http_proxy_listen,
            zone: self.zone.clone(),
            drain_timeout: self.drain_timeout,
            outbound: self.outbound.clone(),
            capture: self.capture,
            egress: self.egress.as_deref().map(|e| match e {
                "deny" => crate::config::Egress::Deny,
                _ => crate::config::Egress::Allow,
            }),
            inbound_plaintext: self.inbound_plaintext.as_deref().map(|p| match p {
                "allow" => crate::config::Plaintext::Allow,
                _ => crate::config::Plaintext::Refuse,
            }),
            app_probes: self.app_probes.clone(),
        }
    }
}

/// Run the proxy with `args` (argv, program name first). Installs its own logging and
/// runtime; returns when the proxy has drained after SIGTERM or Ctrl-C.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    if let Some(Command::Capture(cmd)) = args.command {
        return capture(cmd);
    }
    init_tracing(args.log_json || args.log_format == "json");
    // ring only: if another provider ever enters the graph, implicit builders must not panic.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let loaded = match &args.config {
        Some(path) => ProxyConfig::load_with(path, args.overrides()),
        None if args.control_plane.is_some() => ProxyConfig::from_overrides(args.overrides()),
        None => {
            eprintln!(
                "error: give --config FILE (static mode) or --control-plane HOST:PORT with \
                 --join-token, --ca-cert and --service (control-plane mode)"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let what = args
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "flags".into());
    let config = match loaded {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{what}: invalid config:");
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        println!("{what}: ok");
        return ExitCode::SUCCESS;
    }
    let workers = config.bootstrap.tuning.workers;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if workers > 0 {
        rt.worker_threads(workers);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(config, args.config, args.reload_interval))
}

async fn run(config: ProxyConfig, file: Option<PathBuf>, reload: Duration) -> ExitCode {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective config");
    let bound = match config.bootstrap.control_plane.clone() {
        None => match crate::Proxy::bind(config).await {
            Ok(p) => match file {
                Some(path) if !reload.is_zero() => Ok(p.reload_config_from(path, reload)),
                _ => Ok(p),
            },
            Err(e) => Err(e),
        },
        Some(cp) => {
            let mut shutdown = std::pin::pin!(shutdown_signal());
            let session = tokio::select! {
                s = join(&cp) => s,
                _ = &mut shutdown => return ExitCode::SUCCESS,
            };
            match session {
                Ok(s) => crate::Proxy::bind_joined(config, s).await,
                Err(e) => {
                    eprintln!("error: {e}");
                    return match e {
                        crate::control::JoinError::Refused { .. } => ExitCode::from(EXIT_REFUSED),
                        _ => ExitCode::FAILURE,
                    };
                }
            }
        }
    };
    match bound {
        Ok(proxy) => {
            proxy.run(shutdown_signal()).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Join, retrying while the control plane is unreachable; a refusal is final.
async fn join(
    cp: &crate::config::ControlPlane,
) -> Result<crate::control::Session, crate::control::JoinError> {
    let mut backoff =
        crate::control::Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
    loop {
        match crate::control::Session::join(cp).await {
            Ok(s) => return Ok(s),
            Err(e) if e.is_retryable() => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot join yet");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "join refused");
                return Err(e);
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A host binary (the demo) may have installed one already: keep it.
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_flag_forms() {
        let (l, s, p, proto) = parse_outbound("127.0.0.1:7002=ratings:9090/grpc").unwrap();
        assert_eq!(l, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(
            (s.as_str(), p, proto),
            ("ratings", Some(9090), Protocol::Grpc)
        );
        let (_, s, p, proto) = parse_outbound("127.0.0.1:7001=catalog").unwrap();
        assert_eq!((s.as_str(), p, proto), ("catalog", None, Protocol::Http1));
        for bad in [
            "catalog",
            "localhost:1=catalog",
            "127.0.0.1:1=Catalog",
            "127.0.0.1:1=c:0",
            "127.0.0.1:1=c/quic",
        ] {
            assert!(parse_outbound(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn control_plane_flags_without_a_file_are_validated_with_field_names() {
        let args = Args::try_parse_from([
            "quiver-proxy",
            "--control-plane",
            "cp:15010",
            "--service",
            "Web",
            "--label",
            "version=v1",
        ])
        .unwrap();
        let errs = ProxyConfig::from_overrides(args.overrides()).unwrap_err().0;
        let fields: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(fields.contains(&"control_plane.join_token"), "{errs:?}");
        assert!(fields.contains(&"control_plane.ca_cert"), "{errs:?}");
        assert!(fields.contains(&"control_plane.service"), "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.path == "control_plane.join_token" && e.reason.contains("--join-token")),
            "{errs:?}"
        );
    }
}
