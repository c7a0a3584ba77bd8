//! The demo as pods (issue 20, items 4 and 5; docs/deploy.md, "Containers: the demo as pods"),
//! with real podman (`podman --runtime runc`: crun fails on this kind of kernel):
//!
//! - `deploy/podman/demo.sh up` brings the demo mesh up as pods (control plane; frontend,
//!   catalog v1/v2 and ratings, each with the capture init step, the proxy and the app) and
//!   200 requests to frontend all succeed, each callee seeing its caller's SPIFFE id, the
//!   apps calling each other by mesh DNS name, the sidecars dialling each other's pod
//!   addresses;
//! - a Job-shaped pod (capture, proxy, an app that calls catalog by name then POSTs the
//!   proxy's `/quitquitquit`) completes: every container exits, the app with 0;
//! - the injector's output for a pod, played with podman 4.3: what podman does with a native
//!   sidecar, asserted exactly (it refuses probes on init containers; without them it runs the
//!   sidecar as a plain init container, which joins, and never starts the app).
//!
//! Every pod, secret, volume and network a test makes carries a name unique to the run and is
//! removed by a guard, passed or failed. Podman missing fails with the install command.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use quiver_tests::podman::{INSTALL, podman, podman_ok, podman_with, repo, target_dir, text};
use serde_json::{Value, json};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const TRUST_DOMAIN: &str = "mesh.local";
/// What podman 4.3 answers to the injector's native sidecar (its startup and readiness
/// probes on an init container).
const PODMAN_PROBE_REFUSAL: &str = "cannot create an init container that has either of \
    lifecycle, livenessProbe, readinessProbe, or startupProbe set";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/demo/sa/{sa}")
}

/// Build the three images from this tree once for every test here (an image left by an
/// older build would test old code): deploy/build-images.sh, deploy/podman/build-demo-image.sh.
/// `QUIVER_TEST_PREBUILT_IMAGES=1` takes the images as they are instead (reruns while
/// working on the tests; CI never sets it).
fn build_images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("QUIVER_TEST_PREBUILT_IMAGES").is_some_and(|v| v == "1") {
            for image in ["quiver-proxy", "quiver-control", "quiver-demo"] {
                let image = format!("localhost/{image}:{VERSION}");
                let out = podman(&["image", "exists", &image]);
                assert!(
                    out.status.success(),
                    "QUIVER_TEST_PREBUILT_IMAGES=1 but no {image}"
                );
            }
            return;
        }
        let info = Command::new("podman")
            .args([
                "--runtime",
                "runc",
                "info",
                "--format",
                "{{.Host.OCIRuntime.Name}}",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run podman: {e}\n{INSTALL}"));
        assert!(
            info.status.success(),
            "podman --runtime runc info failed: {}\n{INSTALL}",
            text(&info)
        );
        for script in [
            "deploy/build-images.sh",
            "deploy/podman/build-demo-image.sh",
        ] {
            let started = Instant::now();
            let out = Command::new("bash")
                .arg(repo().join(script))
                .env("CARGO_TARGET_DIR", target_dir())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}\n{}",
                out.status,
                text(&out)
            );
            eprintln!("{script} took {:.0?}", started.elapsed());
        }
    });
}

fn unique_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("qt{}{:04x}-{tag}", std::process::id(), nanos & 0xffff)
}

/// A demo mesh brought up by `deploy/podman/demo.sh up` under a name of its own; everything
/// it made (and what the test added under the same name) goes when it is dropped.
struct Demo {
    name: String,
    dir: PathBuf,
}

impl Demo {
    /// `demo.sh up`; `apps`: false for the control plane alone (mesh applied, join-token
    /// secrets made).
    fn up(tag: &str, apps: bool) -> Self {
        build_images();
        let name = unique_name(tag);
        let demo = Self {
            dir: std::env::temp_dir().join(format!("quiver-pods-{name}")),
            name,
        };
        let started = Instant::now();
        let out = demo.script("up", if apps { "1" } else { "0" });
        assert!(
            out.status.success(),
            "deploy/podman/demo.sh up: {}\n{}",
            out.status,
            text(&out)
        );
        eprintln!(
            "demo.sh up ({}) took {:.1?}",
            if apps { "all pods" } else { "control plane" },
            started.elapsed()
        );
        demo
    }

    fn script(&self, command: &str, apps: &str) -> Output {
        Command::new("bash")
            .arg(repo().join("deploy/podman/demo.sh"))
            .arg(command)
            .env("QUIVER_PODS_NAME", &self.name)
            .env("QUIVER_PODS_DIR", &self.dir)
            .env("QUIVER_PODS_PORT", "0")
            .env("QUIVER_PODS_APPS", apps)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn pod(&self, pod: &str) -> String {
        format!("{}-{pod}", self.name)
    }

    /// The address of pod `pod` on the demo's network.
    fn pod_ip(&self, pod: &str) -> String {
        self.try_pod_ip(pod)
            .unwrap_or_else(|| panic!("pod {pod} has no address on {}", self.name))
    }

    fn try_pod_ip(&self, pod: &str) -> Option<String> {
        let infra = podman(&[
            "pod",
            "inspect",
            "--format",
            "{{.InfraContainerID}}",
            &self.pod(pod),
        ]);
        let infra = String::from_utf8_lossy(&infra.stdout).trim().to_string();
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.name
        );
        let ip = podman(&["inspect", "--format", &format, &infra]);
        let ip = String::from_utf8_lossy(&ip.stdout).trim().to_string();
        (!infra.is_empty() && !ip.is_empty()).then_some(ip)
    }

    /// `quiverctl ARGS` in the control plane's container: its stdout.
    fn quiverctl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let token = std::fs::read_to_string(self.dir.join("admin-token")).unwrap();
        let env = format!("QUIVER_TOKEN={token}");
        let ctl = format!("{}-control-control", self.name);
        let mut all = vec!["exec", "-i", "-e", &env, &ctl, "quiverctl"];
        all.extend_from_slice(args);
        let out = podman_with(&all, stdin);
        assert!(
            out.status.success(),
            "quiverctl {}: {}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A podman secret in the shape podman 4.3's `secretKeyRef` reads (as demo.sh makes them).
    fn secret(&self, name: &str, key: &str, value: &str) {
        let data = json!({ key: base64(value.as_bytes()) }).to_string();
        podman(&["secret", "rm", name]);
        podman_with(&["secret", "create", name, "-"], Some(&data));
    }

    /// Write `yaml` into a directory of its own (kube play takes a sub-folder named like an
    /// image for a build context) and the `podman kube play --network` command for it.
    fn play_command(&self, file: &str, yaml: &str) -> Command {
        let dir = self.dir.join("play");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), yaml).unwrap();
        let mut cmd = Command::new("podman");
        cmd.current_dir(&dir)
            .args([
                "--runtime",
                "runc",
                "kube",
                "play",
                "--network",
                &self.name,
                file,
            ])
            .stdin(Stdio::null());
        cmd
    }

    fn play(&self, file: &str, yaml: &str) -> Output {
        self.play_command(file, yaml).output().unwrap()
    }

    fn container_state(&self, container: &str) -> (String, i64) {
        let out = podman_ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &format!("{}-{container}", self.name),
        ]);
        let mut parts = out.split_whitespace();
        (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or("-1").parse().unwrap(),
        )
    }

    /// The capture step's nftables table in pod `pod`'s network namespace (read from the
    /// host: the pod's containers have no NET_ADMIN once the step is done, and podman 4.3
    /// deletes an init container once it has run).
    fn capture_table(&self, pod: &str) -> String {
        let infra = podman_ok(&[
            "pod",
            "inspect",
            "--format",
            "{{.InfraContainerID}}",
            &self.pod(pod),
        ]);
        let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", infra.trim()]);
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", pid.trim()))
            .args(["nft", "list", "table", "inet", "quiver_capture"])
            .output()
            .unwrap_or_else(|e| panic!("nsenter: {e} (apt-get install -y util-linux nftables)"));
        assert!(
            out.status.success(),
            "no capture table in pod {pod}: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self, container: &str) -> String {
        text(&podman(&["logs", &format!("{}-{container}", self.name)]))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let out = self.script("down", "1");
        if !out.status.success() {
            eprintln!("demo.sh down: {}", text(&out));
        }
        // Whatever a test played under the demo's name that the script does not know of.
        let pods = podman(&[
            "pod",
            "ps",
            "-q",
            "--filter",
            &format!("name=^{}-", self.name),
        ]);
        for id in String::from_utf8_lossy(&pods.stdout).split_whitespace() {
            podman(&["pod", "rm", "--force", "--time", "0", id]);
        }
        let secrets = podman(&["secret", "ls", "--format", "{{.Name}}"]);
        for s in String::from_utf8_lossy(&secrets.stdout).split_whitespace() {
            if s.starts_with(&format!("{}-", self.name)) {
                podman(&["secret", "rm", s]);
            }
        }
        let volumes = podman(&["volume", "ls", "--format", "{{.Name}}"]);
        for v in String::from_utf8_lossy(&volumes.stdout).split_whitespace() {
            if v.starts_with(&format!("{}-", self.name)) {
                podman(&["volume", "rm", "--force", v]);
            }
        }
        podman(&["network", "rm", "--force", &self.name]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(s: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        };
        bits = bits << 6 | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// `GET http://ADDR/PATH` over plain HTTP/1.1: status and body.
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw)?;
    let answer = String::from_utf8_lossy(&raw).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `POST https://ADDR/inject` with `body`, the server verified with `ca_pem` as `name`.
fn https_post(addr: &str, name: &str, ca_pem: &[u8], body: &str) -> (u16, String) {
    let config = quiver_tests::pki::client_trusting(ca_pem);
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "POST /inject?timeout=10s HTTP/1.1\r\nHost: {name}:8080\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    // The server may close without close_notify once it has answered: keep what arrived.
    if let Err(e) = tls.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "POST /inject: {e}");
    }
    let answer = String::from_utf8_lossy(&raw).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Poll `check` until it gives a value or `within` has passed (then panic with `what` and
/// the last state `check` reported).
fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

#[test]
fn the_demo_pods_answer_200_requests_with_the_callers_identities() {
    let demo = Demo::up("demo", true);
    let frontend = format!("{}:8080", demo.pod_ip("frontend"));

    // Each pod's capture step installed its rules (the proxy's own uid never captured).
    for pod in ["frontend", "catalog-v1", "catalog-v2", "ratings"] {
        let table = demo.capture_table(pod);
        assert!(table.contains("meta skuid 1337 return"), "{pod}: {table}");
    }

    let started = Instant::now();
    let mut versions = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..200 {
        let (status, body) = http_get(&frontend, "/")
            .unwrap_or_else(|e| panic!("request {i} to frontend {frontend}: {e}"));
        assert_eq!(status, 200, "request {i}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let catalog = &answer["catalog"];
        // What catalog's sidecar proved of its caller, and ratings' sidecar of its caller:
        // mTLS between the pods, identities from the join tokens.
        assert_eq!(catalog["caller"], spiffe("frontend").as_str(), "{answer}");
        assert_eq!(
            catalog["rating"]["caller"],
            spiffe("catalog").as_str(),
            "{answer}"
        );
        assert_eq!(catalog["rating"]["served_by"], "ratings", "{answer}");
        let version = catalog["version"].as_str().unwrap().to_string();
        assert!(version == "v1" || version == "v2", "{answer}");
        *versions.entry(version).or_default() += 1;
    }
    eprintln!(
        "200 requests through the pods in {:.1?}: {versions:?}",
        started.elapsed()
    );
    // The Route's 90/10 split reaches both catalog pods (v2 absent from 200 requests at 10%:
    // p = 0.9^200, about 7e-10).
    assert!(
        versions["v1"] > versions.get("v2").copied().unwrap_or(0),
        "{versions:?}"
    );
    assert!(versions.contains_key("v2"), "{versions:?}");

    // The sidecars dial each other at the pods' addresses: frontend's sidecar has catalog's
    // endpoints at the catalog pods' IPs, port 15443 (QUIC).
    let (status, config) = http_get(&format!("{}:15020", demo.pod_ip("frontend")), "/config")
        .expect("frontend sidecar's /config");
    assert_eq!(status, 200, "{config}");
    for pod in ["catalog-v1", "catalog-v2"] {
        let endpoint = format!("{}:15443", demo.pod_ip(pod));
        assert!(
            config.contains(&endpoint),
            "frontend's sidecar has no endpoint {endpoint} ({pod}): {config}"
        );
    }
    // The apps were given mesh names, never a listener or a proxy.
    let app_env = podman_ok(&[
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        &format!("{}-frontend-app", demo.name),
    ]);
    assert!(
        app_env.contains("QUIVER_DEMO_CATALOG_URL=http://catalog.demo.mesh\n"),
        "{app_env}"
    );
    assert!(!app_env.to_lowercase().contains("http_proxy"), "{app_env}");
}

/// The Job's pod: capture, the proxy as an ordinary container (no native sidecars in podman
/// 4.3), and the job, which POSTs the proxy's /quitquitquit when it is done.
fn job_pod(demo: &Demo) -> String {
    let proxy = format!("localhost/quiver-proxy:{VERSION}");
    let app = format!("localhost/quiver-demo:{VERSION}");
    let name = &demo.name;
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}-job
  labels: {{app: smoke}}
spec:
  restartPolicy: Never
  initContainers:
  - name: capture
    image: {proxy}
    command: [/usr/local/bin/quiver-proxy, capture, install, --proxy-uid, "1337",
      --outbound-port, "15002", --inbound-port, "15006", --dns-port, "15053",
      --inbound-ports, "*", --exclude-inbound-ports, "15020", --exclude-outbound-ports, "15010"]
    securityContext:
      runAsUser: 0
      readOnlyRootFilesystem: true
      capabilities: {{add: [NET_ADMIN, NET_RAW], drop: [ALL]}}
  containers:
  - name: proxy
    image: {proxy}
    env:
    - {{name: QUIVER_CONTROL_PLANE, value: "{name}-control:15010"}}
    - {{name: QUIVER_JOIN_TOKEN, valueFrom: {{secretKeyRef: {{name: {name}-join-smoke, key: token}}}}}}
    - {{name: QUIVER_CA_CERT, value: /var/run/quiver/trust-bundle/ca.pem}}
    - {{name: QUIVER_SERVICE, value: smoke}}
    - {{name: QUIVER_CAPTURE, value: "true"}}
    volumeMounts:
    - {{name: trust-bundle, mountPath: /var/run/quiver/trust-bundle, readOnly: true}}
    securityContext:
      runAsUser: 1337
      runAsGroup: 1337
      runAsNonRoot: true
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
  - name: app
    image: {app}
    args: [job, --url, "http://catalog.demo.mesh/product/quiver-book",
      --quit, "http://127.0.0.1:15020/quitquitquit"]
    securityContext:
      runAsUser: 1000
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
  volumes:
  - name: trust-bundle
    hostPath: {{path: {trust}, type: Directory}}
"#,
        trust = demo.dir.join("trust-bundle").display()
    )
}

#[test]
fn a_job_shaped_pod_completes() {
    let demo = Demo::up("job", true);
    // The job's own identity, and leave to call catalog (added to the demo's policies).
    demo.quiverctl(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: smoke, namespace: demo}}
spec: {{serviceAccount: smoke}}
---
apiVersion: quiver.dev/v1
kind: AuthorizationPolicy
metadata: {{name: catalog-smoke, namespace: demo}}
spec:
  service: catalog
  allow:
  - sources: ["{}"]
    methods: [GET]
"#,
            spiffe("smoke")
        )),
    );
    let token = demo.quiverctl(
        &[
            "join-token",
            "create",
            "--namespace",
            "demo",
            "--service-account",
            "smoke",
            "--uses",
            "2",
            "--ttl",
            "1h",
        ],
        None,
    );
    demo.secret(&format!("{}-join-smoke", demo.name), "token", token.trim());

    let started = Instant::now();
    let out = demo.play("job.yaml", &job_pod(&demo));
    assert!(out.status.success(), "kube play job.yaml: {}", text(&out));
    let states = eventually(
        Duration::from_secs(120),
        "every container of the job pod exits",
        || {
            let states: Vec<_> = ["job-proxy", "job-app"]
                .iter()
                .map(|c| demo.container_state(c))
                .collect();
            if states.iter().all(|(s, _)| s == "exited") {
                Ok(states)
            } else {
                Err(format!("{states:?}"))
            }
        },
    );
    eprintln!("the job pod completed in {:.1?}", started.elapsed());
    let app_log = demo.logs("job-app");
    assert_eq!(states[1].1, 0, "the job's exit code; its log:\n{app_log}");
    // The proxy shut down on /quitquitquit as on SIGTERM: drained, exit 0.
    assert_eq!(
        states[0].1,
        0,
        "the proxy's exit code; its log:\n{}",
        demo.logs("job-proxy")
    );
    assert!(
        app_log.contains(&format!("\"caller\": \"{}\"", spiffe("smoke"))),
        "catalog saw the job's identity: {app_log}"
    );
    assert!(
        app_log.contains("POST http://127.0.0.1:15020/quitquitquit: 200"),
        "{app_log}"
    );
    let pod_state = podman_ok(&["pod", "inspect", "--format", "{{.State}}", &demo.pod("job")]);
    assert_eq!(pod_state.trim(), "Exited", "the pod as a whole");
}

/// Apply an RFC 6902 patch of `add` operations (all the injector makes) to `doc`.
fn apply_adds(doc: &mut Value, patch: &Value) {
    for op in patch.as_array().unwrap() {
        assert_eq!(op["op"], "add", "{op}");
        let path: Vec<String> = op["path"].as_str().unwrap()[1..]
            .split('/')
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = path.split_last().unwrap();
        let mut at = &mut *doc;
        for p in parents {
            at = match at {
                Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                other => &mut other[p.as_str()],
            };
        }
        let value = op["value"].clone();
        match at {
            Value::Array(a) if last == "-" => a.push(value),
            Value::Array(a) => a.insert(last.parse().unwrap(), value),
            Value::Object(o) => {
                o.insert(last.clone(), value);
            }
            other => panic!("cannot add {last} to {other}"),
        }
    }
}

#[test]
fn the_injected_pod_on_podman_4_3() {
    let demo = Demo::up("inject", false);
    let control_ip = demo.pod_ip("control");
    let control_name = demo.pod("control");
    let ca = std::fs::read(demo.dir.join("control-data/api-ca.pem")).unwrap();
    let app = format!("localhost/quiver-demo:{VERSION}");

    // The pod as a user writes it, in an AdmissionReview as the API server sends it.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{}-injected", demo.name), "namespace": "demo",
            "labels": {"app": "catalog", "version": "v1", "quiver.dev/inject": "enabled"}
        },
        "spec": {
            "serviceAccountName": "catalog",
            "containers": [{
                "name": "catalog", "image": app,
                "args": ["catalog", "--version", "v1", "--listen", "0.0.0.0:8080"],
                "env": [{"name": "QUIVER_DEMO_RATINGS_URL", "value": "http://ratings.demo.mesh:9090"}],
                "ports": [{"name": "http", "containerPort": 8080}]
            }]
        }
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0f0e0d0c-0b0a-4908-8706-050403020100",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "demo", "operation": "CREATE", "object": pod
        }
    });
    let (status, body) = https_post(
        &format!("{control_ip}:8080"),
        &control_name,
        &ca,
        &review.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patch: Value =
        serde_json::from_slice(&unbase64(answer["response"]["patch"].as_str().unwrap())).unwrap();
    let mut injected = pod.clone();
    apply_adds(&mut injected, &patch);
    let init = injected["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(init[0]["name"], "quiver-capture");
    assert_eq!(init[1]["name"], "quiver-proxy");
    assert_eq!(init[1]["restartPolicy"], "Always", "a native sidecar");
    let env_value = |name: &str| {
        init[1]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {}", init[1]))
    };
    // The injector was told this network's names (demo.sh sets QUIVER_INJECT_*).
    assert_eq!(
        env_value("QUIVER_CONTROL_PLANE")["value"],
        format!("{control_name}:15010")
    );
    assert_eq!(
        env_value("QUIVER_JOIN_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
        format!("{}-join-catalog", demo.name)
    );

    let trust_bundle = std::fs::read_to_string(demo.dir.join("trust-bundle/ca.pem")).unwrap();
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("{}-trust-bundle", demo.name)},
        "data": {"ca.pem": trust_bundle}
    });
    let yaml = |pod: &Value| format!("{config_map}\n---\n{pod}\n");

    // 1. The injector's output as it is: podman 4.3 refuses it. Its init containers may not
    //    have probes, and the native sidecar has a startup and a readiness probe.
    let out = demo.play("injected.yaml", &yaml(&injected));
    assert!(
        !out.status.success(),
        "podman 4.3 played a native sidecar: {}",
        text(&out)
    );
    assert!(text(&out).contains(PODMAN_PROBE_REFUSAL), "{}", text(&out));
    podman(&["pod", "rm", "--force", "--time", "0", &demo.pod("injected")]);
    // And the ConfigMap's volume, which the next play makes again.
    podman(&[
        "volume",
        "rm",
        "--force",
        &format!("{}-trust-bundle", demo.name),
    ]);

    // 2. Without the probes, and without the downward-API fields podman 4.3 does not know
    //    (metadata.namespace, status.podIP: it refuses the pod naming them; without
    //    QUIVER_ADVERTISE the proxy advertises its address towards the control plane, the
    //    pod's): podman runs the sidecar as a plain init container. The capture step runs,
    //    the proxy joins and becomes ready, and podman waits for it to exit before starting
    //    the app: `kube play` does not return and the app container stays "created".
    //    And restartPolicy OnFailure (a Deployment's pods have Always, the default): under
    //    Always podman 4.3 restarts the capture step once it has exited, then fails to
    //    remove it ("failed to remove once init container ... as it is running", exit 125).
    let mut stripped = injected.clone();
    stripped["spec"]["restartPolicy"] = json!("OnFailure");
    {
        let proxy = &mut stripped["spec"]["initContainers"][1];
        let obj = proxy.as_object_mut().unwrap();
        obj.remove("startupProbe");
        obj.remove("readinessProbe");
        let env = obj["env"].as_array_mut().unwrap();
        env.retain(|e| {
            !["POD_NAMESPACE", "POD_IP", "QUIVER_ADVERTISE"].contains(&e["name"].as_str().unwrap())
        });
    }
    // Declared after `demo`, so dropped (killed) before the demo's pods are removed.
    let mut player = Player(
        demo.play_command("injected-stripped.yaml", &yaml(&stripped))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(demo.dir.join("play/stripped.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let pod_name = format!("{}-injected", demo.name);
    // While kube play waits on the "init" container it holds the pod's lock: `podman pod
    // inspect` blocks. The pod's address comes from the workload its proxy registered.
    let ip = eventually(
        Duration::from_secs(60),
        "the injected proxy joins and is ready",
        || {
            if let Ok(Some(status)) = player.0.try_wait() {
                let err = std::fs::read_to_string(demo.dir.join("play/stripped.err"));
                panic!("kube play returned: {status}: {err:?}");
            }
            let workloads = demo.quiverctl(&["get", "workloads", "-n", "demo", "-o", "yaml"], None);
            let ip = workloads
                .split("address: ")
                .nth(1)
                .and_then(|rest| rest.split(':').next())
                .map(|ip| ip.trim().trim_matches('"').to_string())
                .ok_or_else(|| format!("no workload yet: {workloads}"))?;
            let readyz = http_get(&format!("{ip}:15020"), "/readyz").map_err(|e| e.to_string())?;
            if readyz.0 == 200 {
                Ok(ip)
            } else {
                Err(format!("{readyz:?}"))
            }
        },
    );
    eprintln!("the injected proxy at {ip} is ready");
    // podman is still waiting for the "init" container: kube play has not returned.
    std::thread::sleep(Duration::from_secs(2));
    assert!(player.0.try_wait().unwrap().is_none(), "kube play returned");
    let _ = player.0.kill();
    let _ = player.0.wait();
    // The capture step ran first (podman deletes an init container once it has run; a
    // failed one would have stopped the pod before the proxy).
    let table = demo.capture_table("injected");
    assert!(table.contains("meta skuid 1337 return"), "{table}");
    let app_state = podman_ok(&[
        "inspect",
        "--format",
        "{{.State.Status}}",
        &format!("{pod_name}-catalog"),
    ]);
    assert_eq!(
        app_state.trim(),
        "created",
        "podman 4.3 never starts the app behind a sidecar that keeps running"
    );
}

/// A `podman kube play` that does not return by itself (a native sidecar on podman 4.3),
/// killed when dropped.
struct Player(Child);

impl Drop for Player {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
