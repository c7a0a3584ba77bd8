//! Transparent capture in a real network namespace: `quiver-proxy capture install` rules
//! (nftables), the proxy running as uid 1337 beside an app that knows nothing about the mesh,
//! mesh DNS, virtual IPs, egress pass-through and denial, strict inbound. docs/deploy.md,
//! "Transparent capture".
//!
//! The workload's namespace holds the caller's sidecar and its app (python3 as the app: plain
//! `urllib` and sockets). The callee's sidecar and apps run in this test's process in the
//! root namespace, reached over a veth pair, so a reply that carries the caller's SPIFFE id
//! has crossed a real mTLS QUIC connection between namespaces.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use quiver_tests::harness::{RunningProxy, identity_yaml};
use quiver_tests::mesh::binary;
use quiver_tests::pki::{Pki, temp_dir};
use quiver_tests::{apps, eventually};

const PROXY_UID: u32 = 1337;
const VIP: &str = "240.240.0.10";

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: install it with: apt-get install -y {package} (scripts/test.sh does)"
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace joined to the root one by a veth pair: the workload's side is
/// 10.77.N.1, the host's 10.77.N.2 (its default route). Deleted on drop, with its rules.
struct Netns {
    name: String,
    host_if: String,
    subnet: u8,
}

impl Netns {
    fn new(subnet: u8) -> Self {
        let id = std::process::id() % 100_000;
        let name = format!("qvcap{id}-{subnet}");
        let host_if = format!("qvh{id}{subnet}");
        let ns_if = format!("qvn{id}{subnet}");
        let n = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            subnet,
        };
        ok(Command::new("ip").args(["netns", "add", &name]));
        ok(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]));
        ok(Command::new("ip").args(["link", "set", &ns_if, "netns", &name]));
        ok(Command::new("ip").args(["addr", "add", &format!("{}/24", n.host()), "dev", &host_if]));
        ok(Command::new("ip").args(["link", "set", &host_if, "up"]));
        for args in [
            vec!["link", "set", "lo", "up"],
            vec![
                "addr",
                "add",
                &format!("{}/24", n.workload()),
                "dev",
                &ns_if,
            ],
            vec!["link", "set", &ns_if, "up"],
            vec!["route", "add", "default", "via", &n.host()],
        ] {
            ok(Command::new("ip")
                .args(["netns", "exec", &name, "ip"])
                .args(&args));
        }
        // What `ip netns exec` shows the namespace as /etc/resolv.conf: a resolver that does
        // not exist. Every query goes to port 53, which capture sends to the sidecar.
        let etc = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/NAME");
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {}\noptions timeout:2 attempts:1\n", n.host()),
        )
        .expect("write resolv.conf");
        n
    }

    fn workload(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    fn host(&self) -> String {
        format!("10.77.{}.2", self.subnet)
    }

    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c
    }

    /// Run python3 in the namespace (as root: the app); its stdout.
    fn python(&self, script: &str) -> String {
        ok(self.exec().args(["python3", "-c", script]))
    }

    fn ruleset(&self) -> String {
        ok(self.exec().args(["nft", "list", "ruleset"]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// A child process killed on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Make `dir` and its files the proxy's (uid 1337): it refuses a key others can read, and
/// runs as that uid.
fn give_to_proxy(dir: &Path) {
    ok(Command::new("chown")
        .args(["-R", &format!("{PROXY_UID}:{PROXY_UID}")])
        .arg(dir));
}

/// The caller's sidecar in the namespace, as uid 1337, with `extra` flags.
fn start_sidecar(ns: &Netns, config: &Path, extra: &[&str]) -> Kid {
    let log = std::fs::File::create(config.with_extension("log")).expect("log file");
    let child = ns
        .exec()
        .args([
            "setpriv",
            &format!("--reuid={PROXY_UID}"),
            &format!("--regid={PROXY_UID}"),
            "--clear-groups",
        ])
        .arg(binary("quiver-proxy"))
        .arg("--config")
        .arg(config)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the sidecar");
    Kid(child)
}

fn metrics(ns: &Netns) -> String {
    ns.python(
        "import urllib.request\n\
         print(urllib.request.urlopen('http://127.0.0.1:15020/metrics', timeout=5).read().decode())",
    )
}

async fn wait_ready(ns: &Netns) {
    let script = "import urllib.request\n\
        try:\n  print(urllib.request.urlopen('http://127.0.0.1:15020/readyz', timeout=2).status)\n\
        except Exception as e:\n  print(e)";
    eventually(
        "the sidecar in the namespace is ready",
        Duration::from_secs(20),
        || async {
            let out = run(ns.exec().args(["python3", "-c", script]));
            (String::from_utf8_lossy(&out.stdout).trim() == "200").then_some(())
        },
    )
    .await;
}

/// The count of `quiver_capture_connections_total` with these labels (0 when absent).
fn captured(text: &str, outcome: &str, protocol: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("quiver_capture_connections_total{"))
        .filter(|l| {
            l.contains(&format!("outcome=\"{outcome}\""))
                && l.contains(&format!("protocol=\"{protocol}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A server-speaks-first TCP server outside the mesh (like a database or SMTP): a banner on
/// accept, then echo. Returns its address and the peers it saw.
fn banner_server(ip: &str) -> (SocketAddr, std::sync::mpsc::Receiver<SocketAddr>) {
    let l = TcpListener::bind((ip, 0)).expect("bind banner server");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = tx.send(s.peer_addr().expect("peer"));
            let _ = s.write_all(b"220 quiver-test ready\r\n");
            let mut buf = [0u8; 256];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_knows_nothing_of_the_mesh_is_carried_by_it() {
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("setpriv", "util-linux"),
        ("python3", "python3"),
    ] {
        need(tool, package);
    }
    let ns = Netns::new(41);

    // The callee: catalog's sidecar and apps, in the root namespace, QUIC on the host side
    // of the veth pair.
    let pki = Pki::new();
    let dir = temp_dir("capture");
    let callee_id = pki.issue_in("demo", "catalog");
    let http = apps::start_http_echo().await;
    let tcp = apps::start_tcp_echo().await;
    let callee = RunningProxy::start(
        &format!(
            "{}listen: {{quic: \"{}:0\", admin: \"127.0.0.1:0\"}}\ninbound:\n  \
             - {{service: catalog, port: 80, protocol: http1, app: \"{http}\"}}\n  \
             - {{service: catalog, port: 9000, protocol: tcp, app: \"{tcp}\"}}\n",
            identity_yaml(&callee_id),
            ns.host()
        ),
        &dir,
    )
    .await
    .expect("callee proxy");

    // The caller: frontend's sidecar in the namespace, told where catalog's virtual IP is.
    let caller_dir = dir.join("frontend");
    std::fs::create_dir_all(&caller_dir).expect("mkdir");
    let caller_id = identity_in(&pki, "frontend", &caller_dir);
    let config = caller_dir.join("frontend.yaml");
    std::fs::write(
        &config,
        format!(
            "{}listen: {{quic: \"0.0.0.0:0\", admin: \"127.0.0.1:15020\"}}\n\
             services:\n  - name: catalog\n    virtualIp: {VIP}\n    \
             ports: [{{port: 80, protocol: http1}}, {{port: 9000, protocol: tcp}}]\n    \
             endpoints: [{{address: \"{}\", identity: \"{}\"}}]\n\
             capture:\n  dns_upstreams: [\"{}:53\"]\n",
            identity_yaml(&caller_id),
            callee.bound.quic,
            id_of(&pki, "catalog"),
            ns.host()
        ),
    )
    .expect("write config");
    give_to_proxy(&caller_dir);
    let _app_echo = Kid(ns
        .exec()
        .arg(binary("quiver-echo"))
        .args(["--http", "127.0.0.1:18080", "--tcp", "0.0.0.0:18081"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn quiver-echo"));

    // Before capture: plaintext from outside reaches the workload's port (the refusal below
    // is capture's doing, not a closed port).
    let outside = format!("{}:18081", ns.workload());
    let echoed = eventually(
        "the workload's echo answers from outside",
        Duration::from_secs(10),
        || {
            let outside = outside.clone();
            async move { plaintext_echo(&outside).ok().filter(|e| e == "ping") }
        },
    )
    .await;
    assert_eq!(echoed, "ping");

    // Install twice: one table, the same rules.
    let install = |ns: &Netns| {
        ok(ns
            .exec()
            .arg(binary("quiver-proxy"))
            .args(["capture", "install"]));
    };
    install(&ns);
    let first = ns.ruleset();
    install(&ns);
    let second = ns.ruleset();
    assert_eq!(first, second, "a second install changed the rules");
    assert_eq!(
        second.matches("table inet quiver_capture").count(),
        1,
        "{second}"
    );
    assert!(second.contains("skuid 1337"), "{second}");

    let sidecar = start_sidecar(&ns, &config, &[]);
    wait_ready(&ns).await;

    // 1. Mesh DNS + virtual IP + HTTP: the app calls a name; the callee sees the caller's id.
    let got = ns.python(
        "import urllib.request, socket\n\
         print(socket.gethostbyname('catalog.demo.mesh'))\n\
         print(socket.gethostbyname('catalog.demo.svc.cluster.local'))\n\
         r = urllib.request.urlopen('http://catalog.demo.mesh/hello?x=1', data=b'payload', timeout=10)\n\
         print(r.status)\n\
         print(r.headers['x-echo-peer-identity'])\n\
         print(r.headers['x-echo-path'])\n\
         print(r.read().decode())",
    );
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(
        lines,
        [
            VIP,
            VIP,
            "200",
            id_of(&pki, "frontend").as_str(),
            "/hello?x=1",
            "payload"
        ],
        "{got}"
    );

    // 2. Raw TCP to the virtual IP's tcp port: a tunnel, bytes intact.
    let got = ns.python(&format!(
        "import socket\n\
         s = socket.create_connection(('{VIP}', 9000), timeout=10)\n\
         data = bytes(range(256)) * 64\n\
         s.sendall(data)\n\
         s.shutdown(socket.SHUT_WR)\n\
         got = b''\n\
         while True:\n  b = s.recv(65536)\n  if not b: break\n  got += b\n\
         print(got == data + b'\\nEOF total=16384\\n', len(got))"
    ));
    // The echo app's trailer after the half-close proves the close crossed the mesh too.
    assert_eq!(got.trim(), "True 16401");

    // 3. A port catalog does not declare: closed, never sent anywhere.
    let got = ns.python(&format!(
        "import socket\n\
         s = socket.create_connection(('{VIP}', 81), timeout=10)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         try:\n  print(repr(s.recv(100)))\n\
         except ConnectionResetError:\n  print(repr(b''))"
    ));
    // Closed (a FIN, or a reset when the request was still unread): nothing answered.
    assert_eq!(got.trim(), "b''");

    // 4. Egress, allowed: a server-speaks-first protocol outside the mesh gets through at
    //    once (its banner arrives though the client says nothing), from the sidecar's socket.
    let (banner, peers) = banner_server(&ns.host());
    let got = ns.python(&format!(
        "import socket, time\n\
         t = time.monotonic()\n\
         s = socket.create_connection(('{}', {}), timeout=5)\n\
         s.settimeout(1.0)\n\
         b = s.recv(100)\n\
         print(b.decode().strip())\n\
         s.sendall(b'EHLO x')\n\
         print(s.recv(100).decode())\n\
         print(round((time.monotonic() - t) * 1000))",
        banner.ip(),
        banner.port()
    ));
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(&lines[..2], ["220 quiver-test ready", "EHLO x"], "{got}");
    eprintln!("server-first banner through capture after {} ms", lines[2]);
    let peer = peers
        .recv_timeout(Duration::from_secs(5))
        .expect("the banner server saw a peer");
    assert_eq!(peer.ip().to_string(), ns.workload());

    // 5. Inbound plaintext from outside the pod: refused (strict), though the app listens.
    assert_ne!(plaintext_echo(&outside).unwrap_or_default(), "ping");

    let m = metrics(&ns);
    assert!(captured(&m, "mesh", "http1") >= 1, "{m}");
    assert!(captured(&m, "mesh", "tcp") >= 1, "{m}");
    assert!(captured(&m, "undeclared-port", "tcp") >= 1, "{m}");
    assert!(captured(&m, "egress", "tcp") >= 1, "{m}");
    assert!(captured(&m, "plaintext-refused", "tcp") >= 1, "{m}");
    let dns_mesh: f64 = m
        .lines()
        .find(|l| l.starts_with("quiver_dns_queries_total{outcome=\"mesh\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(dns_mesh >= 2.0, "{m}");
    drop(sidecar);

    // 6. Egress denied by config: the destination never sees the connection; the client
    //    learns at once; the denial is counted with what the client's first bytes showed.
    let sidecar = start_sidecar(&ns, &config, &["--egress", "deny"]);
    wait_ready(&ns).await;
    let got = ns.python(&format!(
        "import socket\n\
         s = socket.create_connection(('{}', {}), timeout=5)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: example.com\\r\\n\\r\\n')\n\
         s.settimeout(5)\n\
         try:\n  print(repr(s.recv(100)))\n\
         except ConnectionResetError:\n  print(repr(b''))",
        banner.ip(),
        banner.port()
    ));
    assert_eq!(got.trim(), "b''");
    assert!(
        peers.recv_timeout(Duration::from_millis(500)).is_err(),
        "a denied connection got through"
    );
    // A client that says nothing (server-speaks-first) is held for the detection bound
    // (capture.detect_timeout, 100 ms by default), then closed and counted as tcp.
    let got = ns.python(&format!(
        "import socket, time\n\
         s = socket.create_connection(('{}', {}), timeout=5)\n\
         t = time.monotonic()\n\
         s.settimeout(5)\n\
         try:\n  b = s.recv(100)\n\
         except ConnectionResetError:\n  b = b''\n\
         print(repr(b), round((time.monotonic() - t) * 1000))",
        banner.ip(),
        banner.port()
    ));
    let (closed, waited) = got.trim().split_once(' ').expect("two fields");
    assert_eq!(closed, "b''");
    eprintln!("a silent denied client was closed after {waited} ms (detect_timeout 100ms)");
    let m = metrics(&ns);
    assert!(captured(&m, "egress-denied", "http1") >= 1, "{m}");
    assert!(captured(&m, "egress-denied", "tcp") >= 1, "{m}");
    drop(sidecar);

    // 7. Remove: no rule of ours left, the rest untouched; removing again is fine.
    ok(ns
        .exec()
        .arg(binary("quiver-proxy"))
        .args(["capture", "remove"]));
    assert!(!ns.ruleset().contains("quiver_capture"), "{}", ns.ruleset());
    ok(ns
        .exec()
        .arg(binary("quiver-proxy"))
        .args(["capture", "remove"]));
    assert_eq!(plaintext_echo(&outside).expect("echo after remove"), "ping");

    callee.stop().await;
}

/// An identity of `demo/<sa>` with its files in `dir` (the directory the sidecar is given,
/// uid 1337 after [`give_to_proxy`]).
fn identity_in(pki: &Pki, sa: &str, dir: &Path) -> quiver_tests::pki::IdentityFiles {
    let f = pki.issue_in("demo", sa);
    let mut moved = f.clone();
    for (from, to) in [
        (&f.cert, &mut moved.cert),
        (&f.key, &mut moved.key),
        (&f.bundle, &mut moved.bundle),
    ] {
        *to = dir.join(from.file_name().expect("file name"));
        std::fs::copy(from, &*to).expect("copy identity");
    }
    moved
}

fn id_of(pki: &Pki, sa: &str) -> String {
    format!("spiffe://{}/ns/demo/sa/{sa}", pki.trust_domain)
}

/// Send "ping" to `addr` in plaintext and read what comes back (EOF or a reset: empty).
fn plaintext_echo(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// kubelet's GET of `http://addr{path}` from outside the pod: the status, and the body;
/// status 0 when no HTTP answer came (refused, reset, closed).
fn kubelet_get(addr: &str, path: &str) -> (u16, String) {
    let mut s =
        match TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => return (0, e.to_string()),
        };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    if let Err(e) = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n"
    ) {
        return (0, e.to_string());
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    (status, body)
}

/// An injected Pod's probes, end to end: the injector rewrites the app's probes to the
/// sidecar's admin port and hands the originals to the sidecar; with capture installed and
/// strict mode on, kubelet's plaintext probe of the app's port is refused, while the rewritten
/// probe reaches the app through the sidecar and reports what the app said: an HTTP status,
/// a TCP connect, a gRPC health answer (tonic-health, not ours), a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelets_probes_reach_the_app_through_the_sidecar_under_strict_capture() {
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("setpriv", "util-linux"),
        ("python3", "python3"),
    ] {
        need(tool, package);
    }
    let ns = Netns::new(42);
    let pki = Pki::new();
    let dir = temp_dir("capture-probes");

    // The Pod as a user writes it: three containers' probes (only their probes matter here).
    let container = |name: &str, probes: &[(&str, serde_json::Value, u64)]| {
        let mut c = serde_json::json!({"name": name, "image": "example/shop:1"});
        for (kind, probe, timeout) in probes {
            let mut probe = probe.clone();
            probe["timeoutSeconds"] = (*timeout).into();
            c[*kind] = probe;
        }
        c
    };
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "shop-0", "namespace": "demo",
                     "labels": {"app": "shop", "quiver.dev/inject": "enabled"}},
        "spec": {"containers": [
            container("shop", &[
                ("readinessProbe", serde_json::json!({"httpGet": {"path": "/ready", "port": 18080}}), 2),
                ("livenessProbe", serde_json::json!({"tcpSocket": {"port": 18081}}), 2),
                ("startupProbe", serde_json::json!({"grpc": {"port": 18090}}), 2),
            ]),
            container("sick", &[
                ("readinessProbe", serde_json::json!({"httpGet": {"path": "/status/418", "port": 18080}}), 2),
                ("livenessProbe", serde_json::json!({"tcpSocket": {"port": 18099}}), 2),
                ("startupProbe", serde_json::json!({"grpc": {"port": 18090, "service": "quiver.test.Down"}}), 2),
            ]),
            container("slow", &[
                ("readinessProbe", serde_json::json!({"httpGet": {"path": "/sleep/3000", "port": 18080}}), 1),
                ("livenessProbe", serde_json::json!({"grpc": {"port": 18099}}), 1),
                ("startupProbe", serde_json::json!({"httpGet": {"path": "/", "port": 18099}}), 1),
            ]),
            // An app that serves HTTPS itself: the sidecar probes it over TLS without
            // verifying its certificate, as kubelet does; TLS to a plaintext port fails.
            container("secure", &[
                ("readinessProbe", serde_json::json!({"httpGet": {"path": "/status/204", "port": 18443, "scheme": "HTTPS"}}), 2),
                ("livenessProbe", serde_json::json!({"httpGet": {"path": "/", "port": 18080, "scheme": "HTTPS"}}), 2),
            ]),
        ]},
    });
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "1", "namespace": "demo", "operation": "CREATE", "object": pod,
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"}},
    });
    let injector = quiver_control::inject::Injector::new(
        quiver_control::inject::InjectConfig::default(),
        &pki.trust_domain,
    );
    let answer = injector
        .review(&serde_json::to_vec(&review).expect("json"))
        .expect("a readable review")
        .document;
    assert!(answer["response"].get("warnings").is_none(), "{answer}");
    let patch = base64_decode(answer["response"]["patch"].as_str().expect("a patch"));
    let ops: Vec<serde_json::Value> = serde_json::from_slice(&patch).expect("JSON patch");
    // What kubelet will ask, per container and probe: the rewritten paths on port 15020.
    let rewritten: Vec<String> = ops
        .iter()
        .filter(|o| o["op"] == "replace")
        .map(|o| {
            assert_eq!(o["value"]["httpGet"]["port"], 15020, "{o}");
            o["value"]["httpGet"]["path"]
                .as_str()
                .expect("path")
                .to_string()
        })
        .collect();
    assert_eq!(rewritten.len(), 11, "{ops:?}");
    let app_probes = ops
        .iter()
        .filter_map(|o| o["value"].as_array())
        .flatten()
        .filter(|c| c["name"] == "quiver-proxy")
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == "QUIVER_APP_PROBES")
        .and_then(|e| e["value"].as_str().map(str::to_string))
        .expect("the sidecar is given the original probes");

    // The app in the pod: HTTP and TCP echo, a gRPC health service, and the HTTP echo over
    // TLS with a certificate nobody in the pod trusts (nothing on 18099).
    let app_tls = pki.issue("shop-app");
    let _app = Kid(ns
        .exec()
        .arg(binary("quiver-echo"))
        .args([
            "--http",
            "0.0.0.0:18080",
            "--tcp",
            "0.0.0.0:18081",
            "--grpc-health",
            "0.0.0.0:18090",
            "--https",
            "0.0.0.0:18443",
        ])
        .arg("--tls-cert")
        .arg(&app_tls.cert)
        .arg("--tls-key")
        .arg(&app_tls.key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn quiver-echo"));
    let app_port = format!("{}:18080", ns.workload());
    eventually(
        "the app answers kubelet before capture",
        Duration::from_secs(10),
        || {
            let app_port = app_port.clone();
            async move { (kubelet_get(&app_port, "/ready").0 == 200).then_some(()) }
        },
    )
    .await;

    // The sidecar, as injected: capture, strict mode, the admin port open to the node, and
    // the original probes from the injector's patch.
    let sidecar_dir = dir.join("shop");
    std::fs::create_dir_all(&sidecar_dir).expect("mkdir");
    let id = identity_in(&pki, "shop", &sidecar_dir);
    let config = sidecar_dir.join("shop.yaml");
    std::fs::write(
        &config,
        format!(
            "{}listen: {{quic: \"0.0.0.0:0\", admin: \"0.0.0.0:15020\"}}\n\
             capture:\n  dns_upstreams: [\"{}:53\"]\n",
            identity_yaml(&id),
            ns.host()
        ),
    )
    .expect("write config");
    give_to_proxy(&sidecar_dir);
    ok(ns
        .exec()
        .arg(binary("quiver-proxy"))
        .args(["capture", "install"]));
    let _sidecar = start_sidecar(&ns, &config, &["--app-probes", &app_probes]);
    wait_ready(&ns).await;

    // kubelet's original probe of the app's port: strict mode refuses it.
    assert_eq!(
        kubelet_get(&app_port, "/ready").0,
        0,
        "plaintext from the node reached the app under strict capture"
    );
    let admin = format!("{}:15020", ns.workload());
    let mut seen = Vec::new();
    for path in &rewritten {
        let started = std::time::Instant::now();
        let (status, body) = kubelet_get(&admin, path);
        seen.push((path.clone(), status, body.clone(), started.elapsed()));
    }
    for (path, status, body, took) in &seen {
        eprintln!("{path}: {status} in {took:?}: {body}");
    }
    let status_of = |path: &str| {
        seen.iter()
            .find(|(p, ..)| p == path)
            .map(|(_, s, b, t)| (*s, b.clone(), *t))
            .unwrap_or_else(|| panic!("{path} was not rewritten: {rewritten:?}"))
    };
    // The healthy container: the app answered GET /ready, took a connection, is SERVING.
    assert_eq!(status_of("/app-health/shop/readyz").0, 200);
    assert_eq!(status_of("/app-health/shop/livez").0, 200);
    let (status, body, _) = status_of("/app-health/shop/startupz");
    assert_eq!((status, body.contains("SERVING")), (200, true), "{body}");
    // The sick one: the app's own 418 comes back (the sidecar reached it with the path),
    // nothing listens on 18099, and the gRPC service says NOT_SERVING.
    assert_eq!(status_of("/app-health/sick/readyz").0, 418);
    assert_eq!(status_of("/app-health/sick/livez").0, 503);
    let (status, body, _) = status_of("/app-health/sick/startupz");
    assert_eq!(
        (status, body.contains("NOT_SERVING")),
        (503, true),
        "{body}"
    );
    // The slow one: no answer within its 1 s timeout is a failure, reported at the bound
    // (the app would answer after 3 s).
    let (status, body, took) = status_of("/app-health/slow/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no answer within 1s"), "{body}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(status_of("/app-health/slow/livez").0, 503);
    assert_eq!(status_of("/app-health/slow/startupz").0, 503);
    // The HTTPS app: its 204 came back over TLS, in HTTP/2 as ALPN chose; TLS to the
    // plaintext port failed the handshake and says so.
    let (status, body, _) = status_of("/app-health/secure/readyz");
    assert_eq!(
        (status, body.contains("204"), body.contains("HTTP/2.0")),
        (200, true, true),
        "{body}"
    );
    let (status, body, _) = status_of("/app-health/secure/livez");
    assert_eq!(
        (status, body.contains("TLS handshake")),
        (503, true),
        "{body}"
    );
    // Only the listed probes are served: nothing else of the app is reachable this way.
    assert_eq!(kubelet_get(&admin, "/app-health/shop/other").0, 404);
    assert_eq!(kubelet_get(&admin, "/app-health/../metrics").0, 404);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}
