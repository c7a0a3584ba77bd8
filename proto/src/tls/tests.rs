use std::time::{Duration, SystemTime};

use super::*;
use crate::certs::CertificateAuthority;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn issued_svid_carries_exactly_the_entitled_id_and_verifies() {
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let leaf = ca
        .issue(
            &id("spiffe://mesh.local/ns/default/sa/a"),
            Duration::from_secs(600),
        )
        .unwrap();
    let ident = MeshIdentity::from_pem(&leaf.chain_pem, &leaf.key_pem, ca.cert_pem()).unwrap();
    assert_eq!(
        ident.spiffe_id.as_str(),
        "spiffe://mesh.local/ns/default/sa/a"
    );
    let na = certs::not_after(&ident.chain[0]).unwrap();
    let want = SystemTime::now() + Duration::from_secs(600);
    let diff = want.duration_since(na).unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_secs(5), "not_after off by {diff:?}");
    // Both configs build: the key matches the certificate and the bundle parses.
    ident.server_config(&[b"h3"]).unwrap();
    ident.client_config(&[b"h3"]).unwrap();

    let verifier = SpiffeServerVerifier {
        roots: ident.roots().unwrap(),
        algs: provider().signature_verification_algorithms,
        trust_domain: "mesh.local".into(),
        deny: DenyList::default(),
        pinned: None,
    };
    let name = ServerName::try_from("a.mesh").unwrap();
    verifier
        .verify_server_cert(&ident.chain[0], &[], &name, &[], UnixTime::now())
        .unwrap();

    // A leaf from another CA does not chain to this bundle.
    let other = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let foreign = other
        .issue(
            &id("spiffe://mesh.local/ns/default/sa/a"),
            Duration::from_secs(600),
        )
        .unwrap();
    let foreign = certs::certs_from_pem(&foreign.chain_pem).unwrap();
    assert!(
        verifier
            .verify_server_cert(&foreign[0], &[], &name, &[], UnixTime::now())
            .is_err()
    );

    // A leaf of this CA for another trust domain is refused too.
    let td = ca
        .issue(
            &id("spiffe://other.td/ns/default/sa/a"),
            Duration::from_secs(600),
        )
        .unwrap();
    let td = certs::certs_from_pem(&td.chain_pem).unwrap();
    let err = verifier
        .verify_server_cert(&td[0], &[], &name, &[], UnixTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("trust domain"), "{err}");

    // An expired leaf is refused.
    let now = SystemTime::now();
    let old = ca
        .issue_between(
            &id("spiffe://mesh.local/ns/default/sa/a"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let old = certs::certs_from_pem(&old.chain_pem).unwrap();
    let err = verifier
        .verify_server_cert(&old[0], &[], &name, &[], UnixTime::now())
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
}

#[test]
fn csr_signing_takes_only_the_public_key() {
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let (key_pem, csr) = certs::new_key_and_csr().unwrap();
    let (chain, _) = ca
        .sign_csr(
            &csr,
            &id("spiffe://mesh.local/ns/prod/sa/web"),
            Duration::from_secs(60),
        )
        .unwrap();
    let ident = MeshIdentity::from_pem(&chain, &key_pem, ca.cert_pem()).unwrap();
    assert_eq!(ident.spiffe_id.workload_parts(), Some(("prod", "web")));
    ident.server_config(&[b"h3"]).unwrap();
}

#[test]
fn no_leaf_outlives_its_ca_whatever_the_ttl() {
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let ca_expiry = certs::not_after(&certs::first_cert_der(ca.cert_pem()).unwrap()).unwrap();
    let (_, csr) = certs::new_key_and_csr().unwrap();
    let web = id("spiffe://mesh.local/ns/prod/sa/web");
    for ttl in [
        Duration::from_secs(7200),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        let (chain, not_after) = ca.sign_csr(&csr, &web, ttl).unwrap();
        let leaf = certs::not_after(&certs::first_cert_der(&chain).unwrap()).unwrap();
        assert_eq!(not_after, ca_expiry, "{ttl:?}");
        assert_eq!(leaf, ca_expiry, "{ttl:?}");
        assert_eq!(ca.issue(&web, ttl).unwrap().not_after, ca_expiry);
    }
}

#[test]
fn intermediate_ca_appends_itself_to_issued_chains() {
    let root = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    // An operator intermediate: a CA leaf signed by the root. rcgen builds it for the test.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    let root_issuer = rcgen::Issuer::from_ca_cert_pem(
        root.cert_pem(),
        rcgen::KeyPair::from_pem(root.key_pem()).unwrap(),
    )
    .unwrap();
    let inter_cert = params.signed_by(&key, &root_issuer).unwrap();
    let inter = CertificateAuthority::from_pem(&inter_cert.pem(), &key.serialize_pem()).unwrap();
    let leaf = inter
        .issue(
            &id("spiffe://mesh.local/ns/a/sa/b"),
            Duration::from_secs(60),
        )
        .unwrap();
    let ident = MeshIdentity::from_pem(&leaf.chain_pem, &leaf.key_pem, root.cert_pem()).unwrap();
    assert_eq!(ident.chain.len(), 2);
    let verifier = SpiffeServerVerifier {
        roots: ident.roots().unwrap(),
        algs: provider().signature_verification_algorithms,
        trust_domain: "mesh.local".into(),
        deny: DenyList::default(),
        pinned: None,
    };
    verifier
        .verify_server_cert(
            &ident.chain[0],
            &ident.chain[1..],
            &ServerName::try_from("x").unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap();
}

#[test]
fn refuses_a_non_ca_as_ca_and_non_svid_leaves() {
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let leaf = ca
        .issue(
            &id("spiffe://mesh.local/ns/a/sa/b"),
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(matches!(
        CertificateAuthority::from_pem(&leaf.chain_pem, &leaf.key_pem),
        Err(CertError::NotCa)
    ));
    let dns = rcgen::generate_simple_self_signed(vec!["example.com".into()]).unwrap();
    assert!(matches!(
        certs::spiffe_id_of(dns.cert.der()),
        Err(CertError::NoSpiffeId)
    ));
}

/// Two in-memory handshakes between the same configs: what kind the second one was.
fn second_handshake(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
) -> Option<rustls::HandshakeKind> {
    let mut kind = None;
    for _ in 0..2 {
        let name = ServerName::try_from("quiver.mesh").unwrap();
        let mut c = rustls::ClientConnection::new(client.clone(), name).unwrap();
        let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
        // Until both are done, then once more so the client reads any ticket sent after.
        for _ in 0..8 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() {
                break;
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        kind = s.handshake_kind();
    }
    kind
}

#[test]
fn mesh_connections_never_resume_a_session() {
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let issue = |sa: &str| {
        let leaf = ca
            .issue(
                &id(&format!("spiffe://mesh.local/ns/default/sa/{sa}")),
                Duration::from_secs(600),
            )
            .unwrap();
        MeshIdentity::from_pem(&leaf.chain_pem, &leaf.key_pem, ca.cert_pem()).unwrap()
    };
    let (a, b) = (issue("a"), issue("b"));
    let client = Arc::new(a.client_config(&[b"h3"]).unwrap());
    let server = Arc::new(b.server_config(&[b"h3"]).unwrap());
    // Every handshake is a full one: the certificate verifiers judge each connection.
    assert_eq!(
        second_handshake(&client, &server),
        Some(rustls::HandshakeKind::Full)
    );
    // The check can see a resumption: with rustls' defaults on both sides there is one.
    let mut resuming_server = b.server_config(&[b"h3"]).unwrap();
    resuming_server.session_storage = rustls::server::ServerSessionMemoryCache::new(16);
    resuming_server.send_tls13_tickets = 2;
    let mut resuming_client = a.client_config(&[b"h3"]).unwrap();
    resuming_client.resumption = rustls::client::Resumption::in_memory_sessions(16);
    assert_eq!(
        second_handshake(&Arc::new(resuming_client), &Arc::new(resuming_server)),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[test]
fn both_verifiers_refuse_a_revoked_leaf_as_revoked() {
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let now = SystemTime::now();
    let leaf = ca
        .issue_between(
            &id("spiffe://mesh.local/ns/a/sa/b"),
            now - Duration::from_secs(120),
            now + Duration::from_secs(600),
        )
        .unwrap();
    let ident = MeshIdentity::from_pem(&leaf.chain_pem, &leaf.key_pem, ca.cert_pem()).unwrap();
    let deny = DenyList::default();
    // The two verifiers as `client_config_denying` and `server_config_denying` build them.
    let client_side = SpiffeServerVerifier {
        roots: ident.roots().unwrap(),
        algs: provider().signature_verification_algorithms,
        trust_domain: "mesh.local".into(),
        deny: deny.clone(),
        pinned: None,
    };
    let server_side = SpiffeClientVerifier {
        inner: WebPkiClientVerifier::builder_with_provider(ident.roots().unwrap(), provider())
            .build()
            .unwrap(),
        trust_domain: "mesh.local".into(),
        deny: deny.clone(),
    };
    let name = ServerName::try_from("x").unwrap();
    let check = || {
        (
            client_side
                .verify_server_cert(&ident.chain[0], &[], &name, &[], UnixTime::now())
                .map(|_| ()),
            server_side
                .verify_client_cert(&ident.chain[0], &[], UnixTime::now())
                .map(|_| ()),
        )
    };
    assert!(matches!(check(), (Ok(()), Ok(()))), "{:?}", check());
    // Revoked from a minute ago: the leaf (notBefore two minutes ago) is covered; a list
    // replaced after the configs were built applies to them.
    let minute_ago = now - Duration::from_secs(60);
    let secs = i64::try_from(
        minute_ago
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    deny.replace([("spiffe://mesh.local/ns/a/sa/b".to_string(), secs)].into());
    let revoked = rustls::Error::InvalidCertificate(CertificateError::Revoked);
    let (c, s) = check();
    assert_eq!(c.unwrap_err(), revoked);
    assert_eq!(s.unwrap_err(), revoked);
}

#[test]
fn a_pinned_client_accepts_only_the_control_planes_id() {
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let control = SpiffeId::control_plane("mesh.local").unwrap();
    assert_eq!(
        control.as_str(),
        "spiffe://mesh.local/ns/quiver-system/sa/control-plane"
    );
    let mut roots = RootCertStore::empty();
    roots
        .add(certs::first_cert_der(ca.cert_pem()).unwrap())
        .unwrap();
    let verifier = SpiffeServerVerifier {
        roots: Arc::new(roots),
        algs: provider().signature_verification_algorithms,
        trust_domain: "mesh.local".into(),
        deny: DenyList::default(),
        pinned: Some(control.clone()),
    };
    let name = ServerName::try_from("quiver-control").unwrap();
    let real = ca.issue(&control, Duration::from_secs(600)).unwrap();
    let real = certs::certs_from_pem(&real.chain_pem).unwrap();
    verifier
        .verify_server_cert(&real[0], &[], &name, &[], UnixTime::now())
        .unwrap();
    // A workload of the same CA and trust domain is not the control plane.
    let workload = ca
        .issue(
            &id("spiffe://mesh.local/ns/default/sa/web"),
            Duration::from_secs(600),
        )
        .unwrap();
    let workload = certs::certs_from_pem(&workload.chain_pem).unwrap();
    let err = verifier
        .verify_server_cert(&workload[0], &[], &name, &[], UnixTime::now())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spiffe://mesh.local/ns/default/sa/web")
            && err.contains("spiffe://mesh.local/ns/quiver-system/sa/control-plane"),
        "{err}"
    );
}

#[test]
fn a_bundle_changes_only_with_overlap() {
    let old = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let new = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let current = certs::certs_from_pem(old.cert_pem()).unwrap();
    // Old and new together: taken (rotation), in either order.
    let both = format!("{}{}", new.cert_pem(), old.cert_pem());
    assert_eq!(check_bundle_change(&current, &both).unwrap().len(), 2);
    // Then the old one retired: taken by a holder of both.
    let current = certs::certs_from_pem(&both).unwrap();
    assert_eq!(
        check_bundle_change(&current, new.cert_pem()).unwrap().len(),
        1
    );
    // A bundle without any root trusted now: refused, saying which roots.
    let current = certs::certs_from_pem(old.cert_pem()).unwrap();
    let err = check_bundle_change(&current, new.cert_pem())
        .unwrap_err()
        .to_string();
    assert!(err.contains("keeps none of the roots"), "{err}");
    assert!(err.contains("Quiver mesh root mesh.local"), "{err}");
    // Garbage is refused too.
    assert!(check_bundle_change(&current, "not PEM").is_err());
}
