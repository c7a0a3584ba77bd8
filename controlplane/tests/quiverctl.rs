//! The real `quiverctl` binary against a real server: apply from a directory, get in every
//! format, the `get -o yaml | apply -f -` round trip, tokens, errors and exit codes.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{REVIEWS_SERVICE, SqliteTestDb, TestServer, route_yaml};

struct Ctl {
    server: String,
    token: Option<String>,
}

impl Ctl {
    async fn run(&self, args: &[&str], stdin: Option<String>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiverctl"));
        cmd.args(args)
            .env("QUIVER_SERVER", &self.server)
            .env_remove("QUIVER_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = &self.token {
            cmd.env("QUIVER_TOKEN", t);
        }
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("quiverctl runs");
            let mut pipe = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                pipe.write_all(s.as_bytes()).unwrap();
            }
            drop(pipe);
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str], stdin: Option<String>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            out.status.success(),
            "quiverctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn fails(&self, args: &[&str], stdin: Option<String>) -> String {
        let out = self.run(args, stdin).await;
        assert!(!out.status.success(), "quiverctl {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiverctl_end_to_end() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let ctl = Ctl {
        server: server.url.clone(),
        token: Some(server.admin.clone()),
    };

    // A directory: the Route file sorts first, but the Service it names is applied first.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-route.yaml"), route_yaml("reviews", 90)).unwrap();
    std::fs::write(dir.path().join("b-service.yml"), REVIEWS_SERVICE).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
    let out = ctl
        .ok(&["apply", "-f", dir.path().to_str().unwrap()], None)
        .await;
    assert_eq!(
        out,
        "Service shop/reviews created (resourceVersion 1)\nRoute shop/reviews created (resourceVersion 2)\n"
    );

    let yaml = ctl
        .ok(
            &["get", "route", "reviews", "-n", "shop", "-o", "yaml"],
            None,
        )
        .await;
    assert!(yaml.contains("resourceVersion: 2"), "{yaml}");
    let out = ctl.ok(&["apply", "-f", "-"], Some(yaml.clone())).await;
    assert_eq!(out, "Route shop/reviews unchanged (resourceVersion 2)\n");
    let again = ctl
        .ok(
            &["get", "route", "reviews", "-n", "shop", "-o", "yaml"],
            None,
        )
        .await;
    assert_eq!(
        again, yaml,
        "get -o yaml | apply -f - round-trips unchanged"
    );

    let json = ctl.ok(&["get", "routes", "-o", "json"], None).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["spec"]["rules"][0]["backends"][0]["weight"], 90);
    let table = ctl.ok(&["get", "svc"], None).await;
    assert!(table.starts_with("NAMESPACE   NAME"), "{table}");
    assert!(
        table.contains("shop        reviews   1         9080/http1   v1,v2"),
        "{table}"
    );

    // The authorization defaults in effect are always shown, stored or not.
    let mesh = ctl.ok(&["get", "meshconfig"], None).await;
    assert_eq!(
        mesh.trim(),
        "No MeshConfig resources found: the defaults apply (defaultPolicy ALLOW, \
         crossNamespacePolicy DENY)."
    );
    ctl.ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\n\
             spec: {defaultPolicy: DENY}\n"
                .into(),
        ),
    )
    .await;
    let mesh = ctl.ok(&["get", "meshconfig"], None).await;
    assert!(
        mesh.contains("DEFAULT-POLICY   CROSS-NAMESPACE")
            && mesh.contains("default     mesh   ")
            && mesh.trim_end().ends_with("DENY             DENY"),
        "{mesh}"
    );
    let err = ctl
        .fails(
            &["apply", "-f", "-"],
            Some(
                "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\n\
                 spec: {crossNamespacePolicy: open}\n"
                    .into(),
            ),
        )
        .await;
    assert!(
        err.contains("spec.crossNamespacePolicy") && err.contains("must be ALLOW or DENY"),
        "{err}"
    );

    // Editing a stale copy is refused with the conflict and a non-zero exit.
    let edited = yaml
        .replace("weight: 90", "weight: 80")
        .replace("weight: 10", "weight: 20");
    ctl.ok(&["apply", "-f", "-"], Some(edited.clone())).await;
    let err = ctl
        .fails(
            &["apply", "-f", "-"],
            Some(
                edited
                    .replace("weight: 80", "weight: 70")
                    .replace("weight: 20", "weight: 30"),
            ),
        )
        .await;
    assert!(
        err.contains("Aborted") && err.contains("changed since you read it"),
        "{err}"
    );

    // Invalid YAML is refused before anything is sent, naming the field.
    let typo = route_yaml("other", 50).replace("timeout", "timout");
    let err = ctl.fails(&["apply", "-f", "-"], Some(typo)).await;
    assert!(
        err.contains("spec.rules[0]") && err.contains("unknown field `timout`"),
        "{err}"
    );
    let err = ctl
        .fails(
            &["apply", "-f", "-"],
            Some(route_yaml("other", 90).replace("weight: 10", "weight: 50")),
        )
        .await;
    assert!(err.contains("spec.rules[0].backends"), "{err}");

    let twice = format!("{}---\n{}", route_yaml("dup", 50), route_yaml("dup", 60));
    let err = ctl.fails(&["apply", "-f", "-"], Some(twice)).await;
    assert!(err.contains("Route shop/dup appears twice"), "{err}");

    // Tokens.
    let viewer = ctl.ok(&["token", "create", "--role", "viewer"], None).await;
    let viewer = Ctl {
        server: server.url.clone(),
        token: Some(viewer.trim().to_string()),
    };
    viewer
        .ok(&["get", "route", "reviews", "-n", "shop"], None)
        .await;
    let err = viewer
        .fails(&["delete", "route", "reviews", "-n", "shop"], None)
        .await;
    assert!(err.contains("PermissionDenied"), "{err}");
    let anonymous = Ctl {
        server: server.url.clone(),
        token: None,
    };
    let err = anonymous.fails(&["get", "routes"], None).await;
    assert!(
        err.contains("Unauthenticated") && err.contains("QUIVER_TOKEN"),
        "{err}"
    );
    let join = ctl
        .ok(
            &[
                "join-token",
                "create",
                "--namespace",
                "shop",
                "--service-account",
                "web",
                "--uses",
                "3",
            ],
            None,
        )
        .await;
    assert!(join.trim().starts_with("qvj_"), "{join}");
    let status = ctl.ok(&["status"], None).await;
    assert!(status.contains("store:                sqlite"), "{status}");

    let out = ctl
        .ok(&["delete", "route", "reviews", "-n", "shop"], None)
        .await;
    assert!(out.starts_with("Route shop/reviews deleted"), "{out}");
    let err = ctl
        .fails(&["get", "route", "reviews", "-n", "shop"], None)
        .await;
    assert!(err.contains("NotFound"), "{err}");
    let err = ctl.fails(&["get", "gateway"], None).await;
    assert!(err.contains("unknown kind \"gateway\""), "{err}");
    let unreachable = Ctl {
        server: "http://127.0.0.1:9".into(),
        token: None,
    };
    let err = unreachable.fails(&["status"], None).await;
    assert!(err.contains("cannot reach the control plane"), "{err}");
    server.stop().await;
}

/// `quiverctl trust-bundle -o FILE` writes what a proxy needs for `--ca-cert`: with that file
/// a client verifies the discovery listener and joins; with another CA it cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_bundle_is_what_a_joining_proxy_needs() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let ctl = Ctl {
        server: server.url.clone(),
        token: Some(server.admin.clone()),
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh-ca.pem");
    let out = ctl
        .run(&["trust-bundle", "-o", file.to_str().unwrap()], None)
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "-o writes the file, not stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 certificate(s), trust domain mesh.local"),
        "{stderr}"
    );
    let pem = std::fs::read_to_string(&file).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    // Without -o the same PEM goes to stdout, so `> file` works as well.
    assert_eq!(ctl.ok(&["trust-bundle"], None).await, pem);

    // The file is enough to verify the discovery listener and join with a token.
    let token = ctl
        .ok(
            &[
                "join-token",
                "create",
                "--namespace",
                "shop",
                "--service-account",
                "web",
            ],
            None,
        )
        .await;
    let (_key, csr_der) = quiver_api::certs::new_key_and_csr().unwrap();
    let joined = common::mesh::anonymous(server.discovery, &pem)
        .await
        .join(quiver_api::v1::JoinRequest {
            join_token: token.trim().to_string(),
            csr_der,
        })
        .await
        .expect("join with the bundle from quiverctl trust-bundle")
        .into_inner();
    assert_eq!(joined.spiffe_id, "spiffe://mesh.local/ns/shop/sa/web");

    // Another CA's certificate does not verify the listener.
    let other = quiver_api::certs::CertificateAuthority::generate(
        "mesh.local",
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let tls = quiver_api::tls::pinned_client_config_without_identity(
        other.cert_pem(),
        &quiver_api::SpiffeId::control_plane("mesh.local").unwrap(),
        &[b"h2"],
    )
    .unwrap();
    assert!(
        quiver_control::discovery::client::connect(server.discovery, tls)
            .await
            .is_err(),
        "a foreign CA must not verify the discovery listener"
    );

    // It needs a token, like every admin call.
    let anonymous = Ctl {
        server: server.url.clone(),
        token: None,
    };
    let err = anonymous.fails(&["trust-bundle"], None).await;
    assert!(err.contains("Unauthenticated"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiverctl_revokes_identities_and_lists_them() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let ctl = Ctl {
        server: server.url.clone(),
        token: Some(server.admin.clone()),
    };
    let id = "spiffe://mesh.local/ns/shop/sa/reviews";
    let out = ctl
        .ok(&["revoke", "identity", id, "--reason", "key leaked"], None)
        .await;
    assert!(out.starts_with(&format!("revoked {id}: ")), "{out}");
    let table = ctl.ok(&["revoke", "list"], None).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SPIFFE ID"), "{table}");
    assert!(
        lines[1].starts_with(id) && lines[1].ends_with("key leaked"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["revoke", "list", "-o", "json"], None).await).unwrap();
    assert_eq!(json[0]["spiffeId"], id);
    assert!(json[0]["notBeforeUnix"].as_i64().unwrap() > 0);

    // Refused input names the field; a workload that is not registered is named.
    let err = ctl
        .fails(&["revoke", "identity", "spiffe://other.td/ns/a/sa/b"], None)
        .await;
    assert!(
        err.contains("spiffeId: spiffe://other.td/ns/a/sa/b is not in this mesh's trust domain"),
        "{err}"
    );
    let err = ctl
        .fails(&["revoke", "workload", "nosuch", "-n", "shop"], None)
        .await;
    assert!(
        err.contains("workload: shop/nosuch is not registered"),
        "{err}"
    );
    server.stop().await;
}
