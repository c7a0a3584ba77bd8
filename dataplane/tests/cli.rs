//! The `quiver-proxy` binary itself: `--check` on every class of config mistake, and a
//! SIGTERM drain of a real process with a request in flight.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use quiver_tests::client::send_h1;
use quiver_tests::harness::{Apps, RunningProxy, client_yaml, identity_yaml, server_yaml};
use quiver_tests::pki::{Pki, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_quiver-proxy");

/// Run `--check` on `yaml`: (exit code, stdout + stderr).
fn check(dir: &Path, yaml: &str) -> (i32, String) {
    let path = dir.join(format!("c{}.yaml", rand_name()));
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .expect("run quiver-proxy");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn rand_name() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn check_accepts_a_good_file_and_names_the_field_of_every_mistake() {
    let pki = Pki::new();
    let dir = temp_dir("check");
    let id = identity_yaml(&pki.issue("a"));
    let good = format!(
        "{id}listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}
inbound:
  - {{service: web, port: 8080, protocol: http1, app: \"127.0.0.1:8080\"}}
services:
  - name: api
    endpoints: [{{address: \"127.0.0.1:15443\", identity: \"spiffe://mesh.local/ns/default/sa/api\"}}]
outbound:
  - {{listen: \"127.0.0.1:0\", service: api, protocol: http2}}
"
    );
    let (code, out) = check(&dir, &good);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": ok"), "{out}");

    // (mistake, the field or text the report must name)
    let cases: Vec<(String, &str)> = vec![
        (good.replace("inbound:", "inbnd:"), "unknown field `inbnd`"),
        (
            good.replace("protocol: http1", "protocol: quic"),
            "inbound[0].protocol",
        ),
        (good.replace("port: 8080", "port: 70000"), "inbound[0].port"),
        (
            good.replace("\"127.0.0.1:8080\"", "\"localhost\""),
            "inbound[0].app",
        ),
        (
            good.replace("service: web", "service: Web_1"),
            "inbound[0].service",
        ),
        (
            good.replace("service: api, protocol", "service: ghost, protocol"),
            "outbound[0].service",
        ),
        (
            good.replace("spiffe://mesh.local/ns/default/sa/api", "http://api"),
            "services[0].endpoints[0].identity",
        ),
        (
            good.replace(
                "spiffe://mesh.local/ns/default/sa/api",
                "spiffe://other.td/ns/default/sa/api",
            ),
            "services[0].endpoints[0].identity",
        ),
        (
            good.replace("127.0.0.1:15443", "0.0.0.0:15443"),
            "services[0].endpoints[0].address",
        ),
        (good.replace("cert.pem", "nope.pem"), "identity.cert"),
        (
            format!("{good}tuning: {{idle_timeout: 0s}}\n"),
            "tuning.idle_timeout",
        ),
        (format!("{good}drain_timeout: soon\n"), "drain_timeout"),
        ("identity: [unclosed".to_string(), "line 1"),
        (String::new(), "identity"),
    ];
    for (yaml, want) in cases {
        let (code, out) = check(&dir, &yaml);
        assert_eq!(code, 64, "expected exit 64 for {want}: {out}");
        assert!(
            out.contains(want),
            "report for {want:?} does not name it:\n{out}"
        );
    }
    // A missing file is an error too, naming the file.
    let out = Command::new(BIN)
        .args(["--check", "--config", "/nonexistent/quiver.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/quiver.yaml"));
}

#[tokio::test]
async fn sigterm_drains_a_real_process_with_a_request_in_flight() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let dir = temp_dir("sigterm");
    // B as a real process, on a fixed free port so A can be configured first.
    let quic = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let yaml = server_yaml(&pki.issue("b"), &apps, "10s").replace(
        "listen: {quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}",
        &format!("listen: {{quic: \"{quic}\", admin: \"{admin}\"}}"),
    );
    let cfg = dir.join("b.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    quiver_tests::eventually("B ready", Duration::from_secs(10), || async {
        let ok = tokio::net::TcpStream::connect(admin).await.is_ok();
        ok.then_some(())
    })
    .await;
    let a = RunningProxy::start(
        &client_yaml(&pki.issue("a"), quic, pki.id("b").as_str()),
        &dir,
    )
    .await
    .unwrap();
    let addr = a.bound.outbound[0];
    let slow = tokio::spawn(async move {
        let req = Request::post("/sleep/1500?sigterm-test")
            .header("host", "echo")
            .body(Full::new(Bytes::from(vec![b'x'; 256 * 1024])))
            .unwrap();
        send_h1(addr, req).await
    });
    quiver_tests::eventually("request inside the app", Duration::from_secs(5), || async {
        (quiver_tests::apps::sleeping("sigterm-test") == 1).then_some(())
    })
    .await;
    let pid = child.id().expect("pid").to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let (head, body) = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("the in-flight request finishes while B drains")
        .unwrap();
    assert_eq!(head.status(), 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        body == vec![b'x'; 256 * 1024],
        "response body cut by the drain"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("B exits after draining")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let mut err = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(err.contains("draining"), "{err}");
    assert!(err.contains("proxy stopped"), "{err}");
}
