//! What the demo runs, decided before anything starts: which ports each app and sidecar
//! uses (checked free, with an error naming the port and the flag to move it), and the mesh
//! it applies (Services, the catalog Route, AuthorizationPolicies, MeshConfig) as the YAML an
//! operator would write.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use anyhow::bail;

/// The namespace every demo resource lives in.
pub const NAMESPACE: &str = "demo";
/// catalog v2's app listens on this loopback address, v1's on 127.0.0.1: both use the port
/// the catalog Service names (`targetPort`), and sidecars forward to `--app-host:targetPort`.
pub const CATALOG_V2_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Ports used above `--port-base`.
pub const PORT_SPAN: u16 = 26;

/// One sidecar of the demo.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// `frontend`, `catalog-v1`, ...
    pub name: &'static str,
    pub service: &'static str,
    pub version: Option<&'static str>,
    pub app_host: Ipv4Addr,
    pub quic: u16,
    pub admin: u16,
    pub http_proxy: u16,
    /// Its outbound listener and the `SERVICE:PORT/PROTOCOL` behind it, if the app calls
    /// anything.
    pub outbound: Option<(u16, &'static str)>,
}

/// Every port of the demo.
#[derive(Debug, Clone)]
pub struct Ports {
    pub frontend_app: u16,
    pub catalog_app: u16,
    pub ratings_app: u16,
    pub sidecars: Vec<Sidecar>,
}

/// A sidecar's name, service, version label, app host, and what its app calls.
type SidecarSpec = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Ipv4Addr,
    Option<&'static str>,
);

const SIDECARS: [SidecarSpec; 4] = [
    (
        "frontend",
        "frontend",
        None,
        LOCALHOST,
        Some("catalog:80/http1"),
    ),
    (
        "catalog-v1",
        "catalog",
        Some("v1"),
        LOCALHOST,
        Some("ratings:9090/grpc"),
    ),
    (
        "catalog-v2",
        "catalog",
        Some("v2"),
        CATALOG_V2_HOST,
        Some("ratings:9090/grpc"),
    ),
    ("ratings", "ratings", None, LOCALHOST, None),
];

impl Ports {
    /// `base` > 0: fixed ports `base..base+PORT_SPAN`, each checked free. `base` == 0: free
    /// ports chosen by the OS (for tests and CI).
    pub fn plan(base: u16) -> anyhow::Result<Self> {
        Ok(Self::reserve(base)?.0)
    }

    /// [`Ports::plan`], with the ports chosen by the OS still held: the caller releases them
    /// (by dropping the [`Held`]) only after its own listeners on OS-chosen ports (the control
    /// plane's API and discovery) are bound, so the OS cannot hand one of the demo's ports to
    /// them in between (seen in CI: discovery and a sidecar's HTTP proxy on the same port).
    pub fn reserve(base: u16) -> anyhow::Result<(Self, Held)> {
        let mut picker = Picker {
            base,
            held: Vec::new(),
        };
        let frontend_app = picker.tcp(0, &[LOCALHOST], "frontend app")?;
        let catalog_app = picker.tcp(1, &[LOCALHOST, CATALOG_V2_HOST], "catalog apps")?;
        let ratings_app = picker.tcp(2, &[LOCALHOST], "ratings app")?;
        let mut sidecars = Vec::new();
        for (i, (name, service, version, app_host, calls)) in SIDECARS.into_iter().enumerate() {
            let first = 10 + 4 * i as u16;
            let quic = picker.udp(first, &format!("{name} sidecar QUIC"))?;
            let admin = picker.tcp(first + 1, &[LOCALHOST], &format!("{name} sidecar admin"))?;
            let http_proxy = picker.tcp(
                first + 2,
                &[LOCALHOST],
                &format!("{name} sidecar HTTP proxy"),
            )?;
            let outbound = match calls {
                Some(target) => Some((
                    picker.tcp(first + 3, &[LOCALHOST], &format!("{name} sidecar outbound"))?,
                    target,
                )),
                None => None,
            };
            sidecars.push(Sidecar {
                name,
                service,
                version,
                app_host,
                quic,
                admin,
                http_proxy,
                outbound,
            });
        }
        let ports = Self {
            frontend_app,
            catalog_app,
            ratings_app,
            sidecars,
        };
        Ok((
            ports,
            Held {
                _sockets: picker.held,
            },
        ))
    }
}

/// Sockets bound on the ports [`Ports::reserve`] chose; dropping it frees them for the
/// children that will bind them.
pub struct Held {
    _sockets: Vec<Box<dyn std::any::Any>>,
}

/// Finds ports; while planning with `base` 0 it holds every port it picked so that no two
/// picks collide (they are released when planning ends, just before the children bind them).
struct Picker {
    base: u16,
    held: Vec<Box<dyn std::any::Any>>,
}

impl Picker {
    fn port(&self, offset: u16) -> anyhow::Result<u16> {
        match self.base.checked_add(offset) {
            Some(p) if self.base.checked_add(PORT_SPAN - 1).is_some() => Ok(p),
            _ => bail!(
                "--port-base {}: the demo needs ports {}..{} (at most 65535)",
                self.base,
                self.base,
                u32::from(self.base) + u32::from(PORT_SPAN) - 1
            ),
        }
    }

    fn taken(&self, addr: SocketAddr, what: &str, e: std::io::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "port {} ({what}, {addr}) is not free: {e}. Pick another range with --port-base N \
             (the demo uses N..N+{}) or --port-base 0 for ports chosen by the OS",
            addr.port(),
            PORT_SPAN - 1
        )
    }

    /// A TCP port free on every one of `hosts`.
    fn tcp(&mut self, offset: u16, hosts: &[Ipv4Addr], what: &str) -> anyhow::Result<u16> {
        if self.base == 0 {
            // The OS picks on the first host; the same port must be free on the others too.
            for _ in 0..20 {
                let first = TcpListener::bind((hosts[0], 0))?;
                let port = first.local_addr()?.port();
                let others: Result<Vec<_>, _> = hosts[1..]
                    .iter()
                    .map(|h| TcpListener::bind((*h, port)))
                    .collect();
                if let Ok(others) = others {
                    self.held.push(Box::new(first));
                    self.held.push(Box::new(others));
                    return Ok(port);
                }
            }
            bail!("no TCP port free on all of {hosts:?} for {what}");
        }
        let port = self.port(offset)?;
        for h in hosts {
            let addr = SocketAddr::new(IpAddr::V4(*h), port);
            TcpListener::bind(addr).map_err(|e| self.taken(addr, what, e))?;
        }
        Ok(port)
    }

    fn udp(&mut self, offset: u16, what: &str) -> anyhow::Result<u16> {
        if self.base == 0 {
            let s = UdpSocket::bind((LOCALHOST, 0))?;
            let port = s.local_addr()?.port();
            self.held.push(Box::new(s));
            return Ok(port);
        }
        let port = self.port(offset)?;
        let addr = SocketAddr::new(IpAddr::V4(LOCALHOST), port);
        UdpSocket::bind(addr).map_err(|e| self.taken(addr, what, e))?;
        Ok(port)
    }
}

/// The SPIFFE id workloads of `service` run as.
pub fn spiffe_id(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{NAMESPACE}/sa/{service}")
}

/// The demo mesh: three Services, the catalog Route (90/10), who may call whom, and a
/// deny-by-default MeshConfig.
pub fn mesh_yaml(ports: &Ports, trust_domain: &str) -> String {
    let frontend = spiffe_id(trust_domain, "frontend");
    let catalog = spiffe_id(trust_domain, "catalog");
    format!(
        r#"# The Quiver demo mesh, applied by `quiver-demo` at start.
# Re-apply it (or an edited copy) with: quiverctl apply -f <this file>
apiVersion: quiver.dev/v1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  defaultPolicy: DENY          # zero trust: only what an AuthorizationPolicy allows gets through
  defaultTimeout: 5s
  svidTtl: 1h
  # Keep 10% of requests as traces (the mesh default is 1%): at the demo's 15 requests a second
  # the console's Traces page has fresh traces within a second or two. Errored requests and
  # requests slower than slowThreshold are kept whatever the percentage.
  tracing: {{samplingPercent: 10, slowThreshold: 500ms}}
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: frontend, namespace: {NAMESPACE}}}
spec:
  ports:
  - {{name: http, port: 80, protocol: http1, targetPort: {frontend_app}}}
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: catalog, namespace: {NAMESPACE}}}
spec:
  ports:
  - {{name: http, port: 80, protocol: http1, targetPort: {catalog_app}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: ratings, namespace: {NAMESPACE}}}
spec:
  ports:
  - {{name: grpc, port: 9090, protocol: grpc, targetPort: {ratings_app}}}
---
apiVersion: quiver.dev/v1
kind: AuthorizationPolicy
metadata: {{name: catalog, namespace: {NAMESPACE}}}
spec:
  service: catalog
  allow:
  - sources: ["{frontend}"]
    methods: [GET]
---
apiVersion: quiver.dev/v1
kind: AuthorizationPolicy
metadata: {{name: ratings, namespace: {NAMESPACE}}}
spec:
  service: ratings
  allow:
  - sources: ["{catalog}"]
    paths: ["/quiver.demo.Ratings/*"]
---
{route}"#,
        frontend_app = ports.frontend_app,
        catalog_app = ports.catalog_app,
        ratings_app = ports.ratings_app,
        route = route_yaml(90),
    )
}

/// The catalog Route with `v1` percent of requests to v1 and the rest to v2.
pub fn route_yaml(v1: u32) -> String {
    let v1 = v1.min(100);
    format!(
        r#"apiVersion: quiver.dev/v1
kind: Route
metadata: {{name: catalog, namespace: {NAMESPACE}}}
spec:
  service: catalog
  rules:
  - name: split
    backends:
    - {{subset: v1, weight: {v1}}}
    - {{subset: v2, weight: {v2}}}
    timeout: 3s
"#,
        v2 = 100 - v1
    )
}

/// The name of the canary [`canary_yaml`] writes.
pub const CANARY: &str = "catalog-v2";
/// How often the demo's sidecars report their request counts per destination subset (what
/// canaries are judged by): well under the canary's interval, so each check sees the step's
/// traffic (the proxy's default, 10s, is as long as the interval itself).
pub const EDGE_INTERVAL: &str = "2s";

/// A canary moving catalog from v1 to v2 in fast steps (a check every 10 s; about 40 s to
/// promote at the demo's 15 requests a second), and back to v1 after two failed checks.
pub fn canary_yaml() -> String {
    format!(
        r#"# A canary of catalog v2, written by `quiver-demo`. While it runs it owns the catalog
# Route's split: 10% of catalog's requests to v2, then 25%, 50% and 100% (Promoted), one step
# every 10s if v2 passes its check. A check needs at least 10 requests to v2 (at the demo's
# 15 requests a second the first step has about 15) and fails when fewer than 99% succeed or
# p99 is over 500ms; two failed checks in a row roll it back (RolledBack: all traffic to v1).
#
#   quiverctl apply -f <this file>
#   while sleep 2; do quiverctl get canary {CANARY} -n {NAMESPACE} -o wide; done
#
# Same spec, same phase: applying it again after it finished changes nothing. To run it again,
# `quiverctl delete canary {CANARY} -n {NAMESPACE}` first (the Route's 90/10 split is back),
# then apply.
apiVersion: quiver.dev/v1
kind: Canary
metadata: {{name: {CANARY}, namespace: {NAMESPACE}}}
spec:
  service: catalog
  stableSubset: v1
  canarySubset: v2
  steps: [10, 25, 50, 100]
  interval: 10s
  threshold: 2
  minRequests: 10
  successCriteria: {{minSuccessRate: 99, maxP99Latency: 500ms}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_api::resource::Kind;

    #[test]
    fn the_mesh_parses_and_validates_whole() {
        let ports = Ports {
            frontend_app: 15100,
            catalog_app: 15101,
            ratings_app: 15102,
            sidecars: vec![],
        };
        let docs = quiver_api::document::parse_documents(&mesh_yaml(&ports, "mesh.local"))
            .expect("demo mesh parses and validates");
        let kinds: Vec<Kind> = docs
            .iter()
            .map(quiver_api::resource::AnyResource::kind)
            .collect();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
        for split in [route_yaml(50), route_yaml(100), route_yaml(0)] {
            quiver_api::document::parse_documents(&split).expect("route parses");
        }
        assert!(route_yaml(90).contains("{subset: v2, weight: 10}"));
    }

    #[test]
    fn the_canary_parses_and_validates_against_the_demo_services() {
        let ports = Ports::plan(0).unwrap();
        let mesh = quiver_api::document::parse_documents(&mesh_yaml(&ports, "mesh.local"))
            .expect("demo mesh parses");
        let mut services = quiver_policy::validate::ServiceSpecs::new();
        for doc in &mesh {
            if let quiver_api::resource::AnyResource::Service(s) = doc {
                let name = s.metadata.clone().unwrap_or_default().name;
                services.insert(name, s.spec.clone().unwrap_or_default());
            }
        }
        assert_eq!(services.len(), 3);
        let docs =
            quiver_api::document::parse_documents(&canary_yaml()).expect("canary.yaml parses");
        assert_eq!(docs.len(), 1);
        let quiver_api::resource::AnyResource::Canary(c) = &docs[0] else {
            panic!("not a Canary: {:?}", docs[0].kind());
        };
        quiver_policy::validate::validate(&docs[0], &services)
            .unwrap_or_else(|e| panic!("canary.yaml does not validate: {e:?}"));
        let meta = c.metadata.clone().unwrap_or_default();
        assert_eq!(
            (meta.name.as_str(), meta.namespace.as_str()),
            (CANARY, NAMESPACE)
        );
        let spec = c.spec.clone().unwrap_or_default();
        assert_eq!(
            (
                spec.service.as_str(),
                spec.stable_subset.as_str(),
                spec.canary_subset.as_str()
            ),
            ("catalog", "v1", "v2")
        );
        let settings =
            quiver_policy::canary::Settings::from_spec(&spec).expect("the controller's settings");
        assert_eq!(settings.steps.last(), Some(&100));
        // Fast steps, and edge reports well inside each step.
        let edges = quiver_api::duration::parse(EDGE_INTERVAL).unwrap();
        assert!(settings.interval <= std::time::Duration::from_secs(15));
        assert!(
            edges * 4 <= settings.interval,
            "{edges:?} vs {:?}",
            settings.interval
        );
    }

    #[test]
    fn the_pods_mesh_is_the_demo_mesh() {
        // deploy/podman/demo.sh applies deploy/podman/mesh.yaml: the same mesh, with the
        // ports the apps listen on in their pods (each pod has its own loopback).
        let ports = Ports {
            frontend_app: 8080,
            catalog_app: 8080,
            ratings_app: 9090,
            sidecars: vec![],
        };
        let expected = mesh_yaml(&ports, "mesh.local");
        assert!(
            include_str!("../../deploy/podman/mesh.yaml") == expected,
            "deploy/podman/mesh.yaml is not the demo's mesh; write this into it:\n{expected}"
        );
    }

    #[test]
    fn a_taken_port_names_itself_and_the_flag() {
        let held = TcpListener::bind((LOCALHOST, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let Some(base) = port.checked_sub(2).filter(|b| *b > 0) else {
            return;
        };
        // base+2 is the ratings app's port.
        let e = Ports::plan(base).unwrap_err().to_string();
        assert!(e.contains("--port-base"), "{e}");
        if e.contains("ratings app") {
            assert!(e.contains(&format!("port {port} ")), "{e}");
        }
    }

    #[test]
    fn port_base_zero_picks_distinct_free_ports() {
        let p = Ports::plan(0).unwrap();
        let mut all = vec![p.frontend_app, p.catalog_app, p.ratings_app];
        for s in &p.sidecars {
            all.extend([s.admin, s.http_proxy]);
            all.extend(s.outbound.map(|(o, _)| o));
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "TCP ports must differ");
        assert_eq!(p.sidecars.len(), 4);
    }

    #[test]
    fn a_port_base_too_high_is_refused() {
        let e = Ports::plan(65530).unwrap_err().to_string();
        assert!(e.contains("--port-base 65530"), "{e}");
    }
}
