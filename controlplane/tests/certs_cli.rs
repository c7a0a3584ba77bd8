//! `quiverctl certs ca|issue` as an operator runs them.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_quiverctl");

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run quiverctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn mints_a_ca_and_an_svid_that_a_proxy_identity_accepts() {
    let dir = std::env::temp_dir().join(format!("quiverctl-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("ca");
    let leaf = dir.join("web");
    let (ok, out) = run(&[
        "certs",
        "ca",
        "--out",
        ca.to_str().unwrap(),
        "--trust-domain",
        "prod.example",
    ]);
    assert!(ok, "{out}");
    let mode = std::fs::metadata(ca.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "CA key must not be readable by others");

    // Refuses to overwrite an existing CA without --force.
    let (ok, out) = run(&["certs", "ca", "--out", ca.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("--force"), "{out}");

    let (ok, out) = run(&[
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://prod.example/ns/shop/sa/web",
        "--out",
        leaf.to_str().unwrap(),
        "--ttl",
        "2h",
    ]);
    assert!(ok, "{out}");
    let mode = std::fs::metadata(leaf.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let id = quiver_api::tls::MeshIdentity::from_files(
        &leaf.join("cert.pem"),
        &leaf.join("key.pem"),
        &leaf.join("bundle.pem"),
    )
    .expect("the files form a usable identity");
    assert_eq!(
        id.spiffe_id.as_str(),
        "spiffe://prod.example/ns/shop/sa/web"
    );
    let not_after = quiver_api::certs::not_after(&id.chain[0]).unwrap();
    let left = not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left.as_secs() > 7000 && left.as_secs() <= 7200,
        "ttl {left:?}"
    );

    // Bad input is refused with the flag named.
    let (ok, out) = run(&[
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--spiffe-id",
        "web",
        "--out",
        leaf.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(out.contains("--spiffe-id"), "{out}");
    let (ok, out) = run(&[
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://prod.example/x",
        "--out",
        leaf.to_str().unwrap(),
        "--ttl",
        "forever",
    ]);
    assert!(!ok);
    assert!(out.contains("--ttl"), "{out}");
    let (ok, out) = run(&[
        "certs",
        "issue",
        "--ca",
        "/nonexistent",
        "--spiffe-id",
        "spiffe://prod.example/x",
        "--out",
        leaf.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(out.contains("/nonexistent/ca.pem"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
