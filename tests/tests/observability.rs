//! The Prometheus rules and the Grafana dashboard in `deploy/observability/`: promtool accepts
//! the rules and their unit tests pass; the dashboard is well formed; every metric the rules
//! and the dashboard name is one a running mesh really exposes (a renamed metric fails
//! here); and a real Prometheus scraping a real mesh evaluates every rule without error and
//! answers every recording rule and every dashboard query with data.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use quiver_tests::apps::{serve_http_echo, serve_tcp_echo};
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec, admin_get, free_port};
use quiver_tests::pki::temp_dir;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INSTALL: &str = "install promtool: apt-get install -y --no-install-recommends prometheus";

/// A file of `deploy/observability/`.
fn deployed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/observability")
        .join(name)
}

fn read(name: &str) -> String {
    let path = deployed(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Run promtool with `args`: (passed, what it said).
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}\n{INSTALL}"));
    (
        out.status.success(),
        format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

// --- What the rules and the dashboard name ----------------------------------------------

/// Every rule of rules.yml: (its record or alert name, its expression).
fn rules() -> Vec<(String, String)> {
    let doc: serde_yaml::Value = serde_yaml::from_str(&read("rules.yml")).unwrap();
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["record"]
                .as_str()
                .or_else(|| rule["alert"].as_str())
                .expect("a rule has a record or alert name");
            let expr = rule["expr"].as_str().expect("a rule has an expr");
            out.push((name.to_string(), expr.to_string()));
        }
    }
    out
}

/// The series the rules record.
fn recorded() -> BTreeSet<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(&read("rules.yml")).unwrap();
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
        .filter_map(|r| r["record"].as_str().map(str::to_string))
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana-dashboard.json")).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Every panel query: (panel title, expression).
fn panel_queries(dash: &Value) -> Vec<(String, String)> {
    panels(dash)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a query of panel {title:?} has no expr: {t}"));
                (title.clone(), expr.to_string())
            })
        })
        .collect()
}

/// The template variables' queries: (variable, the series selector of its `label_values`,
/// the label it lists).
fn variable_queries(dash: &Value) -> Vec<(String, String, String)> {
    dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let name = v["name"].as_str().unwrap().to_string();
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or_else(|| panic!("variable {name} has no query"));
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {name}: not label_values(selector, label)"));
            let (selector, label) = inner
                .rsplit_once(',')
                .unwrap_or_else(|| panic!("variable {name}: label_values needs a label"));
            (name, selector.trim().to_string(), label.trim().to_string())
        })
        .collect()
}

/// Metric names a PromQL expression selects (functions, keywords, label names, strings,
/// durations and Grafana variables are not).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    // Skip from an opening bracket to its match, over quoted strings.
    let skip_group = |mut i: usize, open: u8, close: u8| -> usize {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                q @ (b'"' | b'\'' | b'`') => {
                    i += 1;
                    while i < b.len() && b[i] != q {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' => i = skip_group(i, b'{', b'}'),
            b'[' => i = skip_group(i, b'[', b']'),
            b'#' => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n);
            }
            b'$' => {
                i += 1;
                if b.get(i) == Some(&b'{') {
                    i = skip_group(i, b'{', b'}');
                } else {
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut next = i;
                while next < b.len() && b[next].is_ascii_whitespace() {
                    next += 1;
                }
                let call = b.get(next) == Some(&b'(');
                match word {
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right" => {
                        if call {
                            i = skip_group(next, b'(', b')');
                        }
                    }
                    "and" | "or" | "unless" | "bool" | "offset" | "inf" | "nan" | "atan2" => {}
                    // Aggregations: `sum by (x) (...)` has its modifier before the call.
                    "sum" | "min" | "max" | "avg" | "group" | "stddev" | "stdvar" | "count"
                    | "count_values" | "bottomk" | "topk" | "quantile" => {}
                    _ if call => {}
                    _ => {
                        out.insert(word.to_string());
                    }
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// What the rules and the dashboard read that is not a recorded series: (name, who reads it).
fn source_metrics() -> BTreeMap<String, Vec<String>> {
    let recorded = recorded();
    let dash = dashboard();
    let mut uses: Vec<(String, String)> = rules()
        .into_iter()
        .map(|(name, expr)| (format!("rule {name}"), expr))
        .collect();
    uses.extend(
        panel_queries(&dash)
            .into_iter()
            .map(|(t, e)| (format!("panel {t:?}"), e)),
    );
    uses.extend(
        variable_queries(&dash)
            .into_iter()
            .map(|(v, s, _)| (format!("variable {v}"), s)),
    );
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (who, expr) in uses {
        for name in metric_names(&expr) {
            if !recorded.contains(&name) {
                out.entry(name).or_default().push(who.clone());
            }
        }
    }
    out
}

// --- Tests without a mesh ----------------------------------------------------------------

#[test]
fn the_name_extraction_finds_metrics_and_only_metrics() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{x="y{z}", e!=""}[5m] offset 1m)))
           / on (job) group_left (instance) b:rec:rate1m{service=~"$service"} > bool 2 * 3600
           and c - time() < 1e6 or max without (le) (d) unless ${datasource}"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "b:rec:rate1m", "c", "d"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    assert_eq!(names, want);
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let rules = deployed("rules.yml");
    let (ok, said) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok, "promtool check rules refused rules.yml:\n{said}");
    let tests = deployed("rules_test.yml");
    let (ok, said) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(ok, "promtool test rules failed:\n{said}");
    // The unit tests check something: with the error ratio counting a proxy-made 503 twice
    // (5xx and a quiver-error), they fail.
    let dir = temp_dir("obs-broken-rules");
    let broken = read("rules.yml").replace(
        "          sum by (namespace, service, direction) (\n              rate(quiver_requests_total{status_class=\"5xx\"}[1m])\n            or\n",
        "          sum by (namespace, service, direction) (\n              rate(quiver_requests_total{status_class=\"5xx\"}[1m])\n            +\n",
    );
    assert_ne!(
        broken,
        read("rules.yml"),
        "the error rule is as this test expects"
    );
    std::fs::write(dir.join("rules.yml"), broken).unwrap();
    std::fs::copy(&tests, dir.join("rules_test.yml")).unwrap();
    let (ok, said) = promtool(&[
        "test",
        "rules",
        dir.join("rules_test.yml").to_str().unwrap(),
    ]);
    assert!(!ok, "the unit tests pass a wrong error ratio:\n{said}");
}

#[test]
fn the_dashboard_is_well_formed() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let defined: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    for want in ["datasource", "namespace", "service"] {
        assert!(defined.contains(want), "no ${want} variable: {defined:?}");
    }
    let ds = vars.iter().find(|v| v["name"] == "datasource").unwrap();
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");

    let all = panels(&dash);
    assert!(all.len() > 10, "{} panels", all.len());
    let mut ids = BTreeSet::new();
    for p in &all {
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel without id: {p}"));
        assert!(ids.insert(id), "panel id {id} used twice");
        let title = p["title"].as_str().unwrap_or("?");
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {title:?} does not use the datasource variable"
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "a query of panel {title:?} does not use the datasource variable"
            );
        }
    }

    // Every variable a query uses is defined, and the filters are used.
    let queries = panel_queries(&dash);
    assert!(!queries.is_empty());
    let mut used = BTreeSet::new();
    let texts = queries
        .iter()
        .map(|(_, e)| e.clone())
        .chain(variable_queries(&dash).into_iter().map(|(_, s, _)| s));
    for text in texts {
        let mut rest = text.as_str();
        while let Some(at) = rest.find('$') {
            rest = &rest[at + 1..];
            let name: String = rest
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with("__") {
                continue; // Grafana's own ($__rate_interval, ...)
            }
            assert!(
                defined.contains(name.as_str()),
                "${name} is used in {text:?} but not defined"
            );
            used.insert(name);
        }
    }
    for want in ["namespace", "service"] {
        assert!(used.contains(want), "no query filters by ${want}");
    }

    // Recorded series the dashboard reads are recorded by rules.yml.
    let recorded = recorded();
    let mut reads_records = 0;
    for (title, expr) in &queries {
        for name in metric_names(expr).into_iter().filter(|n| n.contains(':')) {
            assert!(
                recorded.contains(&name),
                "panel {title:?} reads {name}, which rules.yml does not record"
            );
            reads_records += 1;
        }
    }
    assert!(
        reads_records >= queries.len() / 2,
        "most panels should read the recording rules"
    );
}

// --- A running mesh ----------------------------------------------------------------------

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

/// `web` calls `reviews` (HTTP), `db` (TCP), and `ghost` and `cache`, which have no
/// endpoints (the proxy's own errors); each joined proxy a process, the control plane too,
/// with certificates that live 12 s.
struct TrafficMesh {
    _dir: PathBuf,
    cp: ControlPlane,
    proxies: Vec<MeshProxy>,
}

fn mesh_yaml(http_port: u16, tcp_port: u16) -> String {
    format!(
        r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http1, targetPort: {http_port}}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {http_port}}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: db, namespace: default}}
spec:
  ports: [{{name: sql, port: 5432, protocol: tcp, targetPort: {tcp_port}}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: ghost, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http1}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: cache, namespace: default}}
spec:
  ports: [{{name: tcp, port: 6379, protocol: tcp}}]
"#
    )
}

impl TrafficMesh {
    async fn start(test: &str) -> Self {
        quiver_tests::init_log();
        let dir = temp_dir(test);
        let db = Db::sqlite(&dir);
        // Short-lived certificates: proxies renew every 8 s, so the renewal series exist.
        let cp = ControlPlane::start(&db, &dir, &["--svid-ttl", "12s"]).await;
        let http_app = serve_http_echo("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let tcp_app = serve_tcp_echo("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        cp.apply(&mesh_yaml(http_app.port(), tcp_app.port())).await;
        let ca = cp.write_ca(&dir).await;
        let mut proxies = Vec::new();
        for (service, outbound) in [
            ("reviews", &[][..]),
            ("db", &[][..]),
            (
                "web",
                &[
                    ("reviews", "http1"),
                    ("db", "tcp"),
                    ("ghost", "http1"),
                    ("cache", "tcp"),
                ][..],
            ),
        ] {
            let token = cp.join_token("default", service, 1, "10m").await;
            proxies.push(
                MeshProxy::start(
                    &cp,
                    &ca,
                    &dir,
                    ProxySpec {
                        service,
                        token,
                        labels: &[],
                        outbound,
                        extra: &[],
                    },
                )
                .await,
            );
        }
        Self {
            _dir: dir,
            cp,
            proxies,
        }
    }

    fn web(&self) -> &MeshProxy {
        &self.proxies[2]
    }

    /// Requests that succeed, fail at the app and fail at the proxy; TCP tunnels that carry
    /// bytes and one that cannot open.
    async fn traffic(&self) {
        let web = self.web();
        let client: Client = quiver_tests::client::client(false);
        let get = |addr: SocketAddr, path: &str| {
            let uri = format!("http://{addr}{path}").parse().unwrap();
            let client = client.clone();
            async move {
                let resp = client.get(uri).await.expect("a response");
                let status = resp.status().as_u16();
                resp.into_body().collect().await.unwrap();
                status
            }
        };
        // The reviews endpoint reaches web's snapshot a moment after the proxy is ready.
        let reviews = web.outbound[0];
        quiver_tests::eventually(
            "web reaches reviews",
            Duration::from_secs(20),
            || async move { (get(reviews, "/hello").await == 200).then_some(()) },
        )
        .await;
        for _ in 0..20 {
            assert_eq!(get(reviews, "/hello").await, 200);
        }
        for code in [503, 404] {
            assert_eq!(get(reviews, &format!("/status/{code}")).await, code);
        }
        assert_eq!(
            get(web.outbound[2], "/").await,
            503,
            "ghost has no endpoint"
        );
        // A tunnel to db: the echo of what was sent ("" while web does not know db's endpoint).
        let db = web.outbound[1];
        let tunnel = || async move {
            let mut s = tokio::net::TcpStream::connect(db).await.unwrap();
            // A refused tunnel may close before the write: what comes back tells.
            let _ = s.write_all(b"select 1").await;
            let _ = s.shutdown().await;
            let mut back = Vec::new();
            let _ = s.read_to_end(&mut back).await;
            back
        };
        quiver_tests::eventually("web reaches db", Duration::from_secs(20), || async move {
            tunnel().await.starts_with(b"select 1").then_some(())
        })
        .await;
        for _ in 0..3 {
            let back = tunnel().await;
            assert!(back.starts_with(b"select 1"), "{back:?}");
        }
        // cache has no endpoint: the proxy closes the connection without a byte.
        let mut s = tokio::net::TcpStream::connect(web.outbound[3])
            .await
            .unwrap();
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back).await;
        assert!(back.is_empty());
    }

    /// [`TrafficMesh::traffic`] again and again, until the handle is dropped: so that
    /// every series, the errors' too, keeps growing while Prometheus scrapes.
    fn keep_traffic(&self) -> Background {
        let web = self.web().outbound.clone();
        Background(tokio::spawn(async move {
            let client: Client = quiver_tests::client::client(false);
            loop {
                for (addr, path) in [(web[0], "/hello"), (web[0], "/status/503"), (web[2], "/")] {
                    let uri = format!("http://{addr}{path}").parse().unwrap();
                    if let Ok(resp) = client.get(uri).await {
                        let _ = resp.into_body().collect().await;
                    }
                }
                for addr in [web[1], web[3]] {
                    if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                        let _ = s.write_all(b"select 1").await;
                        let _ = s.shutdown().await;
                        let _ = s.read_to_end(&mut Vec::new()).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    }

    /// Every `/metrics` of the mesh: the proxies' admin ports, the control plane's API port.
    fn targets(&self) -> (Vec<SocketAddr>, SocketAddr) {
        (self.proxies.iter().map(|p| p.admin).collect(), self.cp.api)
    }
}

/// The series names in Prometheus text (`_total`, `_bucket`, `_sum`, `_count` as scraped).
fn series_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

async fn scrape(addr: SocketAddr) -> BTreeSet<String> {
    let (status, text) = admin_get(addr, "/metrics").await.expect("scrape");
    assert_eq!(status, 200, "{addr}/metrics: {text}");
    series_names(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_rules_and_the_dashboard_read_is_exposed_by_a_running_mesh() {
    let wanted = source_metrics();
    // The names are found at all (the extraction works on these files).
    for name in [
        "quiver_requests_total",
        "quiver_request_duration_seconds_bucket",
        "quiver_quic_path_lost_packets_total",
        "quiver_api_calls_total",
    ] {
        assert!(wanted.contains_key(name), "{name} not found in the rules");
    }
    let mesh = TrafficMesh::start("obs-names").await;
    mesh.traffic().await;
    let (proxies, cp) = mesh.targets();
    // QUIC paths are first sampled 5 s into a connection: wait for every name, then say
    // which are missing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let mut exposed = scrape(cp).await;
        for p in &proxies {
            exposed.extend(scrape(*p).await);
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(name, _)| !exposed.contains(*name))
            .map(|(name, who)| format!("{name} (read by {})", who.join(", ")))
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "not in any /metrics of a running mesh:\n{}",
        missing.join("\n")
    );
}

/// A task aborted when this is dropped.
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// --- A real Prometheus ---------------------------------------------------------------------

/// A `prometheus` process, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// Scrape `proxies` (with the namespace target label a Kubernetes scrape would add) and
    /// `cp` every second, and evaluate rules.yml every second.
    async fn start(dir: &Path, proxies: &[SocketAddr], cp: SocketAddr) -> Self {
        let rules = read("rules.yml");
        let fast = rules.replace("interval: 30s", "interval: 1s");
        assert_ne!(fast, rules, "rules.yml groups set `interval: 30s`");
        std::fs::write(dir.join("rules.yml"), fast).unwrap();
        let list = |a: &[SocketAddr]| {
            a.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ['{rules}']
scrape_configs:
  - job_name: quiver-proxies
    static_configs: [{{targets: [{proxies}], labels: {{namespace: default}}}}]
  - job_name: quiver-control-plane
    static_configs: [{{targets: [{cp}]}}]
",
            rules = dir.join("rules.yml").display(),
            proxies = list(proxies),
            cp = list(&[cp]),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run prometheus: {e}\nprometheus is required: apt-get install -y \
                     --no-install-recommends prometheus"
                )
            });
        let mut p = Self { child, addr, log };
        quiver_tests::eventually("prometheus is ready", Duration::from_secs(30), || {
            let exited = p.child.try_wait().ok().flatten();
            assert!(exited.is_none(), "prometheus exited: {}", p.logs());
            async move { matches!(admin_get(addr, "/-/ready").await, Ok((200, _))).then_some(()) }
        })
        .await;
        p
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` of the HTTP API: its `data`.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = admin_get(self.addr, path).await.expect("prometheus API");
        let doc: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(doc["status"], "success", "{path} ({status}): {body}");
        doc["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", url_encode(expr)))
            .await;
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Poll `missing` (what is not there yet) every half second until it is empty or 60 s
/// have passed; what is still missing then.
async fn until_none_missing<F, Fut>(mut missing: F) -> Vec<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now_missing = missing().await;
        if now_missing.is_empty() || tokio::time::Instant::now() > deadline {
            return now_missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_evaluates_every_rule_and_answers_every_panel_on_a_running_mesh() {
    let mesh = TrafficMesh::start("obs-prometheus").await;
    let (proxies, cp) = mesh.targets();
    let dir = temp_dir("obs-prometheus-server");
    let prom = Prometheus::start(&dir, &proxies, cp).await;
    // Traffic once Prometheus scrapes, so that every counter grows under its eyes (a series
    // born with its only error has a rate of 0).
    mesh.traffic().await;
    let _traffic = mesh.keep_traffic();

    // Every rule evaluates without error (no many-to-many match, no bad function call).
    let rule_names: BTreeSet<String> = rules().into_iter().map(|(n, _)| n).collect();
    let (prom, rule_names) = (&prom, &rule_names);
    let unhealthy = until_none_missing(|| async move {
        let data = prom.api("/api/v1/rules").await;
        let mut seen = BTreeSet::new();
        let mut bad = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let name = rule["name"].as_str().unwrap_or("?").to_string();
                let health = rule["health"].as_str().unwrap_or("?");
                assert_ne!(health, "err", "rule {name}: {}", rule["lastError"]);
                if health == "ok" {
                    seen.insert(name);
                }
            }
        }
        for name in rule_names {
            if !seen.contains(name) {
                bad.push(format!("{name}: not evaluated yet"));
            }
        }
        bad
    })
    .await;
    assert!(unhealthy.is_empty(), "{unhealthy:#?}\n{}", prom.logs());

    // Every recorded series has data from this mesh.
    let recorded = &recorded();
    let empty = until_none_missing(|| async move {
        let mut empty = Vec::new();
        for name in recorded {
            if prom.query(name).await.is_empty() {
                empty.push(name.clone());
            }
        }
        empty
    })
    .await;
    assert!(
        empty.is_empty(),
        "recording rules with no result on a mesh with traffic: {empty:#?}"
    );

    // Every dashboard query, with "All" for the variables, answers with data; the variables
    // list this mesh's namespace and services.
    let dash = dashboard();
    let queries = &panel_queries(&dash);
    let no_data = until_none_missing(|| async move {
        let mut no_data = Vec::new();
        for (title, expr) in queries {
            let expr = expr.replace("$namespace", ".*").replace("$service", ".*");
            if prom.query(&expr).await.is_empty() {
                no_data.push(format!("{title}: {expr}"));
            }
        }
        no_data
    })
    .await;
    assert!(
        no_data.is_empty(),
        "dashboard queries without data: {no_data:#?}"
    );
    for (var, selector, label) in variable_queries(&dash) {
        let selector = selector.replace("$namespace", ".*");
        let values = prom
            .api(&format!(
                "/api/v1/label/{label}/values?match%5B%5D={}",
                url_encode(&selector)
            ))
            .await;
        let want = if var == "namespace" {
            "default"
        } else {
            "reviews"
        };
        assert!(
            values
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == want)),
            "variable {var} lists {values}, not {want}"
        );
    }

    // The error ratios are what the traffic was: every call to ghost failed (no endpoint),
    // some of those to reviews did (its app's 503s).
    let wrong = until_none_missing(|| async move {
        let mut wrong = Vec::new();
        for (expr, ok) in [
            (
                r#"service:quiver_request_errors:ratio_rate1m{service="ghost",direction="outbound"}"#,
                (|r: f64| r == 1.0) as fn(f64) -> bool,
            ),
            (
                r#"edge:quiver_request_errors:ratio_rate1m{source="web",service="ghost"}"#,
                |r| r == 1.0,
            ),
            (
                r#"service:quiver_request_errors:ratio_rate1m{service="reviews",direction="outbound"}"#,
                |r| r > 0.0 && r < 1.0,
            ),
        ] {
            let result = prom.query(expr).await;
            let value = match result.as_slice() {
                [one] => one["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()),
                _ => None,
            };
            if !value.is_some_and(ok) {
                wrong.push(format!("{expr} = {result:?}"));
            }
        }
        wrong
    })
    .await;
    assert!(wrong.is_empty(), "{wrong:#?}");
}
