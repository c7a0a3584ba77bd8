//! quiverctl as an operator's toolbox, against a real mesh: a `quiver-control` process,
//! `quiver-proxy` processes that joined it, and the real `quiverctl` binary. proxy-status
//! shows what each proxy runs, proxy-config the routes one runs, `check` fails on a stopped
//! proxy and on a Route to a subset that no longer exists and passes on a healthy mesh;
//! completion scripts parse; contexts pick the server and token.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use quiver_tests::eventually;
use quiver_tests::mesh::{ADMIN_TOKEN, ControlPlane, Db, MeshProxy, ProxySpec, binary};
use quiver_tests::pki::temp_dir;

fn services_yaml(subsets: &[&str]) -> String {
    services_on(subsets, 19080)
}

/// The mesh's Services, the reviews app on `reviews_port`.
fn services_on(subsets: &[&str], reviews_port: u16) -> String {
    let subsets: String = subsets
        .iter()
        .map(|s| format!("  - {{name: {s}, labels: {{version: {s}}}}}\n"))
        .collect();
    format!(
        r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http1, targetPort: 18080}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {reviews_port}}}]
  subsets:
{subsets}"#
    )
}

fn route_yaml(v1: u32) -> String {
    format!(
        r#"
apiVersion: quiver.dev/v1
kind: Route
metadata: {{name: reviews, namespace: default}}
spec:
  service: reviews
  rules:
  - name: split
    backends:
    - {{subset: v1, weight: {v1}}}
    - {{subset: v2, weight: {}}}
"#,
        100 - v1
    )
}

/// Run quiverctl with `env` (and no QUIVER_* from the test's own environment).
async fn quiverctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary("quiverctl"));
    cmd.args(args);
    for var in [
        "QUIVER_SERVER",
        "QUIVER_TOKEN",
        "QUIVER_CA_FILE",
        "QUIVER_CONTEXT",
        "QUIVERCTL_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("quiverctl runs"))
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Ctl {
    server: String,
}

impl Ctl {
    async fn run(&self, args: &[&str]) -> Output {
        quiverctl(
            args,
            &[
                ("QUIVER_SERVER", &self.server),
                ("QUIVER_TOKEN", ADMIN_TOKEN),
            ],
        )
        .await
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(out.status.success(), "quiverctl {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// proxy-status as JSON.
    async fn proxies(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["proxy-status", "-o", "json"]).await;
        serde_json::from_str(&out).unwrap()
    }

    /// `check` with `extra` flags: (exit success, stdout).
    async fn check(&self, extra: &[&str]) -> (bool, String) {
        let mut args = vec!["check"];
        args.extend(extra);
        let out = self.run(&args).await;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

async fn join(cp: &ControlPlane, ca: &Path, dir: &Path, service: &str, version: &str) -> MeshProxy {
    let token = cp.join_token("default", service, 1, "10m").await;
    MeshProxy::start(
        cp,
        ca,
        dir,
        ProxySpec {
            service,
            token,
            labels: &[("version", version)],
            outbound: &[],
            extra: &[],
        },
    )
    .await
}

fn state_of<'a>(proxies: &'a [serde_json::Value], service: &str) -> Option<&'a serde_json::Value> {
    proxies.iter().find(|p| p["service"] == service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_config_and_check_follow_a_real_mesh() {
    quiver_tests::init_log();
    let dir = temp_dir("operator-mesh");
    let db = Db::sqlite(&dir);
    // A long lease: a stopped proxy stays registered (and listed) while the test looks at it.
    let cp = ControlPlane::start(&db, &dir, &["--lease-ttl", "120s"]).await;
    cp.apply(&services_yaml(&["v1", "v2"])).await;
    cp.apply(&route_yaml(50)).await;
    let ca = cp.write_ca(&dir).await;
    let web = join(&cp, &ca, &dir, "web", "v1").await;
    let mut reviews = join(&cp, &ca, &dir, "reviews", "v1").await;
    let ctl = Ctl {
        server: format!("http://{}", cp.api),
    };

    // Both proxies report the snapshot they applied: SYNCED, with their version and expiry.
    let proxies = eventually("both proxies SYNCED", Duration::from_secs(30), || async {
        let p = ctl.proxies().await;
        let synced = ["web", "reviews"]
            .iter()
            .all(|s| state_of(&p, s).is_some_and(|x| x["state"] == "SYNCED"));
        (p.len() == 2 && synced).then_some(p)
    })
    .await;
    for p in &proxies {
        assert_eq!(p["appliedVersion"], p["latestVersion"], "{p}");
        assert_ne!(p["appliedVersion"], 0, "{p}");
        assert_eq!(p["proxyVersion"], env!("CARGO_PKG_VERSION"), "{p}");
        assert!(
            p["certificateExpiresAt"]
                .as_str()
                .unwrap()
                .starts_with("20"),
            "{p}"
        );
        assert!(p["spiffeId"].as_str().unwrap().starts_with("spiffe://"));
    }
    let table = ctl.ok(&["proxy-status"]).await;
    let web_workload = state_of(&proxies, "web").unwrap()["workload"]
        .as_str()
        .unwrap()
        .to_string();
    let reviews_workload = state_of(&proxies, "reviews").unwrap()["workload"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        table.contains(&web_workload) && table.matches("SYNCED").count() == 2,
        "{table}"
    );

    // The config the web proxy runs, through the control plane: the route it was pushed.
    let cfg: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["proxy-config", &web_workload, "-o", "json"]).await)
            .unwrap();
    let routes = cfg["snapshot"]["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{cfg}");
    assert_eq!(routes[0]["metadata"]["name"], "reviews");
    let backends = routes[0]["spec"]["rules"][0]["backends"]
        .as_array()
        .unwrap();
    let subsets: Vec<&str> = backends
        .iter()
        .map(|b| b["subset"].as_str().unwrap())
        .collect();
    assert_eq!(subsets, ["v1", "v2"], "{cfg}");
    assert_eq!(
        cfg["snapshot"]["version"],
        state_of(&proxies, "web").unwrap()["appliedVersion"]
    );
    let yaml = ctl.ok(&["proxy-config", &web_workload]).await;
    let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(doc["snapshot"]["routes"][0]["spec"]["service"], "reviews");
    // get -o wide: where the route sends traffic, who each workload is.
    let routes = ctl.ok(&["get", "route", "-o", "wide"]).await;
    assert!(routes.contains("reviews/v1=50,reviews/v2=50"), "{routes}");
    let workloads = ctl.ok(&["get", "workload", "-o", "wide"]).await;
    assert!(
        workloads.contains("spiffe://mesh.local/ns/default/sa/reviews")
            && workloads.contains("version=v1"),
        "{workloads}"
    );
    let missing = ctl.run(&["proxy-config", "no-such-workload"]).await;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("default/no-such-workload"),
        "{}",
        text(&missing)
    );

    // A healthy mesh: check passes (once any push still in flight is reported applied).
    let out = eventually("check passes", Duration::from_secs(30), || async {
        let (ok, out) = ctl.check(&[]).await;
        (ok && out.contains("2 of 2 proxies in sync")).then_some(out)
    })
    .await;
    assert!(out.contains("✔ control plane reachable"), "{out}");
    assert!(out.contains("2 of 2 proxies in sync"), "{out}");

    // The Service loses subset v2 while the Route still sends to it: check names both.
    cp.apply(&services_yaml(&["v1"])).await;
    let (ok, out) = ctl.check(&[]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "✘ route default/reviews spec.rules[0].backends[1]: subset \"v2\" is not defined on service default/reviews"
        ),
        "{out}"
    );
    cp.apply(&services_yaml(&["v1", "v2"])).await;
    eventually("check passes again", Duration::from_secs(30), || async {
        ctl.check(&[]).await.0.then_some(())
    })
    .await;

    // A stopped proxy: the next push is not applied. It shows STALE, and check names it.
    let pid = reviews.pid().to_string();
    let stop = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(stop.success());
    cp.apply(&route_yaml(90)).await;
    let stale = eventually("reviews STALE", Duration::from_secs(30), || async {
        let p = ctl.proxies().await;
        let r = state_of(&p, "reviews")?.clone();
        (r["state"] == "STALE").then_some(r)
    })
    .await;
    assert!(
        stale["latestVersion"].as_u64() > stale["appliedVersion"].as_u64(),
        "{stale}"
    );
    // web, which is running, applies the same push.
    eventually(
        "web SYNCED at the new version",
        Duration::from_secs(30),
        || async {
            let p = ctl.proxies().await;
            let web = state_of(&p, "web")?;
            (web["state"] == "SYNCED" && web["appliedVersion"] == stale["latestVersion"])
                .then_some(())
        },
    )
    .await;
    let table = ctl.ok(&["proxy-status"]).await;
    assert!(table.contains("STALE"), "{table}");
    let (ok, out) = eventually(
        "check fails on the stale proxy",
        Duration::from_secs(30),
        || async {
            let r = ctl.check(&["--stale-after", "1s"]).await;
            (!r.0).then_some(r)
        },
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "✘ proxy default/{reviews_workload} (reviews) is STALE"
        )),
        "{out}"
    );

    // Woken up, it applies the push and reports it.
    let cont = Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert!(cont.success());
    eventually("reviews SYNCED again", Duration::from_secs(30), || async {
        let p = ctl.proxies().await;
        (state_of(&p, "reviews")?["state"] == "SYNCED").then_some(())
    })
    .await;
    eventually(
        "check passes after resync",
        Duration::from_secs(30),
        || async { ctl.check(&[]).await.0.then_some(()) },
    )
    .await;
    // A push the proxy refuses (the Service now sends inbound traffic to the sidecar's own
    // admin port): REFUSED with its reason, and check names it.
    cp.apply(&services_on(&["v1", "v2"], reviews.admin.port()))
        .await;
    let refused = eventually("reviews REFUSED", Duration::from_secs(30), || async {
        let p = ctl.proxies().await;
        let r = state_of(&p, "reviews")?.clone();
        (r["state"] == "REFUSED").then_some(r)
    })
    .await;
    assert!(
        refused["refusedReason"]
            .as_str()
            .unwrap()
            .contains("sidecar's own listener"),
        "{refused}"
    );
    let (ok, out) = ctl.check(&[]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "✘ proxy default/{reviews_workload} (reviews) REFUSED v"
        )),
        "{out}"
    );
    let wide = ctl.ok(&["proxy-status", "-o", "wide"]).await;
    assert!(wide.contains("sidecar's own listener"), "{wide}");
    cp.apply(&services_yaml(&["v1", "v2"])).await;
    eventually(
        "check passes once the Service is fixed",
        Duration::from_secs(30),
        || async { ctl.check(&[]).await.0.then_some(()) },
    )
    .await;

    // The route the resumed proxy runs is the new one.
    let cfg: serde_json::Value = serde_json::from_str(
        &ctl.ok(&["proxy-config", &reviews_workload, "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(
        cfg["snapshot"]["routes"][0]["spec"]["rules"][0]["backends"][0]["weight"], 90,
        "{cfg}"
    );
    reviews.kill();
    drop(web);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_parse_and_contexts_pick_server_and_token() {
    quiver_tests::init_log();
    let dir = temp_dir("operator-contexts");
    let db = Db::sqlite(&dir);
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    let server = format!("http://{}", cp.api);

    // Completion scripts: bash's parses with `bash -n`; the others name the commands.
    let bash = quiverctl(&["completion", "bash"], &[]).await;
    assert!(bash.status.success(), "{}", text(&bash));
    let script = dir.join("quiverctl.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let parsed = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{}", text(&parsed));
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("proxy-status") && script.contains("use-context"));
    for shell in ["zsh", "fish"] {
        let out = quiverctl(&["completion", shell], &[]).await;
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("proxy-status"));
    }
    let bad = quiverctl(&["completion", "tcsh"], &[]).await;
    assert!(!bad.status.success());

    // A viewer token, to tell contexts apart by the role the server sees.
    let viewer = quiverctl(
        &["token", "create", "--role", "viewer"],
        &[("QUIVER_SERVER", &server), ("QUIVER_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    assert!(viewer.status.success(), "{}", text(&viewer));
    let viewer_token = String::from_utf8(viewer.stdout).unwrap().trim().to_string();
    let token_file = dir.join("viewer.token");
    std::fs::write(&token_file, format!("{viewer_token}\n")).unwrap();

    let config = dir.join("quiver").join("config.yaml");
    let cfg = config.to_str().unwrap();
    let env = [("QUIVERCTL_CONFIG", cfg)];
    let token_file_arg = token_file.to_str().unwrap();
    for args in [
        vec![
            "config",
            "set-context",
            "admin",
            "--server",
            &server,
            "--token",
            ADMIN_TOKEN,
        ],
        vec![
            "config",
            "set-context",
            "viewer",
            "--server",
            &server,
            "--token-file",
            token_file_arg,
        ],
        vec![
            "config",
            "set-context",
            "nowhere",
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "x",
        ],
    ] {
        let out = quiverctl(&args, &env).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the config file holds tokens");
    let file = std::fs::read_to_string(&config).unwrap();
    assert!(file.contains("currentContext: admin"), "{file}");

    // The first context became current; get-contexts never prints a token.
    let list = quiverctl(&["config", "get-contexts"], &env).await;
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.lines()
            .any(|l| l.starts_with('*') && l.split_whitespace().nth(1) == Some("admin")),
        "{list}"
    );
    assert!(!list.contains(ADMIN_TOKEN), "{list}");
    let role = |out: &Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("your role:").map(|r| r.trim().to_string()))
            .unwrap_or_default()
    };

    // The current context, then --context, then QUIVER_CONTEXT, then use-context.
    let out = quiverctl(&["status"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(role(&out), "admin");
    let out = quiverctl(&["status", "--context", "viewer"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(role(&out), "viewer", "{}", text(&out));
    let out = quiverctl(
        &["status"],
        &[("QUIVERCTL_CONFIG", cfg), ("QUIVER_CONTEXT", "viewer")],
    )
    .await;
    assert_eq!(role(&out), "viewer", "{}", text(&out));
    let out = quiverctl(&["config", "use-context", "nowhere"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = quiverctl(&["status"], &env).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http://127.0.0.1:1") && err.contains("context \"nowhere\""),
        "{err}"
    );
    // Flags and environment override the context.
    let out = quiverctl(
        &["status", "--server", &server, "--token", ADMIN_TOKEN],
        &env,
    )
    .await;
    assert_eq!(role(&out), "admin", "{}", text(&out));
    let out = quiverctl(
        &["status", "-o", "json"],
        &[
            ("QUIVERCTL_CONFIG", cfg),
            ("QUIVER_SERVER", &server),
            ("QUIVER_TOKEN", &viewer_token),
        ],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["role"], "viewer", "{doc}");
    assert_eq!(doc["context"], "nowhere", "{doc}");

    // proxy-status and check need a token, and a viewer's is enough.
    let out = quiverctl(&["proxy-status"], &[("QUIVER_SERVER", server.as_str())]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        text(&out)
    );
    let out = quiverctl(&["check", "--context", "viewer"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("your role viewer"),
        "{}",
        text(&out)
    );

    // The read commands' machine-readable output.
    let admin_env = [
        ("QUIVER_SERVER", server.as_str()),
        ("QUIVER_TOKEN", ADMIN_TOKEN),
    ];
    for args in [
        &["token", "list", "-o", "yaml"][..],
        &["revoke", "list", "-o", "yaml"],
        &["ca", "status", "-o", "yaml"],
        &["status", "-o", "yaml"],
    ] {
        let out = quiverctl(args, &admin_env).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let _: serde_yaml::Value = serde_yaml::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} -o yaml: {e}: {}", text(&out)));
    }
    let tokens = quiverctl(&["token", "list", "-o", "json"], &admin_env).await;
    let tokens: serde_json::Value = serde_json::from_slice(&tokens.stdout).unwrap();
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["role"] == "viewer" && t["kind"] == "api"),
        "{tokens}"
    );
    let ca: serde_json::Value = serde_json::from_slice(
        &quiverctl(&["ca", "status", "-o", "json"], &admin_env)
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(ca["certificates"][0]["role"], "root", "{ca}");

    // Mistakes name what is wrong.
    let out = quiverctl(&["status", "--context", "typo"], &env).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no context named \"typo\""),
        "{}",
        text(&out)
    );
    std::fs::write(&config, "contexts:\n- name: a\n  servr: http://x\n").unwrap();
    let out = quiverctl(&["status"], &env).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("servr"),
        "{}",
        text(&out)
    );
}

/// With two replicas on one Postgres, each proxy talks to one of them; proxy-status through
/// either lists every proxy (the reports are in the store), and a push made by the replica
/// holding a stopped proxy's Watch stream shows it STALE through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_for_every_proxy() {
    quiver_tests::init_log();
    let db = Db::postgres().await;
    let dir = temp_dir("operator-replicas");
    let a = ControlPlane::start(&db, &dir, &["--lease-ttl", "120s"]).await;
    let b = ControlPlane::start(&db, &dir, &["--lease-ttl", "120s"]).await;
    a.apply(&services_yaml(&["v1", "v2"])).await;
    a.apply(&route_yaml(50)).await;
    let ca = a.write_ca(&dir).await;
    let _web = join(&a, &ca, &dir, "web", "v1").await;
    let mut reviews = join(&b, &ca, &dir, "reviews", "v1").await;
    let through = |cp: &ControlPlane| Ctl {
        server: format!("http://{}", cp.api),
    };
    let (ctl_a, ctl_b) = (through(&a), through(&b));
    for ctl in [&ctl_a, &ctl_b] {
        eventually(
            "both proxies SYNCED through this replica",
            Duration::from_secs(30),
            || async {
                let p = ctl.proxies().await;
                let synced = ["web", "reviews"]
                    .iter()
                    .all(|s| state_of(&p, s).is_some_and(|x| x["state"] == "SYNCED"));
                (p.len() == 2 && synced).then_some(())
            },
        )
        .await;
    }
    // The reviews proxy reported to B; A serves the config it runs.
    let workload = state_of(&ctl_a.proxies().await, "reviews").unwrap()["workload"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg: serde_json::Value =
        serde_json::from_str(&ctl_a.ok(&["proxy-config", &workload, "-o", "json"]).await).unwrap();
    assert_eq!(
        cfg["snapshot"]["routes"][0]["metadata"]["name"], "reviews",
        "{cfg}"
    );

    let pid = reviews.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    a.apply(&route_yaml(10)).await;
    eventually(
        "reviews STALE, seen through A",
        Duration::from_secs(30),
        || async {
            let p = ctl_a.proxies().await;
            (state_of(&p, "reviews")?["state"] == "STALE").then_some(())
        },
    )
    .await;
    let (ok, out) = eventually(
        "check through A fails on it",
        Duration::from_secs(30),
        || async {
            let r = ctl_a.check(&["--stale-after", "1s"]).await;
            (!r.0).then_some(r)
        },
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains(&format!("✘ proxy default/{workload} (reviews) is STALE")),
        "{out}"
    );
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually(
        "reviews SYNCED again through A",
        Duration::from_secs(30),
        || async {
            let p = ctl_a.proxies().await;
            (state_of(&p, "reviews")?["state"] == "SYNCED").then_some(())
        },
    )
    .await;
    reviews.kill();
}

/// `POST /quitquitquit` on the admin listener stops a sidecar as SIGTERM does (drain,
/// deregister, exit 0): how a Job's app lets its pod finish. Other methods are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_stops_the_sidecar_and_takes_its_endpoint_down() {
    quiver_tests::init_log();
    let dir = temp_dir("operator-quit");
    let db = Db::sqlite(&dir);
    // A long lease: the endpoint goes because the proxy deregistered, not because it lapsed.
    let cp = ControlPlane::start(&db, &dir, &["--lease-ttl", "120s"]).await;
    cp.apply(&services_yaml(&["v1"])).await;
    let ca = cp.write_ca(&dir).await;
    let mut reviews = join(&cp, &ca, &dir, "reviews", "v1").await;
    eventually(
        "reviews is an endpoint",
        Duration::from_secs(20),
        || async { (cp.workloads("default", "reviews").await.len() == 1).then_some(()) },
    )
    .await;
    let (status, body) = quiver_tests::mesh::admin_get(reviews.admin, "/quitquitquit")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (405, "POST only\n"));
    assert!(reviews.exited().is_none(), "a GET stopped it");

    let stream = tokio::net::TcpStream::connect(reviews.admin).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::post("/quitquitquit")
                .header("host", "admin")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let exit = reviews.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "exited with {exit}");
    assert!(
        reviews.logs().contains("stop requested on /quitquitquit"),
        "{}",
        reviews.logs()
    );
    eventually("its endpoint is gone", Duration::from_secs(10), || async {
        cp.workloads("default", "reviews")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}
