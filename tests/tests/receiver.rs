//! Receiver-side enforcement in control-plane mode, checked from outside Quiver: an
//! independent HTTP/3 client (Python aioquic, tests/tests/support/h3_client.py) dials a joined
//! callee proxy's QUIC port directly, the way a compromised workload that skips its own
//! sidecar would, holding a certificate the mesh CA issued to a workload of another
//! namespace. What the control plane scopes for callers must hold at the callee too.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quiver_tests::apps::{Behaviour, served, start_tagged_echo};
use quiver_tests::eventually;
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec};
use quiver_tests::metric_sum;
use quiver_tests::pki::{IdentityFiles, Pki, temp_dir};

const INSTALL: &str = "aioquic is required: `python3 -m pip install aioquic` (scripts/test.sh \
     installs it)";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/h3_client.py")
}

/// What one request got: a response (status, `quiver-error`, the app's tag), or the
/// connection closed under it (QUIC error code; 0x100-0x1ff are TLS alerts).
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Response {
        status: u16,
        error: String,
        tag: String,
    },
    Closed {
        code: i64,
        reason: String,
    },
    Timeout,
}

/// `count` GETs of `/receiver` naming `target` in `quiver-target`, on one QUIC connection to
/// `addr` made with `identity`'s certificate and key.
async fn h3_get(
    addr: SocketAddr,
    identity: &IdentityFiles,
    target: &str,
    count: u32,
) -> Vec<Answer> {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script())
        .args(["--host", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string()])
        .arg("--cert")
        .arg(&identity.cert)
        .arg("--key")
        .arg(&identity.key)
        .args(["--target", target, "--path", "/receiver"])
        .args(["--count", &count.to_string(), "--timeout", "5"]);
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run python3: {e}\n{INSTALL}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(3), "{stderr}\n{INSTALL}");
    assert!(
        out.status.success(),
        "h3_client.py failed ({}):\n{stderr}",
        out.status
    );
    let answers: Vec<Answer> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            if v["closed"].as_bool() == Some(true) {
                Answer::Closed {
                    code: v["error_code"].as_i64().unwrap_or(-1),
                    reason: text("reason"),
                }
            } else if v["timeout"].as_bool() == Some(true) {
                Answer::Timeout
            } else {
                Answer::Response {
                    status: u16::try_from(v["status"].as_u64().unwrap_or(0)).unwrap_or(0),
                    error: text("error"),
                    tag: text("tag"),
                }
            }
        })
        .collect();
    assert_eq!(answers.len(), count as usize, "{stdout}\n{stderr}");
    answers
}

/// aioquic must be there: the test fails (never skips) without it.
async fn require_aioquic() {
    let ok = tokio::process::Command::new("python3")
        .args(["-c", "import aioquic"])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{INSTALL}");
}

/// A callee Service with a joined sidecar; an aioquic client with a mesh-CA certificate for
/// `games/bot` speaks HTTP/3 straight to the sidecar's QUIC port. With no policy (the default
/// MeshConfig: other namespaces DENY) it gets 403 `denied` and the app sees nothing, while a
/// same-namespace certificate from the same CA is served (so the client and the port are
/// right). After an AuthorizationPolicy naming `games/bot` is applied through the API, the
/// same client is served; `games/other` still is not. A certificate of the same trust domain
/// from a foreign CA is refused in the TLS handshake (a QUIC CRYPTO_ERROR, a failed server
/// handshake in the proxy's metrics) and reaches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_h3_caller_from_another_namespace_is_refused_until_a_policy_names_it() {
    quiver_tests::init_log();
    require_aioquic().await;
    let dir = temp_dir("receiver");
    let db = Db::postgres().await;
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    let tag = "receiver-reviews";
    let app = start_tagged_echo(Behaviour {
        tag: tag.into(),
        ..Default::default()
    })
    .await;
    cp.apply(&format!(
        r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {}}}]
"#,
        app.port()
    ))
    .await;
    let ca = cp.write_ca(&dir).await;
    let reviews = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            service: "reviews",
            token: cp.join_token("default", "reviews", 1, "10m").await,
            labels: &[],
            outbound: &[],
            extra: &[],
        },
    )
    .await;
    // The sidecar's QUIC port, as the control plane lists it to callers.
    let quic: SocketAddr = eventually(
        "the reviews workload is registered",
        Duration::from_secs(20),
        || async {
            let addrs = cp.workloads("default", "reviews").await;
            addrs.first().and_then(|a| a.parse().ok())
        },
    )
    .await;
    let target = "reviews:9080";
    let bot = cp.issue_identity("games", "bot", &dir).await;
    let other = cp.issue_identity("games", "other", &dir).await;
    let neighbour = cp.issue_identity("default", "frontend", &dir).await;

    // The client works: a same-namespace workload of the same CA is served.
    let ok = h3_get(quic, &neighbour, target, 3).await;
    assert!(
        ok.iter()
            .all(|a| matches!(a, Answer::Response { status: 200, tag: t, .. } if t == tag)),
        "{ok:?}\n{}",
        reviews.logs()
    );
    assert_eq!(served(tag), 3);

    // Another namespace, no policy: refused by the callee, the app never sees it.
    let refused = h3_get(quic, &bot, target, 5).await;
    assert!(
        refused
            .iter()
            .all(|a| matches!(a, Answer::Response { status: 403, error, tag: t } if error == "denied" && t.is_empty())),
        "{refused:?}"
    );
    assert_eq!(
        served(tag),
        3,
        "a caller from another namespace reached the app"
    );

    // A policy that names games/bot, applied through the API, lets it in.
    cp.apply(
        r#"
apiVersion: quiver.dev/v1
kind: AuthorizationPolicy
metadata: {name: games-bot, namespace: default}
spec:
  service: reviews
  allow:
  - sources: ["spiffe://mesh.local/ns/games/sa/bot"]
"#,
    )
    .await;
    eventually(
        "the policy reaches the callee",
        Duration::from_secs(20),
        || async {
            let a = h3_get(quic, &bot, target, 1).await;
            matches!(a[0], Answer::Response { status: 200, .. }).then_some(())
        },
    )
    .await;
    let before = served(tag);
    let allowed = h3_get(quic, &bot, target, 5).await;
    assert!(
        allowed
            .iter()
            .all(|a| matches!(a, Answer::Response { status: 200, tag: t, .. } if t == tag)),
        "{allowed:?}"
    );
    assert_eq!(served(tag), before + 5);
    // The rule names bot, not its namespace.
    let still = h3_get(quic, &other, target, 3).await;
    assert!(
        still
            .iter()
            .all(|a| matches!(a, Answer::Response { status: 403, error, .. } if error == "denied")),
        "{still:?}"
    );
    assert_eq!(served(tag), before + 5);

    // Same trust domain, same names, a foreign CA: refused in the handshake.
    let failed = |text: &str| {
        metric_sum(
            text,
            "quiver_quic_handshakes_total",
            &["side=\"server\"", "result=\"failed\""],
        )
    };
    let failed_before = failed(&reviews.metrics().await);
    let foreign = Pki::new().issue_in("games", "bot");
    let answers = h3_get(quic, &foreign, target, 1).await;
    assert!(
        matches!(&answers[0], Answer::Closed { code, .. } if (0x100..=0x1ff).contains(code)),
        "a foreign-CA certificate got {answers:?}"
    );
    eventually(
        "the proxy counts the failed handshake",
        Duration::from_secs(5),
        || async { (failed(&reviews.metrics().await) > failed_before).then_some(()) },
    )
    .await;
    assert_eq!(
        served(tag),
        before + 5,
        "a foreign-CA caller reached the app"
    );
}
