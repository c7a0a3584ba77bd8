//! The app's health, checked by the sidecar for kubelet (docs/deploy.md, "Probes").
//!
//! Under inbound capture in strict mode the proxy refuses plaintext from outside the pod, and
//! kubelet probes in plaintext from the node. The injector therefore rewrites an app's
//! `httpGet`, `tcpSocket` and `grpc` probes on captured ports to `httpGet` probes of the admin
//! port at `/app-health/<container>/<livez|readyz|startupz>`, and hands the original probes to
//! the proxy (`--app-probes`, the `QUIVER_APP_PROBES` variable) in the shape Kubernetes writes
//! them. [`AppProbes::answer`] performs the original check from inside the pod, as kubelet
//! would have, and turns the outcome into a status kubelet judges: 200 for a pass, the app's
//! own status (>= 400) or 503 for a failure.
//!
//! Only the listed paths are served; each check goes to the app's address (`app_host`,
//! 127.0.0.1 unless told otherwise) on the probe's port, never elsewhere, and is bounded by the
//! probe's `timeoutSeconds` (kubelet's default, 1 s, when absent).
//!
//! An `HTTPS` probe is made over TLS as kubelet makes it: the app's certificate is not
//! verified (kubelet does not verify it either: a probe checks liveness, not identity), no SNI
//! (the destination is an address), ALPN offering `h2` and `http/1.1` (HTTP/2 when the app
//! picks it, else HTTP/1.1). The handshake's signatures are still checked, with the mesh's
//! crypto provider.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use quiver_api::validate::FieldError;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpStream;

/// Every rewritten probe's path starts with this.
pub const PREFIX: &str = "/app-health/";
/// kubelet's default `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest `timeoutSeconds` taken (an hour; kubelet would wait that long too).
const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// A health answer larger than this is not read further (its status already counts).
const MAX_GRPC_BODY: usize = 64 * 1024;
/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// The probes this sidecar answers, by path.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppProbes {
    /// Where the app listens (the checks' destination address).
    host: Option<IpAddr>,
    probes: BTreeMap<String, AppProbe>,
}

/// One original probe: what to check and how long to wait for it.
#[derive(Debug, Clone, Serialize)]
pub struct AppProbe {
    pub check: Check,
    #[serde(with = "quiver_api::duration::serde_human")]
    pub timeout: Duration,
}

/// What kubelet would have done.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Check {
    /// `GET path` over HTTP/1.1 (over TLS for `HTTPS`); 200-399 passes.
    HttpGet {
        port: u16,
        path: String,
        scheme: Scheme,
        /// `httpHeaders`, in order (a `Host` among them replaces the default). `/config`
        /// shows their names only: a probe header may carry a credential, and the admin
        /// port is open to the node in a pod.
        #[serde(serialize_with = "header_names")]
        headers: Vec<(String, String)>,
    },
    /// A TCP connection opens.
    TcpSocket { port: u16 },
    /// `grpc.health.v1.Health/Check` over h2c answers SERVING.
    Grpc { port: u16, service: String },
}

/// An `httpGet` probe's `scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scheme {
    Http,
    Https,
}

/// What a check found: the status for kubelet and a line for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: StatusCode,
    pub detail: String,
}

impl Verdict {
    fn pass(detail: String) -> Self {
        Self {
            status: StatusCode::OK,
            detail,
        }
    }

    fn fail(detail: String) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail,
        }
    }
}

impl AppProbes {
    /// Read the probes from their JSON (or YAML) form, an object of `/app-health/...` paths to
    /// Kubernetes probe handlers; `field` names where they came from in errors.
    pub fn parse(v: &Value, host: IpAddr, field: &str) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut probes = BTreeMap::new();
        let Some(map) = v.as_object() else {
            return Err(vec![FieldError {
                path: field.to_string(),
                reason: format!(
                    "{} is not an object of {PREFIX}... paths to probes",
                    type_of(v)
                ),
            }]);
        };
        for (path, probe) in map {
            let at = format!("{field}[{path:?}]");
            if let Err(reason) = check_path(path) {
                errs.push(FieldError {
                    path: at.clone(),
                    reason,
                });
                continue;
            }
            match probe_of(probe, &at) {
                Ok(p) => {
                    probes.insert(path.clone(), p);
                }
                Err(e) => errs.push(e),
            }
        }
        if errs.is_empty() {
            Ok(Self {
                host: Some(host),
                probes,
            })
        } else {
            Err(errs)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// Check the probe listed at `path`; `None` when no probe is listed there.
    pub async fn answer(&self, path: &str) -> Option<Verdict> {
        let probe = self.probes.get(path)?;
        let host = self.host.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let run = async {
            match &probe.check {
                Check::HttpGet {
                    port,
                    path,
                    scheme,
                    headers,
                } => http_get(SocketAddr::new(host, *port), *scheme, path, headers).await,
                Check::TcpSocket { port } => {
                    let addr = SocketAddr::new(host, *port);
                    match TcpStream::connect(addr).await {
                        Ok(_) => Verdict::pass(format!("{addr} accepted a connection")),
                        Err(e) => Verdict::fail(format!("{addr}: {e}")),
                    }
                }
                Check::Grpc { port, service } => {
                    grpc_health(SocketAddr::new(host, *port), service).await
                }
            }
        };
        Some(
            tokio::time::timeout(probe.timeout, run)
                .await
                .unwrap_or_else(|_| {
                    Verdict::fail(format!(
                        "no answer within {}",
                        quiver_api::duration::format(probe.timeout)
                    ))
                }),
        )
    }
}

fn header_names<S: serde::Serializer>(
    headers: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(headers.iter().map(|(name, _)| name))
}

fn check_path(path: &str) -> Result<(), String> {
    let rest = path
        .strip_prefix(PREFIX)
        .ok_or_else(|| format!("does not start with {PREFIX}"))?;
    if rest.is_empty()
        || path.len() > 256
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    {
        return Err(format!(
            "after {PREFIX} needs 1-{} letters, digits, '-', '_', '.' or '/'",
            256 - PREFIX.len()
        ));
    }
    Ok(())
}

/// One probe: exactly one handler, and `timeoutSeconds`.
fn probe_of(v: &Value, at: &str) -> Result<AppProbe, FieldError> {
    let field = |f: &str, reason: String| FieldError {
        path: format!("{at}.{f}"),
        reason,
    };
    let map = v.as_object().ok_or_else(|| FieldError {
        path: at.to_string(),
        reason: format!("{} is not a probe object", type_of(v)),
    })?;
    let mut timeout = DEFAULT_TIMEOUT;
    let mut check = None;
    for (key, value) in map {
        let next = match key.as_str() {
            "timeoutSeconds" => {
                let secs = value
                    .as_u64()
                    .filter(|s| (1..=MAX_TIMEOUT_SECONDS).contains(s))
                    .ok_or_else(|| {
                        field(
                            key,
                            format!(
                                "{value} is not a whole number of seconds, 1..{MAX_TIMEOUT_SECONDS}"
                            ),
                        )
                    })?;
                timeout = Duration::from_secs(secs);
                continue;
            }
            "httpGet" => http_get_of(value, &format!("{at}.httpGet"))?,
            "tcpSocket" => {
                let h = handler(value, &format!("{at}.tcpSocket"), &["port"])?;
                Check::TcpSocket {
                    port: port_of(h, &format!("{at}.tcpSocket"))?,
                }
            }
            "grpc" => {
                let h = handler(value, &format!("{at}.grpc"), &["port", "service"])?;
                let service = match h.get("service") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) if s.len() <= 1024 => s.clone(),
                    Some(other) => {
                        return Err(field(
                            "grpc.service",
                            format!(
                                "{} is not a service name (a string up to 1024 bytes)",
                                type_of(other)
                            ),
                        ));
                    }
                };
                Check::Grpc {
                    port: port_of(h, &format!("{at}.grpc"))?,
                    service,
                }
            }
            other => {
                return Err(field(
                    other,
                    "unknown; a probe has one of httpGet, tcpSocket, grpc, and timeoutSeconds"
                        .into(),
                ));
            }
        };
        if check.replace(next).is_some() {
            return Err(FieldError {
                path: at.to_string(),
                reason: "more than one of httpGet, tcpSocket, grpc".into(),
            });
        }
    }
    let check = check.ok_or_else(|| FieldError {
        path: at.to_string(),
        reason: "needs one of httpGet, tcpSocket, grpc".into(),
    })?;
    Ok(AppProbe { check, timeout })
}

fn http_get_of(v: &Value, at: &str) -> Result<Check, FieldError> {
    let field = |f: &str, reason: String| FieldError {
        path: format!("{at}.{f}"),
        reason,
    };
    let h = handler(v, at, &["port", "path", "scheme", "httpHeaders"])?;
    let scheme = match h.get("scheme") {
        None | Some(Value::Null) => Scheme::Http,
        Some(Value::String(s)) if s == "HTTP" => Scheme::Http,
        Some(Value::String(s)) if s == "HTTPS" => Scheme::Https,
        Some(other) => {
            return Err(field(
                "scheme",
                format!("{other} is not a scheme; kubelet knows HTTP and HTTPS"),
            ));
        }
    };
    let path = match h.get("path") {
        None | Some(Value::Null) => "/".to_string(),
        Some(Value::String(p))
            if p.starts_with('/')
                && p.len() <= 2048
                && p.parse::<http::uri::PathAndQuery>().is_ok() =>
        {
            p.clone()
        }
        Some(other) => {
            return Err(field(
                "path",
                format!("{other} is not a request path (starts with '/', at most 2048 bytes)"),
            ));
        }
    };
    let mut headers = Vec::new();
    match h.get("httpHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) if list.len() <= 64 => {
            for (i, entry) in list.iter().enumerate() {
                let here = format!("httpHeaders[{i}]");
                let name = entry.get("name").and_then(Value::as_str);
                let value = entry.get("value").and_then(Value::as_str);
                let (Some(name), Some(value)) = (name, value) else {
                    return Err(field(&here, "needs a string name and value".into()));
                };
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(field(
                        &format!("{here}.name"),
                        format!("{name:?} is not a header name"),
                    ));
                }
                if HeaderValue::from_str(value).is_err() {
                    return Err(field(
                        &format!("{here}.value"),
                        "not a header value (visible ASCII)".into(),
                    ));
                }
                headers.push((name.to_string(), value.to_string()));
            }
        }
        Some(_) => {
            return Err(field(
                "httpHeaders",
                "not a list of at most 64 {name, value} headers".into(),
            ));
        }
    }
    Ok(Check::HttpGet {
        port: port_of(h, at)?,
        path,
        scheme,
        headers,
    })
}

/// A handler object whose keys are all among `known`.
fn handler<'a>(
    v: &'a Value,
    at: &str,
    known: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, FieldError> {
    let map = v.as_object().ok_or_else(|| FieldError {
        path: at.to_string(),
        reason: format!("{} is not an object", type_of(v)),
    })?;
    if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(FieldError {
            path: format!("{at}.{k}"),
            reason: format!("unknown; known here: {}", known.join(", ")),
        });
    }
    Ok(map)
}

/// The handler's `port`: a number (the injector resolves named ports).
fn port_of(map: &serde_json::Map<String, Value>, at: &str) -> Result<u16, FieldError> {
    let v = map.get("port").unwrap_or(&Value::Null);
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| FieldError {
            path: format!("{at}.port"),
            reason: format!("{v} is not a port number (1..65535)"),
        })
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// kubelet's HTTP check: connect (and for `HTTPS` shake hands without verifying the app's
/// certificate), `GET path` with its headers, judge the status.
async fn http_get(
    addr: SocketAddr,
    scheme: Scheme,
    path: &str,
    headers: &[(String, String)],
) -> Verdict {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Verdict::fail(format!("{addr}: {e}")),
    };
    match scheme {
        Scheme::Http => get_over(stream, addr, false, path, headers).await,
        Scheme::Https => {
            let config = match probe_tls() {
                Ok(c) => c,
                Err(e) => return Verdict::fail(e),
            };
            let connector = tokio_rustls::TlsConnector::from(config);
            let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
            match connector.connect(name, stream).await {
                Ok(tls) => {
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                    get_over(tls, addr, h2, path, headers).await
                }
                Err(e) => Verdict::fail(format!("{addr}: TLS handshake: {e}")),
            }
        }
    }
}

/// `GET path` over an open connection (HTTP/2 when TLS negotiated `h2`, else HTTP/1.1),
/// judged as kubelet judges it.
async fn get_over<IO>(
    io: IO,
    addr: SocketAddr,
    h2: bool,
    path: &str,
    headers: &[(String, String)],
) -> Verdict
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // HTTP/2 takes the authority from the URI; HTTP/1.1 from Host (unless the probe sets one).
    let mut req = if h2 {
        Request::get(format!("https://{addr}{path}"))
    } else if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        Request::get(path)
    } else {
        Request::get(path).header(http::header::HOST, addr.to_string())
    }
    .header(http::header::USER_AGENT, "kube-probe/quiver")
    .header(http::header::ACCEPT, "*/*");
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = match req.body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return Verdict::fail(format!("building the request: {e}")),
    };
    let answer = if h2 {
        let io = TokioIo::new(io);
        match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
            Ok((mut send, conn)) => {
                tokio::spawn(conn);
                send.send_request(req).await
            }
            Err(e) => return Verdict::fail(format!("{addr}: h2: {e}")),
        }
    } else {
        match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
            Ok((mut send, conn)) => {
                tokio::spawn(conn);
                send.send_request(req).await
            }
            Err(e) => return Verdict::fail(format!("{addr}: {e}")),
        }
    };
    match answer {
        Ok(resp) => {
            let status = resp.status();
            let version = resp.version();
            // kubelet's rule: 200-399 pass; anything else fails with the app's status.
            if (200..400).contains(&status.as_u16()) {
                Verdict::pass(format!("GET {path} on {addr}: {status} ({version:?})"))
            } else {
                Verdict {
                    status: if status.as_u16() >= 400 {
                        status
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    },
                    detail: format!("GET {path} on {addr}: {status} ({version:?})"),
                }
            }
        }
        Err(e) => Verdict::fail(format!("GET {path} on {addr}: {e}")),
    }
}

/// The client side of an `HTTPS` probe, built once: kubelet's `InsecureSkipVerify`.
fn probe_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = quiver_api::tls::provider();
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS client for HTTPS probes: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(UnverifiedServer(provider)))
                .with_no_client_auth();
            // As kubelet's Go client offers them.
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
}

/// A server verifier that accepts whatever certificate the server shows and checks the
/// handshake's signatures with it as usual: for a probe of the app (its identity is not what
/// a probe checks, as kubelet's `InsecureSkipVerify`). The test kit plays hostile peers with
/// it too (`quiver_tests::pki::AnyServer`). Never for mesh connections.
#[derive(Debug)]
pub struct UnverifiedServer(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// kubelet's gRPC check: `grpc.health.v1.Health/Check` for `service` over h2c.
async fn grpc_health(addr: SocketAddr, service: &str) -> Verdict {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Verdict::fail(format!("{addr}: {e}")),
    };
    let (mut send, conn) =
        match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
        {
            Ok(pair) => pair,
            Err(e) => return Verdict::fail(format!("{addr}: h2c: {e}")),
        };
    tokio::spawn(conn);
    let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "kube-probe/quiver")
        .body(Full::new(health_request(service)));
    let req = match req {
        Ok(r) => r,
        Err(e) => return Verdict::fail(format!("building the request: {e}")),
    };
    let resp = match send.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Verdict::fail(format!("{addr}: {e}")),
    };
    if resp.status() != StatusCode::OK {
        return Verdict::fail(format!("{addr}: HTTP {}", resp.status()));
    }
    let (parts, body) = resp.into_parts();
    let collected = match Limited::new(body, MAX_GRPC_BODY).collect().await {
        Ok(c) => c,
        Err(e) => return Verdict::fail(format!("{addr}: reading the answer: {e}")),
    };
    let trailers = collected.trailers().cloned();
    // A trailers-only answer carries grpc-status in the headers.
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match grpc_status.as_deref() {
        Some("0") => {}
        Some(code) => {
            return Verdict::fail(format!("{addr}: grpc-status {code}"));
        }
        None => return Verdict::fail(format!("{addr}: no grpc-status")),
    }
    match health_status(collected.to_bytes()) {
        Some(SERVING) => Verdict::pass(format!("{addr}: SERVING")),
        Some(other) => Verdict::fail(format!(
            "{addr}: {}",
            match other {
                0 => "UNKNOWN".to_string(),
                2 => "NOT_SERVING".to_string(),
                3 => "SERVICE_UNKNOWN".to_string(),
                n => format!("status {n}"),
            }
        )),
        None => Verdict::fail(format!("{addr}: not a HealthCheckResponse")),
    }
}

/// A length-prefixed `HealthCheckRequest { service }` (field 1, a string).
fn health_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(&message);
    framed.freeze()
}

fn put_varint(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

fn get_varint(buf: &mut Bytes) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// `HealthCheckResponse.status` (field 1, an enum) of one uncompressed gRPC message; absent
/// means 0 (UNKNOWN), as protobuf defines it.
fn health_status(mut body: Bytes) -> Option<u64> {
    if body.remaining() < 5 || body.get_u8() != 0 {
        return None;
    }
    let len = usize::try_from(body.get_u32()).ok()?;
    if body.remaining() < len {
        return None;
    }
    let mut message = body.split_to(len);
    let mut status = 0;
    while message.has_remaining() {
        let tag = get_varint(&mut message)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = get_varint(&mut message)?,
            (_, 0) => {
                get_varint(&mut message)?;
            }
            (_, 2) => {
                let n = usize::try_from(get_varint(&mut message)?).ok()?;
                if message.remaining() < n {
                    return None;
                }
                message.advance(n);
            }
            (_, 1) if message.remaining() >= 8 => message.advance(8),
            (_, 5) if message.remaining() >= 4 => message.advance(4),
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn errors(v: Value) -> Vec<String> {
        AppProbes::parse(&v, HOST, "app_probes")
            .expect_err("refused")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn kubernetes_shaped_probes_are_read() {
        let p = AppProbes::parse(
            &json!({
                "/app-health/web/readyz": {"httpGet": {"path": "/healthz?full=1", "port": 8080,
                    "scheme": "HTTP", "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                    "timeoutSeconds": 3},
                "/app-health/web/livez": {"tcpSocket": {"port": 8080}},
                "/app-health/api/startupz": {"grpc": {"port": 9090, "service": "shop.v1"}},
            }),
            HOST,
            "app_probes",
        )
        .expect("valid");
        assert_eq!(p.probes.len(), 3);
        let ready = &p.probes["/app-health/web/readyz"];
        assert_eq!(ready.timeout, Duration::from_secs(3));
        assert!(
            matches!(&ready.check, Check::HttpGet { port: 8080, path, scheme: Scheme::Http, headers }
            if path == "/healthz?full=1" && headers == &[("X-Probe".to_string(), "1".to_string())])
        );
        assert_eq!(p.probes["/app-health/web/livez"].timeout, DEFAULT_TIMEOUT);
        // /config shows header names, never their values.
        let shown = serde_json::to_string(&p).unwrap();
        assert!(
            shown.contains("X-Probe") && !shown.contains("\"1\""),
            "{shown}"
        );
        assert!(matches!(&p.probes["/app-health/api/startupz"].check,
            Check::Grpc { port: 9090, service } if service == "shop.v1"));
    }

    #[test]
    fn bad_probes_are_refused_by_field() {
        assert_eq!(
            errors(json!(["x"])),
            ["app_probes: an array is not an object of /app-health/... paths to probes"]
        );
        let e = errors(json!({"/admin": {"tcpSocket": {"port": 1}}}));
        assert!(
            e[0].starts_with("app_probes[\"/admin\"]: does not start with /app-health/"),
            "{e:?}"
        );
        let e = errors(json!({"/app-health/a/readyz": {"tcpSocket": {"port": 70000}}}));
        assert!(
            e[0].starts_with(
                "app_probes[\"/app-health/a/readyz\"].tcpSocket.port: 70000 is not a port"
            ),
            "{e:?}"
        );
        let e =
            errors(json!({"/app-health/a/readyz": {"httpGet": {"port": 80, "scheme": "https"}}}));
        assert!(
            e[0].contains(".httpGet.scheme: \"https\" is not a scheme"),
            "{e:?}"
        );
        let e =
            errors(json!({"/app-health/a/readyz": {"httpGet": {"port": 80, "host": "10.0.0.1"}}}));
        assert!(e[0].contains(".httpGet.host: unknown"), "{e:?}");
        let e =
            errors(json!({"/app-health/a/readyz": {"httpGet": {"port": 80, "path": "healthz"}}}));
        assert!(
            e[0].contains(".httpGet.path: \"healthz\" is not a request path"),
            "{e:?}"
        );
        let e = errors(
            json!({"/app-health/a/readyz": {"tcpSocket": {"port": 1}, "grpc": {"port": 2}}}),
        );
        assert!(
            e[0].ends_with("more than one of httpGet, tcpSocket, grpc"),
            "{e:?}"
        );
        let e = errors(
            json!({"/app-health/a/readyz": {"timeoutSeconds": 0, "tcpSocket": {"port": 1}}}),
        );
        assert!(
            e[0].contains(".timeoutSeconds: 0 is not a whole number"),
            "{e:?}"
        );
        let e = errors(json!({"/app-health/a/readyz": {"exec": {"command": ["true"]}}}));
        assert!(e[0].contains(".exec: unknown"), "{e:?}");
        let e = errors(json!({"/app-health/a/readyz": {}}));
        assert!(
            e[0].ends_with("needs one of httpGet, tcpSocket, grpc"),
            "{e:?}"
        );
        let e = errors(json!({"/app-health/a/readyz": {"httpGet": {"port": 1,
            "httpHeaders": [{"name": "bad name", "value": "x"}]}}}));
        assert!(
            e[0].contains(".httpGet.httpHeaders[0].name: \"bad name\" is not a header name"),
            "{e:?}"
        );
    }

    #[test]
    fn health_messages_round_trip_the_wire_format() {
        // HealthCheckRequest{service: "shop.v1"}: frame header, tag 1 (length-delimited).
        assert_eq!(
            &health_request("shop.v1")[..],
            b"\x00\x00\x00\x00\x09\x0a\x07shop.v1"
        );
        assert_eq!(&health_request("")[..], b"\x00\x00\x00\x00\x00");
        // HealthCheckResponse{status: SERVING}, and NOT_SERVING after an unknown field.
        assert_eq!(
            health_status(Bytes::from_static(b"\x00\x00\x00\x00\x02\x08\x01")),
            Some(1)
        );
        assert_eq!(
            health_status(Bytes::from_static(b"\x00\x00\x00\x00\x05\x12\x01x\x08\x02")),
            Some(2)
        );
        // Empty message: the default, UNKNOWN.
        assert_eq!(
            health_status(Bytes::from_static(b"\x00\x00\x00\x00\x00")),
            Some(0)
        );
        // Compressed, truncated, or a varint that never ends: not a response.
        assert_eq!(
            health_status(Bytes::from_static(b"\x01\x00\x00\x00\x02\x08\x01")),
            None
        );
        assert_eq!(
            health_status(Bytes::from_static(b"\x00\x00\x00\x00\x09\x08")),
            None
        );
        assert_eq!(
            health_status(Bytes::from_static(b"\x00\x00\x00\x00\x02\x08\xff")),
            None
        );
    }
}
