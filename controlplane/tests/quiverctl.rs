//! The real `quiverctl` binary against a real server: apply from a directory, get in every
//! format, the `get -o yaml | apply -f -` round trip, tokens, errors and exit codes.

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
