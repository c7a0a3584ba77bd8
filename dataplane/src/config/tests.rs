use std::path::{Path, PathBuf};
use std::time::Duration;

use quiver_api::certs::CertificateAuthority;

use super::*;

/// A temp dir with a CA-issued identity for sa/a in mesh.local.
fn identity_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "quiver-config-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let leaf = ca
        .issue(
            &SpiffeId::parse("spiffe://mesh.local/ns/default/sa/a").unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(dir.join("cert.pem"), &leaf.chain_pem).unwrap();
    write_private(&dir.join("key.pem"), &leaf.key_pem);
    std::fs::write(dir.join("bundle.pem"), ca.cert_pem()).unwrap();
    dir
}

const GOOD: &str = r#"
identity: {cert: cert.pem, key: key.pem, trust_bundle: bundle.pem}
listen: {quic: "127.0.0.1:0", admin: "127.0.0.1:0", http_proxy: "127.0.0.1:15001"}
drain_timeout: 5s
inbound:
  - {service: web, port: 8080, protocol: http1, app: "127.0.0.1:8080"}
outbound:
  - {listen: "127.0.0.1:7000", service: reviews, protocol: tcp}
services:
  - name: reviews
    endpoints:
      - {address: "127.0.0.1:15444", identity: "spiffe://mesh.local/ns/default/sa/reviews"}
"#;

/// A private key file (0600), as the proxy requires.
fn write_private(path: &Path, pem: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_key_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = identity_dir();
    let key = dir.join("key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = errors(GOOD, &dir);
    assert!(has(&e, "identity.key", "mode 644"), "{e:#?}");
    assert!(has(&e, "identity.key", "chmod 600"), "{e:#?}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    ProxyConfig::parse(GOOD, &dir).unwrap();
}

fn errors(yaml: &str, dir: &Path) -> Vec<FieldError> {
    ProxyConfig::parse(yaml, dir).unwrap_err().0
}

fn has(errs: &[FieldError], field: &str, reason_part: &str) -> bool {
    errs.iter()
        .any(|e| e.path == field && e.reason.contains(reason_part))
}

#[test]
fn a_good_file_parses_into_bootstrap_and_snapshot() {
    let dir = identity_dir();
    let c = ProxyConfig::parse(GOOD, &dir).unwrap();
    assert_eq!(
        c.bootstrap.identity.as_ref().unwrap().cert,
        dir.join("cert.pem")
    );
    assert_eq!(c.bootstrap.drain_timeout, Duration::from_secs(5));
    assert_eq!(c.snapshot.inbound[0].protocol, Protocol::Http1);
    assert_eq!(c.snapshot.services["reviews"].endpoints.len(), 1);
    assert_eq!(c.bootstrap.outbound[0].protocol, Protocol::Tcp);
    // The effective config serialises (served on /config) and carries no key material.
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("PRIVATE KEY"));
}

#[test]
fn unknown_fields_and_bad_types_name_the_place() {
    let dir = identity_dir();
    let one = |yaml: String| ConfigErrors(errors(&yaml, &dir)).to_string();
    let e = one(GOOD.replace("drain_timeout: 5s", "drain_timout: 5s"));
    assert!(e.contains("unknown field `drain_timout`"), "{e}");
    let e = one(GOOD.replace("protocol: http1", "protocol: http9"));
    assert!(e.starts_with("inbound[0].protocol: "), "{e}");
    assert!(e.contains("http9"), "{e}");
    let e = one(GOOD.replace("\"127.0.0.1:8080\"", "\"nowhere\""));
    assert!(e.starts_with("inbound[0].app: "), "{e}");
    let e = one(GOOD.replace("drain_timeout: 5s", "drain_timeout: 5"));
    assert!(e.starts_with("drain_timeout: "), "{e}");
    assert!(e.contains("missing unit"), "{e}");
    let e = one(GOOD.replace("max_header_bytes", "x") + "tuning: {max_header_bytes: lots}\n");
    assert!(e.starts_with("tuning.max_header_bytes: "), "{e}");
    let e = one("identity: [".to_string());
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn semantic_mistakes_are_all_reported_at_once() {
    let dir = identity_dir();
    let yaml = r#"
identity: {cert: missing.pem, key: key.pem, trust_bundle: bundle.pem}
listen: {admin: "127.0.0.1:7000"}
inbound:
  - {service: Web, port: 0, protocol: http1, app: "127.0.0.1:0"}
  - {service: db, port: 5432, protocol: tcp, app: "127.0.0.1:5432"}
  - {service: db, port: 5432, protocol: tcp, app: "127.0.0.1:5433"}
outbound:
  - {listen: "127.0.0.1:7000", service: ghost, protocol: http1}
services:
  - name: reviews
    endpoints:
      - {address: "0.0.0.0:15443", identity: "spiffe://mesh.local/ns/default/sa/r"}
      - {address: "127.0.0.1:1", identity: "not-a-spiffe-id"}
  - name: reviews
tuning: {max_header_bytes: 10, keep_alive: 1m, idle_timeout: 30s}
"#;
    let e = errors(yaml, &dir);
    assert!(has(&e, "identity.cert", "missing.pem"), "{e:#?}");
    assert!(
        has(&e, "outbound[0].listen", "already used by listen.admin"),
        "{e:#?}"
    );
    assert!(has(&e, "inbound[0].service", "not a DNS label"), "{e:#?}");
    assert!(has(&e, "inbound[0].port", "1-65535"), "{e:#?}");
    assert!(has(&e, "inbound[0].app", "needs a port"), "{e:#?}");
    assert!(has(&e, "inbound[2].port", "listed twice"), "{e:#?}");
    assert!(has(&e, "outbound[0].service", "not in services"), "{e:#?}");
    assert!(
        has(&e, "services[0].endpoints[0].address", "concrete IP"),
        "{e:#?}"
    );
    assert!(
        has(&e, "services[0].endpoints[1].identity", "spiffe://"),
        "{e:#?}"
    );
    assert!(has(&e, "services[1].name", "listed twice"), "{e:#?}");
    assert!(
        has(&e, "tuning.max_header_bytes", "at least 1024"),
        "{e:#?}"
    );
    assert!(has(&e, "tuning.keep_alive", "shorter than"), "{e:#?}");
}

#[test]
fn unbounded_durations_are_refused_not_overflowed() {
    let dir = identity_dir();
    let yaml = format!(
        "{GOOD}tuning: {{response_timeout: 9999999999999999999d, connect_timeout: 25h}}\nmesh: {{defaultTimeout: 9999999999999999999d}}\n"
    );
    let e = errors(&yaml, &dir);
    assert!(has(&e, "tuning.response_timeout", "at most 24h"), "{e:#?}");
    assert!(has(&e, "tuning.connect_timeout", "at most 24h"), "{e:#?}");
    assert!(has(&e, "mesh.defaultTimeout", "maximum"), "{e:#?}");
}

#[test]
fn app_probes_are_read_from_the_file_and_flags_and_refused_by_field() {
    let dir = identity_dir();
    let probes = r#"{"/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080}}}"#;
    let c = ProxyConfig::parse_with(
        &format!("{GOOD}app_probes: {probes}\n"),
        &dir,
        Overrides::default(),
    )
    .unwrap();
    assert!(!c.bootstrap.app_probes.is_empty());
    // The flag replaces the file's value.
    let o = Overrides {
        app_probes: Some(serde_json::json!({"/app-health/web/livez": {"tcpSocket": {"port": 0}}})),
        ..Default::default()
    };
    let e = ProxyConfig::parse_with(&format!("{GOOD}app_probes: {probes}\n"), &dir, o)
        .unwrap_err()
        .0;
    assert!(
        has(
            &e,
            "app_probes[\"/app-health/web/livez\"].tcpSocket.port",
            "not a port number"
        ),
        "{e:#?}"
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    let e = errors(&format!("{GOOD}app_probes: [1]\n"), &dir);
    assert!(has(&e, "app_probes", "not an object"), "{e:#?}");
}

#[test]
fn limits_are_bounded_and_name_their_field() {
    let dir = identity_dir();
    let yaml = format!(
        "{GOOD}tuning: {{limits: {{max_connections: 0, max_handshakes: 8, retry_above_handshakes: 9, tunnel_idle_timeout: 25h, request_header_timeout: 0s}}}}\n"
    );
    let e = errors(&yaml, &dir);
    assert!(
        has(&e, "tuning.limits.max_connections", "at least 1"),
        "{e:#?}"
    );
    assert!(
        has(
            &e,
            "tuning.limits.retry_above_handshakes",
            "more than max_handshakes"
        ),
        "{e:#?}"
    );
    assert!(
        has(&e, "tuning.limits.tunnel_idle_timeout", "at most 24h"),
        "{e:#?}"
    );
    assert!(
        has(&e, "tuning.limits.request_header_timeout", "more than 0s"),
        "{e:#?}"
    );
    let e = errors(
        &format!("{GOOD}tuning: {{limits: {{max_conns: 5}}}}\n"),
        &dir,
    );
    assert!(
        has(&e, "tuning.limits.max_conns", "unknown field"),
        "{e:#?}"
    );
    // Omitted, every limit has its default.
    let ok = ProxyConfig::parse(
        &format!("{GOOD}tuning: {{limits: {{max_handshakes: 100}}}}\n"),
        &dir,
    )
    .unwrap();
    let limits = &ok.bootstrap.tuning.limits;
    assert_eq!(limits.max_handshakes, 100);
    assert_eq!(
        limits.max_connections,
        crate::limits::Limits::default().max_connections
    );
}

#[test]
fn identity_problems_are_config_errors() {
    let dir = identity_dir();
    // A key that does not belong to the certificate.
    let other = CertificateAuthority::generate("mesh.local", Duration::from_secs(60)).unwrap();
    write_private(&dir.join("other.key"), other.key_pem());
    let e = errors(&GOOD.replace("key: key.pem", "key: other.key"), &dir);
    assert!(has(&e, "identity.key", "does not match"), "{e:#?}");
    // An endpoint identity from another trust domain could never be accepted.
    let e = errors(
        &GOOD.replace(
            "spiffe://mesh.local/ns/default/sa/reviews",
            "spiffe://other/ns/default/sa/reviews",
        ),
        &dir,
    );
    assert!(
        has(&e, "services[0].endpoints[0].identity", "trust domain"),
        "{e:#?}"
    );
    // A file that is not a certificate.
    std::fs::write(dir.join("junk.pem"), "hello").unwrap();
    let e = errors(&GOOD.replace("cert: cert.pem", "cert: junk.pem"), &dir);
    assert!(has(&e, "identity", "CERTIFICATE"), "{e:#?}");
}

const JOINING: &str = r#"
control_plane:
  address: https://quiver-control:15010
  join_token: qjt_secret
  ca_cert: bundle.pem
  service: web
  labels: {version: v2}
zone: eu-1
outbound:
  - {listen: "127.0.0.1:7000", service: reviews, protocol: http1}
"#;

#[test]
fn a_control_plane_file_joins_instead_of_reading_identity() {
    let dir = identity_dir();
    let c = ProxyConfig::parse(JOINING, &dir).unwrap();
    assert!(c.bootstrap.identity.is_none());
    let cp = c.bootstrap.control_plane.as_ref().unwrap();
    assert_eq!(cp.address, "quiver-control:15010");
    assert_eq!(cp.ca_cert, dir.join("bundle.pem"));
    assert_eq!(cp.trust_domain, "mesh.local");
    assert_eq!(
        cp.control_plane_id.as_str(),
        "spiffe://mesh.local/ns/quiver-system/sa/control-plane"
    );
    assert_eq!(cp.labels["version"], "v2");
    assert_eq!(cp.zone, "eu-1");
    // Apps reach the mesh through the HTTP proxy listener by default in this mode, and the
    // outbound service need not be known yet (it comes with the first snapshot).
    assert_eq!(c.bootstrap.http_proxy_listen, Some(DEFAULT_HTTP_PROXY));
    // The join token is never shown.
    let shown = serde_json::to_string(&c.bootstrap).unwrap();
    assert!(!shown.contains("qjt_secret"), "{shown}");

    // Flags win over the file.
    let o = Overrides {
        control_plane: ControlPlaneFile {
            service: Some("api".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let c = ProxyConfig::parse_with(JOINING, &dir, o).unwrap();
    assert_eq!(c.bootstrap.control_plane.unwrap().service, "api");
}

#[test]
fn control_plane_mode_refuses_static_sections_and_bad_fields() {
    let dir = identity_dir();
    let both =
        format!("{JOINING}identity: {{cert: cert.pem, key: key.pem, trust_bundle: bundle.pem}}\n");
    assert!(has(
        &errors(&both, &dir),
        "control_plane",
        "cannot be combined"
    ));
    let with_services = format!("{JOINING}services: [{{name: reviews}}]\n");
    assert!(has(
        &errors(&with_services, &dir),
        "services",
        "comes from the control plane"
    ));
    let bad = r#"
control_plane:
  address: quiver-control
  join_token: ""
  ca_cert: missing.pem
  service: Web
  labels: {"bad key": v1}
  advertise: "0.0.0.0:15443"
  span_queue: 0
  control_plane_id: "spiffe://other.td/ns/quiver-system/sa/control-plane"
"#;
    let errs = errors(bad, &dir);
    assert!(
        has(
            &errs,
            "control_plane.control_plane_id",
            "not in the trust domain"
        ),
        "{errs:?}"
    );
    let not_an_id = JOINING.replace(
        "service: web\n",
        "service: web\n  control_plane_id: quiver-control\n",
    );
    assert!(
        has(
            &errors(&not_an_id, &dir),
            "control_plane.control_plane_id",
            "spiffe://"
        ),
        "{not_an_id}"
    );
    assert!(
        has(&errs, "control_plane.address", "not host:port"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "control_plane.join_token", "--join-token"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "control_plane.ca_cert", "missing.pem"),
        "{errs:?}"
    );
    assert!(has(&errs, "control_plane.service", "DNS label"), "{errs:?}");
    assert!(
        has(&errs, "control_plane.labels.bad key", "keys and values"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "control_plane.advertise", "concrete IP"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "control_plane.span_queue", "must be 1 to"),
        "{errs:?}"
    );
    assert!(has(
        &errors("listen: {admin: \"127.0.0.1:0\"}\n", &dir),
        "identity",
        "required"
    ));
}

#[test]
fn a_static_deny_list_is_parsed_and_bad_entries_are_refused_by_field() {
    let dir = identity_dir();
    let good = format!(
        "{GOOD}revocations:\n  - {{spiffe_id: \"spiffe://mesh.local/ns/default/sa/reviews\", not_before_unix: 1900000000}}\n"
    );
    let c = ProxyConfig::parse(&good, &dir).unwrap();
    assert_eq!(
        c.snapshot
            .revocations
            .get("spiffe://mesh.local/ns/default/sa/reviews"),
        Some(&1_900_000_000)
    );
    let bad = format!(
        "{GOOD}revocations:\n  - {{spiffe_id: \"spiffe://other.domain/ns/default/sa/x\", not_before_unix: 0}}\n  - {{spiffe_id: \"not-a-uri\", not_before_unix: 5}}\n"
    );
    let e = errors(&bad, &dir);
    assert!(
        has(
            &e,
            "revocations[0].spiffe_id",
            "not in trust domain mesh.local"
        ),
        "{e:#?}"
    );
    assert!(
        has(
            &e,
            "revocations[0].not_before_unix",
            "not a positive Unix time"
        ),
        "{e:#?}"
    );
    assert!(has(&e, "revocations[1].spiffe_id", "not-a-uri"), "{e:#?}");
    let unknown = format!("{GOOD}revocations:\n  - {{spiffe_id: x, serial: 1}}\n");
    assert!(ProxyConfig::parse(&unknown, &dir).is_err());
    let joining = format!(
        "{JOINING}revocations:\n  - {{spiffe_id: \"spiffe://mesh.local/ns/default/sa/x\", not_before_unix: 5}}\n"
    );
    assert!(
        has(
            &errors(&joining, &dir),
            "revocations",
            "comes from the control plane"
        ),
        "{:#?}",
        errors(&joining, &dir)
    );
}
