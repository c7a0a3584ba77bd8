//! The GitOps side of the real `quiverctl` binary against a real server on SQLite:
//! `apply --dry-run`, `diff`, `delete -f`, `apply --prune -l` and `get -w`.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use common::ctl::Ctl;
use common::{
    REVIEWS_SERVICE, SqliteTestDb, TestServer, route_yaml, route_yaml_on, service_like_reviews,
};

async fn start() -> (SqliteTestDb, TestServer, Ctl) {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let ctl = Ctl::new(&server);
    (db, server, ctl)
}

/// The store's version (moves with every write, and only then).
async fn store_version(server: &TestServer) -> u64 {
    server
        .admin()
        .await
        .status(quiver_api::v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .resource_version
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

fn path(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

/// `route_yaml_on` with `metadata.labels`.
fn labelled_route(name: &str, service: &str, labels: &str) -> String {
    route_yaml_on(name, service, 50).replace(
        "namespace: shop}",
        &format!("namespace: shop, labels: {{{labels}}}}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_checks_like_apply_and_stores_nothing() {
    let (_db, server, ctl) = start().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a-route.yaml", &route_yaml("reviews", 90));
    write(dir.path(), "b-service.yaml", REVIEWS_SERVICE);

    // The Route names a Service that only the same set creates: checked as the whole apply.
    let out = ctl
        .ok(&["apply", "--dry-run", "-f", path(dir.path())])
        .await;
    assert_eq!(
        out,
        "Service shop/reviews created (dry run)\nRoute shop/reviews created (dry run)\n"
    );
    assert_eq!(
        store_version(&server).await,
        0,
        "a dry run takes no version"
    );
    let err = ctl.fails(&["get", "route", "reviews", "-n", "shop"]).await;
    assert!(err.contains("NotFound"), "{err}");

    ctl.ok(&["apply", "-f", path(dir.path())]).await;
    assert_eq!(store_version(&server).await, 2);

    // A change: "configured", and still the stored weight and version.
    write(dir.path(), "a-route.yaml", &route_yaml("reviews", 70));
    let out = ctl
        .ok(&["apply", "--dry-run=server", "-f", path(dir.path())])
        .await;
    assert_eq!(
        out,
        "Service shop/reviews unchanged (dry run)\nRoute shop/reviews configured (dry run)\n"
    );
    assert_eq!(store_version(&server).await, 2);
    let yaml = ctl
        .ok(&["get", "route", "reviews", "-n", "shop", "-o", "yaml"])
        .await;
    assert!(
        yaml.contains("weight: 90") && yaml.contains("resourceVersion: 2"),
        "{yaml}"
    );

    // A refused document: the same field errors as the real apply, and a failure.
    let bad = route_yaml("reviews", 70).replace("weight: 30", "weight: 35");
    let dry = ctl
        .run(&["apply", "--dry-run", "-f", "-"], Some(bad.clone()))
        .await;
    let real = ctl.run(&["apply", "-f", "-"], Some(bad)).await;
    assert!(!dry.status.success() && !real.status.success());
    let dry_err = String::from_utf8(dry.stderr).unwrap();
    assert!(
        dry_err.contains("spec.rules[0].backends: weights sum to 105, must sum to 100"),
        "{dry_err}"
    );
    assert_eq!(dry_err, String::from_utf8(real.stderr).unwrap());
    // A reference to a subset the stored Service does not have, as apply refuses it.
    let err = ctl
        .run(
            &["apply", "--dry-run", "-f", "-"],
            Some(route_yaml("other", 50).replace("subset: v2", "subset: v3")),
        )
        .await;
    let err = String::from_utf8(err.stderr).unwrap();
    assert!(
        err.contains("spec.rules[0].backends[1].subset") && err.contains("\"v3\""),
        "{err}"
    );

    // The resourceVersion precondition is checked too.
    let stale = yaml.replace("resourceVersion: 2", "resourceVersion: 1");
    let out = ctl
        .run(&["apply", "--dry-run", "-f", "-"], Some(stale))
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("Aborted") && err.contains("changed since you read it"),
        "{err}"
    );
    assert_eq!(store_version(&server).await, 2, "nothing was written");

    // Bad flags are named.
    let err = ctl
        .fails(&["apply", "--dry-run=client", "-f", path(dir.path())])
        .await;
    assert!(err.contains("--dry-run"), "{err}");

    // The RPC itself: an admin's call like Apply, a missing object named.
    let status = server
        .admin()
        .await
        .dry_run_apply(quiver_api::v1::DryRunApplyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("object: required"),
        "{status:?}"
    );
    let viewer = ctl.ok(&["token", "create", "--role", "viewer"]).await;
    let err = Ctl {
        server: server.url.clone(),
        token: viewer.trim().to_string(),
    }
    .fails(&["apply", "--dry-run", "-f", path(dir.path())])
    .await;
    assert!(
        err.contains("PermissionDenied") && err.contains("DryRunApply"),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_names_the_fields_an_apply_would_change() {
    let (_db, server, ctl) = start().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a-route.yaml", &route_yaml("reviews", 90));
    write(dir.path(), "b-service.yaml", REVIEWS_SERVICE);

    // Nothing stored yet: everything would be created, shown whole; exit status 1.
    let out = ctl.run(&["diff", "-f", path(dir.path())], None).await;
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Service shop/reviews would be created:\n  + apiVersion: quiver.dev/v1\n")
            && text.contains("  + kind: Route\n"),
        "{text}"
    );
    assert_eq!(store_version(&server).await, 0);

    ctl.ok(&["apply", "-f", path(dir.path())]).await;
    let out = ctl.run(&["diff", "-f", path(dir.path())], None).await;
    assert_eq!(out.status.code(), Some(0), "no differences: status 0");
    assert!(out.stdout.is_empty());

    write(dir.path(), "a-route.yaml", &route_yaml("reviews", 80));
    let out = ctl.run(&["diff", "-f", path(dir.path())], None).await;
    assert_eq!(out.status.code(), Some(1), "differences: status 1");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "Route shop/reviews would be configured:\n  \
         spec.rules[0].backends[0].weight: 90 -> 80\n  \
         spec.rules[0].backends[1].weight: 10 -> 20\n",
        "only the changed fields; the unchanged Service is silent"
    );
    assert_eq!(store_version(&server).await, 2, "diff writes nothing");

    // A document the server refuses is an error: status 2, the field named.
    write(
        dir.path(),
        "a-route.yaml",
        &route_yaml("reviews", 80).replace("timeout: 2s", "timeout: -1s"),
    );
    let out = ctl.run(&["diff", "-f", path(dir.path())], None).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("spec.rules[0].timeout"), "{err}");
    let unreachable = Ctl {
        server: "http://127.0.0.1:9".into(),
        token: ctl.token.clone(),
    };
    let out = unreachable
        .run(&["diff", "-f", path(dir.path())], None)
        .await;
    assert_eq!(out.status.code(), Some(2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_f_removes_what_the_documents_name() {
    let (_db, server, ctl) = start().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a-route.yaml", &route_yaml("reviews", 90));
    write(dir.path(), "b-service.yaml", REVIEWS_SERVICE);
    ctl.ok(&["apply", "-f", path(dir.path())]).await;
    // Not in the directory: a Route of a Service of its own (one Route per service).
    ctl.ok_stdin(&["apply", "-f", "-"], service_like_reviews("details"))
        .await;
    ctl.ok_stdin(&["apply", "-f", "-"], route_yaml_on("keep", "details", 50))
        .await;

    let out = ctl.ok(&["delete", "-f", path(dir.path())]).await;
    assert_eq!(
        out,
        "Route shop/reviews deleted (resourceVersion 5)\n\
         Service shop/reviews deleted (resourceVersion 6)\n",
        "the Route before the Service it names"
    );
    for (kind, name) in [("route", "reviews"), ("service", "reviews")] {
        let err = ctl.fails(&["get", kind, name, "-n", "shop"]).await;
        assert!(err.contains("NotFound"), "{err}");
    }
    ctl.ok(&["get", "route", "keep", "-n", "shop"]).await;

    // Gone already: an error naming each one, unless --ignore-not-found.
    let err = ctl.fails(&["delete", "-f", path(dir.path())]).await;
    assert!(
        err.contains("Route shop/reviews") && err.contains("NotFound"),
        "{err}"
    );
    let out = ctl
        .ok(&["delete", "-f", path(dir.path()), "--ignore-not-found"])
        .await;
    assert!(out.is_empty(), "{out}");
    ctl.ok(&[
        "delete",
        "route",
        "nosuch",
        "-n",
        "shop",
        "--ignore-not-found",
    ])
    .await;

    let err = ctl.fails(&["delete"]).await;
    assert!(
        err.contains("--filename") || err.contains("<KIND>"),
        "{err}"
    );
    let err = ctl
        .fails(&["delete", "route", "keep", "-f", path(dir.path())])
        .await;
    assert!(err.contains("--filename"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_only_labelled_resources_dropped_from_the_directory() {
    let (_db, server, ctl) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let service = REVIEWS_SERVICE.replace(
        "namespace: shop}",
        "namespace: shop, labels: {managed-by: git}}",
    );
    write(dir.path(), "service.yaml", &service);
    write(
        dir.path(),
        "a.yaml",
        &labelled_route("a", "reviews", "managed-by: git"),
    );
    write(
        dir.path(),
        "b.yaml",
        &labelled_route("b", "details", "managed-by: git"),
    );
    // Each Route routes a Service of its own (one Route per service); these are not the
    // directory's to prune.
    for name in ["details", "manual", "other"] {
        ctl.ok_stdin(&["apply", "-f", "-"], service_like_reviews(name))
            .await;
    }
    ctl.ok(&["apply", "-f", path(dir.path())]).await;
    // Not owned by this directory: no label, and another value of the label.
    ctl.ok_stdin(&["apply", "-f", "-"], route_yaml_on("manual", "manual", 50))
        .await;
    ctl.ok_stdin(
        &["apply", "-f", "-"],
        labelled_route("other", "other", "managed-by: other-repo"),
    )
    .await;

    let sel = ["apply", "--prune", "-l", "managed-by=git", "-f"];
    let args = |d| [&sel[..], &[d]].concat();
    let out = ctl.ok(&args(path(dir.path()))).await;
    assert!(!out.contains("pruned"), "nothing dropped yet: {out}");

    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    // A dry run says what it would prune, and prunes nothing.
    let dry = [&["apply", "--dry-run"][..], &sel[1..], &[path(dir.path())]].concat();
    let out = ctl.ok(&dry).await;
    assert!(out.contains("Route shop/b pruned (dry run)\n"), "{out}");
    ctl.ok(&["get", "route", "b", "-n", "shop"]).await;

    let out = ctl.ok(&args(path(dir.path()))).await;
    let pruned: Vec<&str> = out.lines().filter(|l| l.contains("pruned")).collect();
    assert_eq!(pruned.len(), 1, "{out}");
    assert!(pruned[0].starts_with("Route shop/b pruned"), "{out}");
    let err = ctl.fails(&["get", "route", "b", "-n", "shop"]).await;
    assert!(err.contains("NotFound"), "{err}");
    for kept in ["a", "manual", "other"] {
        ctl.ok(&["get", "route", kept, "-n", "shop"]).await;
    }
    ctl.ok(&["get", "service", "reviews", "-n", "shop"]).await;

    // --prune without a selector, and a selector that is not key=value, name the flag.
    let err = ctl
        .fails(&["apply", "--prune", "-f", path(dir.path())])
        .await;
    assert!(err.contains("--prune needs -l/--selector"), "{err}");
    let err = ctl
        .fails(&[
            "apply",
            "--prune",
            "-l",
            "managed-by",
            "-f",
            path(dir.path()),
        ])
        .await;
    assert!(err.contains("-l/--selector \"managed-by\""), "{err}");
    ctl.ok(&["get", "route", "a", "-n", "shop"]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_a_line_per_change() {
    let (_db, server, ctl) = start().await;
    ctl.ok_stdin(&["apply", "-f", "-"], REVIEWS_SERVICE.into())
        .await;
    ctl.ok_stdin(&["apply", "-f", "-"], service_like_reviews("details"))
        .await;
    ctl.ok_stdin(&["apply", "-f", "-"], route_yaml("a", 90))
        .await;

    let mut child = ctl
        .command(&["get", "routes", "-w"])
        .spawn()
        .expect("quiverctl runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // A bound on how long a missing line is waited for, not a timing assertion.
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(60))
            .expect("quiverctl get -w printed a line")
    };
    // What is there now, then each change made while it runs.
    assert_eq!(next(), "ADDED route shop/a v3");
    ctl.ok_stdin(&["apply", "-f", "-"], route_yaml("a", 80))
        .await;
    assert_eq!(next(), "MODIFIED route shop/a v4");
    ctl.ok_stdin(&["apply", "-f", "-"], route_yaml_on("b", "details", 50))
        .await;
    assert_eq!(next(), "ADDED route shop/b v5");
    // Another kind is not this watch's.
    ctl.ok(&["delete", "service", "reviews", "-n", "shop"])
        .await;
    ctl.ok(&["delete", "route", "a", "-n", "shop"]).await;
    assert_eq!(next(), "DELETED route shop/a v7");
    child.kill().unwrap();
    child.wait().unwrap();

    let err = ctl.fails(&["get", "routes", "-w", "-o", "yaml"]).await;
    assert!(err.contains("--watch") && err.contains("--output"), "{err}");
    server.stop().await;
}
