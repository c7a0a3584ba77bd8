//! The container images (issue 20, item 1; docs/deploy.md, "Images"): `deploy/build-images.sh`
//! builds both with podman; the proxy image stays within its size budget, runs as uid 1337 on a
//! read-only root with a real static config and answers `/healthz`, and carries an `nft` that
//! works with NET_ADMIN; the control image runs as its own user, keeps its store in a volume
//! across containers, serves the console over TLS and its `quiverctl` talks to it. Real podman,
//! real containers (`podman --runtime runc`: crun fails on this kind of kernel); each container
//! and volume is removed even when an assertion fails.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use quiver_tests::pki::{Pki, temp_dir};
use quiver_tests::podman::{INSTALL, podman, podman_ok, podman_with, repo, target_dir};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The proxy image's budget, uncompressed (issue 20).
const PROXY_IMAGE_MAX_BYTES: u64 = 25_000_000;
const PROXY_UID: u32 = 1337;
const CONTROL_UID: u32 = 1338;
/// The control plane's admin token in these tests (at least 32 characters).
const TOKEN: &str = "qvr_images-test-admin-token-0123456789";

fn proxy_image() -> String {
    format!("localhost/quiver-proxy:{VERSION}")
}

fn control_image() -> String {
    format!("localhost/quiver-control:{VERSION}")
}

/// Run deploy/build-images.sh once for every test here: its output. A failure fails every
/// test that needs the images, without building again.
fn build_images() -> &'static str {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let info = podman(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]);
        if !info.status.success() {
            return Err(format!(
                "podman --runtime runc info failed: {}\n{INSTALL}",
                String::from_utf8_lossy(&info.stderr)
            ));
        }
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(repo().join("deploy/build-images.sh"))
            .env("CARGO_TARGET_DIR", target_dir())
            .output()
            .map_err(|e| format!("cannot run deploy/build-images.sh: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("deploy/build-images.sh: {}\n{text}", out.status));
        }
        eprintln!(
            "deploy/build-images.sh took {:.0?}:\n{text}",
            started.elapsed()
        );
        Ok(text)
    });
    match built {
        Ok(text) => text,
        Err(e) => panic!("{e}"),
    }
}

/// A container (and the volumes named with it) that is removed when the test ends, passed or
/// failed.
struct Container {
    name: String,
    volumes: Vec<String>,
}

impl Container {
    fn named(tag: &str) -> Self {
        let name = format!("quiver-images-test-{}-{tag}", std::process::id());
        podman(&["rm", "--force", "--time", "0", &name]);
        Self {
            name,
            volumes: Vec::new(),
        }
    }

    /// `podman run --detach --name NAME ARGS`.
    fn run(&self, args: &[&str]) {
        let mut all = vec!["run", "--detach", "--name", &self.name];
        all.extend_from_slice(args);
        podman_ok(&all);
    }

    /// The host address of the container's published `port`/tcp.
    fn published(&self, port: u16) -> SocketAddr {
        let out = podman_ok(&["port", &self.name, &format!("{port}/tcp")]);
        out.lines().next().unwrap().trim().parse().unwrap()
    }

    /// The container's main process, as the host sees it.
    fn pid(&self) -> u32 {
        podman_ok(&["inspect", "--format", "{{.State.Pid}}", &self.name])
            .trim()
            .parse()
            .unwrap()
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn remove(&self) {
        podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.remove();
        for v in &self.volumes {
            podman(&["volume", "rm", "--force", v]);
        }
    }
}

/// The real uid and gid of process `pid` (from the host's /proc, so not what the image
/// claims but what the kernel runs). With rootful podman, as CI runs it, they are the
/// container's own.
fn ids(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u32 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("Uid:"), field("Gid:"))
}

/// Make `dir` and its files belong to `uid` inside containers (rootless podman maps uids).
fn chown_for_container(dir: &Path, uid: u32) {
    let owner = format!("{uid}:{uid}");
    let dir = dir.display().to_string();
    let status = if is_root() {
        Command::new("chown").args(["-R", &owner, &dir]).status()
    } else {
        Command::new("podman")
            .args(["unshare", "chown", "-R", &owner, &dir])
            .status()
    };
    assert!(status.unwrap().success(), "chown -R {owner} {dir}");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn image_field(image: &str, format: &str) -> String {
    podman_ok(&["image", "inspect", "--format", format, image])
        .trim()
        .to_string()
}

#[test]
fn the_script_builds_both_images_within_budget_and_as_their_own_users() {
    let output = build_images();
    for image in [proxy_image(), control_image()] {
        for tag in [image.clone(), image.replace(VERSION, "latest")] {
            assert!(
                podman(&["image", "exists", &tag]).status.success(),
                "{tag} was not built"
            );
        }
        let name = image.split(':').next().unwrap();
        assert!(
            output.contains(name) && output.contains("MB uncompressed"),
            "the script prints each image's size: {output}"
        );
    }
    let size: u64 = image_field(&proxy_image(), "{{.Size}}").parse().unwrap();
    assert!(
        size <= PROXY_IMAGE_MAX_BYTES,
        "the proxy image is {size} bytes uncompressed, over its {PROXY_IMAGE_MAX_BYTES} budget"
    );
    assert_eq!(
        image_field(&proxy_image(), "{{.Config.User}}"),
        format!("{PROXY_UID}:{PROXY_UID}")
    );
    assert_eq!(
        image_field(&control_image(), "{{.Config.User}}"),
        format!("{CONTROL_UID}:{CONTROL_UID}")
    );
    // Nothing but what the images need: no shell to exec into.
    let sh = podman(&["run", "--rm", "--entrypoint", "/bin/sh", &proxy_image()]);
    assert!(!sh.status.success(), "the proxy image has no /bin/sh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_image_serves_health_as_uid_1337_on_a_read_only_root() {
    build_images();
    // A real static config: an identity minted now, one inbound service, admin on all
    // addresses so the published port reaches it. Mounted read-only.
    let pki = Pki::new();
    let id = pki.issue("web");
    let dir = temp_dir("image-proxy");
    for (from, to) in [
        (&id.cert, "cert.pem"),
        (&id.key, "key.pem"),
        (&id.bundle, "bundle.pem"),
    ] {
        std::fs::copy(from, dir.join(to)).unwrap();
    }
    std::fs::write(
        dir.join("proxy.yaml"),
        "identity: {cert: cert.pem, key: key.pem, trust_bundle: bundle.pem}
listen: {quic: \"0.0.0.0:15443\", admin: \"0.0.0.0:15020\"}
inbound:
  - {service: web, port: 8080, protocol: http1, app: \"127.0.0.1:8080\"}
",
    )
    .unwrap();
    // The key is 0600 (the proxy refuses any other mode): it must belong to the proxy's uid.
    chown_for_container(&dir, PROXY_UID);

    let ctr = Container::named("proxy");
    let mount = format!("{}:/etc/quiver:ro", dir.display());
    ctr.run(&[
        // A read-only root and no tmpfs podman would add: the proxy writes nowhere.
        "--read-only",
        "--read-only-tmpfs=false",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--volume",
        &mount,
        "--publish",
        "127.0.0.1::15020",
        &proxy_image(),
        "--config",
        "/etc/quiver/proxy.yaml",
    ]);
    let admin = ctr.published(15020);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match quiver_tests::mesh::admin_get(admin, "/healthz").await {
            Ok((200, _)) => break,
            other if Instant::now() > deadline => {
                panic!("/healthz on {admin}: {other:?}\nlogs:\n{}", ctr.logs())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (status, config) = quiver_tests::mesh::admin_get(admin, "/config")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        config.contains("spiffe://mesh.local/ns/default/sa/web"),
        "/config shows the identity from the mounted files: {config}"
    );
    assert_eq!(
        ids(ctr.pid()),
        (PROXY_UID, PROXY_UID),
        "the proxy's process runs as uid and gid {PROXY_UID}"
    );
    assert_eq!(
        podman_ok(&[
            "inspect",
            "--format",
            "{{.HostConfig.ReadonlyRootfs}}",
            &ctr.name
        ])
        .trim(),
        "true"
    );
    assert_eq!(
        podman_ok(&["inspect", "--format", "{{.State.Running}}", &ctr.name]).trim(),
        "true",
        "{}",
        ctr.logs()
    );
}

#[test]
fn the_proxy_images_nft_installs_capture_shaped_rules_with_net_admin() {
    build_images();
    // What `quiver-proxy capture install` does as an init step: `nft -f -` as root with
    // NET_ADMIN, in the container's own network namespace. nft and its libraries come from
    // the build host; a missing library fails at exec. `nft monitor` keeps the namespace alive
    // (there is no shell or sleep in the image) while nft runs beside it with `podman exec`.
    let ctr = Container::named("nft");
    ctr.run(&[
        "--network",
        "none",
        "--cap-add",
        "NET_ADMIN",
        "--user",
        "0",
        "--entrypoint",
        "/usr/sbin/nft",
        &proxy_image(),
        "monitor",
    ]);
    // The shape of capture's rules (dataplane/src/capture.rs): declare, delete and define
    // again in one transaction, the nat hooks both ways, uid, protocol, address and port
    // matches, sets, redirects. Twice: the second replaces the first.
    let rules = "table inet quiver_images_test
delete table inet quiver_images_test
table inet quiver_images_test {
  chain outbound {
    type nat hook output priority -100; policy accept;
    meta skuid 1337 return
    meta nfproto ipv6 return
    udp dport 53 redirect to :15053
    ip daddr 127.0.0.0/8 return
    ip daddr { 10.96.0.1/32, 169.254.0.0/16 } return
    meta l4proto tcp redirect to :15001
  }
  chain inbound {
    type nat hook prerouting priority -100; policy accept;
    iifname \"lo\" return
    tcp dport { 15006, 15020 } return
    tcp dport { 8080, 9090 } redirect to :15006
  }
}
";
    let nft = |args: &[&str], stdin: Option<&str>| -> String {
        let mut all = vec!["exec", "--interactive", &ctr.name, "/usr/sbin/nft"];
        all.extend_from_slice(args);
        let out = podman_with(&all, stdin);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "nft {}: {said}", args.join(" "));
        said
    };
    nft(&["-f", "-"], Some(rules));
    nft(&["-f", "-"], Some(rules));
    let listed = nft(&["list", "ruleset"], None);
    assert_eq!(
        listed.matches("table inet quiver_images_test").count(),
        1,
        "one table after two installs: {listed}"
    );
    for line in [
        "meta skuid 1337 return",
        "redirect to :15001",
        "tcp dport { 8080, 9090 } redirect to :15006",
    ] {
        assert!(listed.contains(line), "nft lists {line:?}: {listed}");
    }
    // Protocol names print as on the host: /etc/protocols is in the image.
    assert!(
        listed.contains("meta l4proto tcp redirect"),
        "nft names protocols: {listed}"
    );
}

/// GET `path` over HTTPS from `addr`, verifying the server against `ca_pem` for the name
/// `localhost`: (status, body). Blocking: HTTP/1.1 over rustls on a std socket.
fn https_get(addr: SocketAddr, ca_pem: &[u8], path: &str) -> std::io::Result<(u16, String)> {
    let config = quiver_tests::pki::client_trusting(ca_pem);
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
        .map_err(std::io::Error::other)?;
    let sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    // The server may close without close_notify once it has answered: keep what arrived.
    if let Err(e) = tls.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    Ok((status, text))
}

/// `quiverctl ARGS` inside the control-plane container, with the admin token.
fn quiverctl(ctr: &Container, args: &[&str], stdin: Option<&str>) -> Output {
    let token = format!("QUIVER_TOKEN={TOKEN}");
    let mut all = vec![
        "exec",
        "--interactive",
        "--env",
        &token,
        &ctr.name,
        "/usr/local/bin/quiverctl",
    ];
    all.extend_from_slice(args);
    podman_with(&all, stdin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_image_serves_the_console_over_tls_and_keeps_its_store_in_a_volume() {
    build_images();
    let mut ctr = Container::named("control");
    let volume = format!("{}-data", ctr.name);
    ctr.volumes.push(volume.clone());
    let data = format!("{volume}:/var/lib/quiver");
    let token = format!("QUIVER_ADMIN_TOKEN={TOKEN}");
    let start = |ctr: &Container| {
        ctr.run(&[
            "--volume",
            &data,
            "--env",
            &token,
            "--publish",
            "127.0.0.1::8080",
            &control_image(),
        ]);
    };
    start(&ctr);
    let api = ctr.published(8080);

    // The CA the API's certificate chains to, written into the volume at start.
    let mountpoint = podman_ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume]);
    let ca_file = Path::new(mountpoint.trim()).join("api-ca.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, page) = loop {
        let attempt = match std::fs::read(&ca_file) {
            Ok(ca) => https_get(api, &ca, "/"),
            Err(e) => Err(e),
        };
        match attempt {
            Ok(answer) => break answer,
            Err(e) if Instant::now() > deadline => {
                panic!("GET https://{api}/: {e}\nlogs:\n{}", ctr.logs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<title>Quiver console</title>"),
        "GET / is the embedded console: {page}"
    );
    assert_eq!(
        ids(ctr.pid()),
        (CONTROL_UID, CONTROL_UID),
        "quiver-control runs as uid and gid {CONTROL_UID}"
    );

    // quiverctl inside the image reaches the API with the image's defaults (QUIVER_SERVER,
    // QUIVER_CA_FILE) and the token.
    let service = "apiVersion: quiver.dev/v1
kind: Service
metadata: {name: images-web, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http1, targetPort: 8080}]
";
    let applied = quiverctl(&ctr, &["apply", "-f", "-"], Some(service));
    assert!(
        applied.status.success(),
        "quiverctl apply: {}{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );

    // A new container on the same volume: the store, and with it the Service, is still there.
    ctr.remove();
    start(&ctr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let out = quiverctl(&ctr, &["get", "service"], None);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "quiverctl get service: {}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stderr),
            ctr.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        listed.contains("images-web"),
        "the Service applied in the first container is listed by the second: {listed}"
    );
}
