//! The sidecar injector on a real quiver-control (SQLite): real AdmissionReview documents
//! (`tests/inject/*.json`, the shape kube-apiserver sends after defaulting and the
//! ServiceAccount plugin) POSTed to `/inject` over HTTP; every patch applied with the
//! `json-patch` crate and the mutated Pod validated with kubernetes-validate (PyPI) against
//! the Kubernetes schemas of [`KUBERNETES_VERSIONS`]; the manifests in deploy/kubernetes/
//! validated the same way; the sample injected Deployment is what the injector makes of the
//! sample app; the injected sidecar's environment, run by the real quiver-proxy, joins a real
//! control plane and registers the pod's labels; and the webhook is served over TLS for the
//! Service name the API server dials.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use common::{SqliteTestDb, TestServer};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// Native sidecars are on by default from 1.29 and GA in 1.33.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/inject")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_fixture(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

struct Answer {
    status: u16,
    content_type: String,
    body: Bytes,
}

impl Answer {
    fn review(&self) -> Value {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.content_type, "application/json");
        let doc: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(doc["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(doc["kind"], "AdmissionReview");
        doc
    }
}

/// One request on a fresh HTTP/1.1 connection (what kube-apiserver's client may use).
async fn request(addr: std::net::SocketAddr, method: &str, body: Vec<u8>) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        // kube-apiserver adds its timeout to the path it was given.
        .uri("/inject?timeout=10s")
        .header("host", "quiver-control.quiver-system.svc:8080")
        .header("content-type", "application/json")
        .header("accept", "application/json, */*")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body,
    }
}

async fn post(addr: std::net::SocketAddr, body: Vec<u8>) -> Answer {
    request(addr, "POST", body).await
}

/// The response's patch, decoded (None: allowed unchanged).
fn patch_of(review: &Value, uid: &str) -> Option<json_patch::Patch> {
    let response = &review["response"];
    assert_eq!(response["uid"], uid, "the answer names the request");
    assert_eq!(response["allowed"], true, "{response}");
    let patch = response.get("patch")?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().unwrap())
        .unwrap();
    Some(serde_json::from_slice(&bytes).expect("an RFC 6902 patch"))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Run kubernetes-validate (strict: unknown fields are errors) on `files` against every
/// version in [`KUBERNETES_VERSIONS`]; fail with its output, or with the install command
/// when it is missing.
fn kubernetes_validate(files: &[PathBuf]) {
    let installed = std::process::Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output();
    assert!(
        installed.as_ref().is_ok_and(|o| o.status.success()),
        "kubernetes-validate is missing: install it with `pip install kubernetes-validate` \
         (scripts/test.sh does): {installed:?}"
    );
    for version in KUBERNETES_VERSIONS {
        let out = std::process::Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(files)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR") && !text.contains("WARN"),
            "kubernetes-validate -k {version} --strict {files:?}:\n{text}"
        );
        for file in files {
            assert!(
                text.contains(&format!("{} passed", file.display())),
                "{} was not validated against {version}:\n{text}",
                file.display()
            );
        }
    }
}

/// Write `pod` where kubernetes-validate can read it, named as the API server names a
/// `generateName` pod after admission (the validator needs a name).
fn pod_file(dir: &Path, file: &str, pod: &Value) -> PathBuf {
    let mut pod = pod.clone();
    if pod["metadata"].get("name").is_none() {
        let generated = format!("{}x7k2p", pod["metadata"]["generateName"].as_str().unwrap());
        pod["metadata"]["name"] = json!(generated);
    }
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn labelled_pods_get_the_sidecar_and_the_mutated_pods_validate() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let out = tempfile::tempdir().unwrap();
    let mut validated = Vec::new();
    for (file, own_inits, service) in [
        ("deployment-pod.json", vec![], "catalog"),
        (
            "pod-with-init-containers.json",
            vec!["wait-for-config"],
            "reviews",
        ),
        ("job-pod.json", vec![], "smoke"),
    ] {
        let review = json_fixture(file);
        let uid = review["request"]["uid"].as_str().unwrap();
        // No bearer token: the API server sends none.
        let answer = post(server.addr, fixture(file)).await.review();
        let patch = patch_of(&answer, uid).unwrap_or_else(|| panic!("{file}: no patch"));
        let original = review["request"]["object"].clone();
        let mut pod = original.clone();
        json_patch::patch(&mut pod, &patch).unwrap_or_else(|e| panic!("{file}: {e}"));

        let mut expected_inits = vec!["quiver-capture".to_string(), "quiver-proxy".into()];
        expected_inits.extend(own_inits.iter().map(ToString::to_string));
        assert_eq!(
            names(&pod["spec"]["initContainers"]),
            expected_inits,
            "{file}"
        );
        // The app's containers are untouched but for probes to captured ports, which now
        // ask the sidecar's admin port (the sidecar checks the original from inside the Pod).
        let without_probes = |containers: &Value| {
            let mut list = containers.clone();
            for c in list.as_array_mut().unwrap() {
                for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    c.as_object_mut().unwrap().remove(probe);
                }
            }
            list
        };
        assert_eq!(
            without_probes(&pod["spec"]["containers"]),
            without_probes(&original["spec"]["containers"]),
            "{file}: the app's containers are untouched but for their probes"
        );
        for (c, before) in pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .zip(original["spec"]["containers"].as_array().unwrap())
        {
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                if before.get(probe).is_some() {
                    assert_eq!(c[probe]["httpGet"]["port"], 15020, "{file}: {probe}");
                    let path = c[probe]["httpGet"]["path"].as_str().unwrap();
                    assert!(path.starts_with("/app-health/"), "{file}: {path}");
                }
            }
        }
        let mut volumes = names(&original["spec"]["volumes"]);
        volumes.push("quiver-trust-bundle".into());
        assert_eq!(names(&pod["spec"]["volumes"]), volumes, "{file}");
        let annotations = pod["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(annotations["quiver.dev/injected"], "true", "{file}");
        for (k, v) in original["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
        {
            assert_eq!(&annotations[k], v, "{file}: annotation {k} kept");
        }
        let proxy = &pod["spec"]["initContainers"][1];
        assert_eq!(proxy["restartPolicy"], "Always", "{file}: a native sidecar");
        let env = |name: &str| {
            proxy["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{file}: no {name}"))
        };
        assert_eq!(env("QUIVER_SERVICE")["value"], service, "{file}");
        let account = original["spec"]["serviceAccountName"].as_str().unwrap();
        assert_eq!(
            env("QUIVER_JOIN_TOKEN")["valueFrom"]["secretKeyRef"],
            json!({"name": format!("quiver-join-{account}"), "key": "token"}),
            "{file}"
        );

        // Reinvoked on its own output (reinvocationPolicy, or a copy of an injected pod),
        // the injector leaves it alone.
        let mut again = review.clone();
        again["request"]["object"] = pod.clone();
        let answer = post(server.addr, serde_json::to_vec(&again).unwrap())
            .await
            .review();
        assert!(patch_of(&answer, uid).is_none(), "{file}: injected twice");

        validated.push(pod_file(out.path(), file, &pod));
    }
    kubernetes_validate(&validated);
    server.stop().await;
}

#[tokio::test]
async fn pods_that_did_not_opt_in_are_admitted_unchanged() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    for file in [
        "not-labelled.json",
        "already-injected.json",
        "opted-out.json",
    ] {
        let uid = json_fixture(file)["request"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let answer = post(server.addr, fixture(file)).await.review();
        assert!(patch_of(&answer, &uid).is_none(), "{file}: patched");
        assert!(answer["response"].get("patchType").is_none(), "{file}");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_reviews_get_well_formed_refusals_or_a_400_and_never_stop_the_server() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    for (file, field) in [
        ("bad-v1beta1.json", "apiVersion"),
        ("bad-deployment.json", "request.kind"),
        ("bad-host-network.json", "request.object.spec.hostNetwork"),
        ("bad-containers.json", "request.object.spec.containers"),
    ] {
        let uid = json_fixture(file)["request"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let answer = post(server.addr, fixture(file)).await.review();
        let response = &answer["response"];
        assert_eq!(response["uid"], uid.as_str(), "{file}");
        assert_eq!(response["allowed"], false, "{file}: {response}");
        assert_eq!(response["status"]["code"], 400, "{file}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("quiver sidecar injector: {field}: ")),
            "{file}: {message}"
        );
        assert!(response.get("patch").is_none(), "{file}");
    }
    // Without a readable uid no AdmissionReview can answer: HTTP 400, saying why.
    for (file, why) in [
        ("bad-no-uid.json", "request.uid: missing"),
        ("bad-not-json.txt", "the body is not JSON"),
    ] {
        let answer = post(server.addr, fixture(file)).await;
        assert_eq!(answer.status, 400, "{file}");
        let text = String::from_utf8_lossy(&answer.body);
        assert!(text.contains(why), "{file}: {text}");
    }
    // A body over the limit is refused before it is read whole.
    let mut huge = fixture("deployment-pod.json");
    huge.resize(quiver_control::inject::http::MAX_BODY + 1, b' ');
    assert_eq!(post(server.addr, huge).await.status, 413);
    // Only POST.
    assert_eq!(request(server.addr, "GET", Vec::new()).await.status, 405);
    // Still serving.
    let answer = post(server.addr, fixture("deployment-pod.json"))
        .await
        .review();
    assert!(patch_of(&answer, "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f").is_some());
    server.stop().await;
}

/// The YAML documents of a manifest file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let yaml: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(yaml).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn deployment_in(path: &Path) -> Value {
    documents(path)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap_or_else(|| panic!("no Deployment in {}", path.display()))
}

#[tokio::test]
async fn the_sample_injected_deployment_is_what_the_injector_makes_of_the_sample_app() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let examples = repo().join("deploy/kubernetes/examples");
    let app = deployment_in(&examples.join("catalog.yaml"));
    let injected = deployment_in(&examples.join("catalog-injected.yaml"));
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod"});
    pod["metadata"] = app["spec"]["template"]["metadata"].clone();
    pod["spec"] = app["spec"]["template"]["spec"].clone();
    let uid = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": app["metadata"]["namespace"],
            "operation": "CREATE",
            "object": pod,
        },
    });
    let answer = post(server.addr, serde_json::to_vec(&review).unwrap())
        .await
        .review();
    let patch = patch_of(&answer, uid).expect("the sample app opts in");
    let mut made = review["request"]["object"].clone();
    json_patch::patch(&mut made, &patch).unwrap();
    let template = &injected["spec"]["template"];
    assert_eq!(
        (&template["metadata"], &template["spec"]),
        (&made["metadata"], &made["spec"]),
        "catalog-injected.yaml's pod template is not what the injector makes of catalog.yaml; \
         the injector makes:\n{}",
        serde_yaml::to_string(&json!({"metadata": made["metadata"], "spec": made["spec"]}))
            .unwrap()
    );
    let mut rest = injected.clone();
    rest["spec"].as_object_mut().unwrap().remove("template");
    let mut app_rest = app.clone();
    app_rest["spec"].as_object_mut().unwrap().remove("template");
    assert_eq!(
        rest, app_rest,
        "the two Deployments differ only in their pod template"
    );
    server.stop().await;
}

#[test]
fn every_manifest_in_deploy_kubernetes_validates() {
    let root = repo().join("deploy/kubernetes");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
                // Quiver's own resources: applied by the test below.
                && !is_mesh_file(&path)
            {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 6, "manifests: {files:?}");
    kubernetes_validate(&files);
    // kustomization.yaml has no schema to validate against: its resources must exist.
    let kustomization = &documents(&root.join("kustomization.yaml"))[0];
    for resource in kustomization["resources"].as_array().unwrap() {
        let path = root.join(resource.as_str().unwrap());
        assert!(
            path.is_file(),
            "kustomization.yaml names {}",
            path.display()
        );
    }
    // The webhook and the injector's defaults agree.
    let webhook = &documents(&root.join("webhook.yaml"))[0]["webhooks"][0];
    let defaults = quiver_control::inject::InjectConfig::default();
    let (key, value) = defaults.label.split_once('=').unwrap();
    assert_eq!(webhook["objectSelector"]["matchLabels"][key], value);
    assert_eq!(webhook["clientConfig"]["service"]["path"], "/inject");
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
}

/// A file of Quiver resources (for quiverctl), not Kubernetes objects.
fn is_mesh_file(path: &Path) -> bool {
    documents(path).iter().all(|d| {
        d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("quiver.dev/"))
    })
}

#[tokio::test]
async fn the_examples_mesh_resources_and_join_tokens_are_accepted_by_a_real_control_plane() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let ctl = common::ctl::Ctl::new(&server);
    let file = repo().join("deploy/kubernetes/examples/shop-mesh.yaml");
    assert!(is_mesh_file(&file));
    ctl.ok(&["apply", "-f", file.to_str().unwrap()]).await;
    // docs/deploy.md's install steps: one join token per service account for its Secret,
    // with the uses and lifetime the doc suggests, and the trust bundle for the ConfigMap.
    for account in ["catalog", "smoke"] {
        let token = ctl
            .ok(&[
                "join-token",
                "create",
                "--namespace",
                "shop",
                "--service-account",
                account,
                "--uses",
                "1000",
                "--ttl",
                "2160h",
            ])
            .await;
        assert!(token.trim().starts_with("qvj_"), "{token}");
    }
    let bundle = ctl.ok(&["trust-bundle"]).await;
    assert!(bundle.contains("BEGIN CERTIFICATE"));
    server.stop().await;
}

/// What kubelet would give the injected `quiver-proxy` container as its environment: each
/// `value` with `$(VAR)` expanded from the variables before it, `fieldRef`s from the pod,
/// `secretKeyRef`s from `secrets`.
fn container_env(
    container: &Value,
    fields: &[(&str, &str)],
    secrets: &[((&str, &str), &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = var["value"].as_str() {
            let mut v = v.to_string();
            for (k, earlier) in &env {
                v = v.replace(&format!("$({k})"), earlier);
            }
            v
        } else if let Some(path) = var.pointer("/valueFrom/fieldRef/fieldPath") {
            let (_, v) = fields
                .iter()
                .find(|(f, _)| path == f)
                .unwrap_or_else(|| panic!("{name}: no field {path}"));
            (*v).to_string()
        } else {
            let key = &var["valueFrom"]["secretKeyRef"];
            let wanted = (key["name"].as_str().unwrap(), key["key"].as_str().unwrap());
            let (_, v) = secrets
                .iter()
                .find(|(s, _)| *s == wanted)
                .unwrap_or_else(|| panic!("{name}: no Secret {wanted:?}"));
            (*v).to_string()
        };
        env.push((name, value));
    }
    env
}

#[tokio::test]
async fn the_injected_sidecar_environment_joins_a_real_control_plane_and_registers_its_labels() {
    // The real proxy binary (`cargo test --workspace` builds it) with exactly the
    // environment the injector wrote, but for what only a pod provides: the control plane's
    // test address, the mounted trust bundle's path, free ports instead of 15443/15020 (tests
    // run side by side), and no capture (it needs the pod's own network namespace; its tests
    // are tests/tests/capture.rs).
    let proxy = quiver_tests::mesh::binary("quiver-proxy");
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let ctl = common::ctl::Ctl::new(&server);
    let mesh = repo().join("deploy/kubernetes/examples/shop-mesh.yaml");
    ctl.ok(&["apply", "-f", mesh.to_str().unwrap()]).await;
    let token = ctl
        .ok(&[
            "join-token",
            "create",
            "--namespace",
            "shop",
            "--service-account",
            "catalog",
            "--uses",
            "10",
        ])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ctl.ok(&["trust-bundle"]).await).unwrap();

    let answer = post(server.addr, fixture("deployment-pod.json"))
        .await
        .review();
    let patch = patch_of(&answer, "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f").unwrap();
    let mut pod = json_fixture("deployment-pod.json")["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let sidecar = &pod["spec"]["initContainers"][1];
    assert_eq!(sidecar["command"], json!(["/usr/local/bin/quiver-proxy"]));
    let env = container_env(
        sidecar,
        &[
            ("metadata.name", "catalog-v1-7c9d8f6b5d-x7k2p"),
            ("metadata.namespace", "shop"),
            ("status.podIP", "127.0.0.1"),
        ],
        &[(("quiver-join-catalog", "token"), token.trim())],
    );
    // Every variable the injector sets is one the proxy reads (or the pod's own).
    let help = std::process::Command::new(&proxy)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (name, _) in &env {
        assert!(
            name.starts_with("POD_") || help.contains(&format!("[env: {name}")),
            "quiver-proxy --help does not name {name}"
        );
    }
    let quic = quiver_tests::mesh::free_port();
    let admin = quiver_tests::mesh::free_port();
    let mut cmd = std::process::Command::new(&proxy);
    cmd.env_clear();
    for (name, value) in &env {
        let value = match name.as_str() {
            "QUIVER_CONTROL_PLANE" => server.discovery.to_string(),
            "QUIVER_CA_CERT" => {
                assert_eq!(value, "/var/run/quiver/trust-bundle/ca.pem");
                ca.display().to_string()
            }
            "QUIVER_ADVERTISE" => {
                assert_eq!(value, "127.0.0.1:15443", "$(POD_IP) expanded");
                format!("127.0.0.1:{quic}")
            }
            "QUIVER_QUIC_LISTEN" => format!("127.0.0.1:{quic}"),
            "QUIVER_ADMIN_LISTEN" => format!("127.0.0.1:{admin}"),
            "QUIVER_CAPTURE" => continue,
            _ => value.clone(),
        };
        cmd.env(name, value);
    }
    let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    let mut child = cmd.spawn().unwrap();
    let log_path = dir.path().join("proxy.log");
    // Polled by hand rather than with `eventually`: a proxy that exits (a refused join, a
    // variable it does not take) must fail the test at once, with its log.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if readyz_status(admin).await == Some(200) {
            break;
        }
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("quiver-proxy exited ({exit}):\n{}", log());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the injected sidecar was not ready within 20 s:\n{}",
            log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Registered as the Service the pod's app label names, with its workload labels.
    let workloads = quiver_tests::eventually(
        "the workload registered",
        std::time::Duration::from_secs(10),
        || async {
            let out = ctl
                .ok(&["get", "workloads", "-n", "shop", "-o", "yaml"])
                .await;
            out.contains("version: v1").then_some(out)
        },
    )
    .await;
    assert!(workloads.contains("service: catalog"), "{workloads}");
    assert!(workloads.contains("app: catalog"), "{workloads}");
    assert!(!workloads.contains("pod-template-hash"), "{workloads}");
    assert!(!workloads.contains("quiver.dev/inject"), "{workloads}");
    child.kill().unwrap();
    child.wait().unwrap();
    server.stop().await;
}

/// GET /readyz on the admin port: its status, or None when nothing answers yet.
async fn readyz_status(admin: u16) -> Option<u16> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", admin))
        .await
        .ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/readyz")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    Some(resp.status().as_u16())
}

#[tokio::test]
async fn the_injector_is_served_over_tls_for_the_name_the_api_server_dials() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    const SERVICE_NAME: &str = "quiver-control.quiver-system.svc";
    let db = SqliteTestDb::create();
    let server = TestServer::start_with(
        None,
        db.dir.path(),
        &["--tls-mesh-ca", "--tls-name", SERVICE_NAME],
    )
    .await;
    // The webhook's caBundle: the file --tls-mesh-ca writes (the mesh CA).
    let ca_file = server
        .running
        .as_ref()
        .unwrap()
        .api_ca_file
        .clone()
        .expect("--tls-mesh-ca writes the CA file");
    let mut tls = quiver_tests::pki::client_trusting(&std::fs::read(&ca_file).unwrap());
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(
            rustls_pki_types::ServerName::try_from(SERVICE_NAME).unwrap(),
            tcp,
        )
        .await
        .expect("the API certificate verifies for the Service's name");
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(stream);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://{SERVICE_NAME}:8080/inject?timeout=10s"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(fixture("deployment-pod.json"))))
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert!(patch_of(&answer, "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f").is_some());
    server.stop().await;
}
