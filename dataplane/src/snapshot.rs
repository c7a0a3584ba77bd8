//! The in-memory config the data path runs on, and the pure decisions made over it.
//!
//! A [`Snapshot`] comes from the static file or from the control plane's watch stream; both
//! produce this one type. The decisions that need no runtime state (which service a request
//! is for, which identity an endpoint must prove, which local app port an inbound request
//! maps to) are functions here, without sockets or clocks, so they are tested on their own.
//! Choosing among a service's endpoints needs runtime state: that is [`crate::proxy::upstream`]'s.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use quiver_api::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::errors::ProxyError;
use quiver_api::validate::FieldError;
use quiver_policy::balance::Workload;
use quiver_policy::plan::{Policy, PolicyConfig};
use quiver_policy::services::{Services, Unknown};
use quiver_policy::{Labels, Subset};

/// What the app behind a port speaks; decides how the inbound side talks to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 without TLS (h2c, prior knowledge).
    Http2,
    /// gRPC: HTTP/2 with trailers; the same wire handling as `http2`.
    Grpc,
    /// Opaque bytes; carried as an HTTP/3 CONNECT stream.
    Tcp,
}

impl Protocol {
    /// The API's name for it (`ServicePort.protocol`).
    pub fn from_name(name: &str) -> Option<Protocol> {
        Some(match name {
            "http1" => Protocol::Http1,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "tcp" => Protocol::Tcp,
            _ => return None,
        })
    }

    /// The API's name for it: what [`Protocol::from_name`] reads, and the metric label.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }

    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }
}

/// A port of a service this proxy fronts, and where its app listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalPort {
    pub service: String,
    pub port: u16,
    pub protocol: Protocol,
    pub app: SocketAddr,
}

/// A remote service's peer proxy: where to send, who it must prove to be, and the labels
/// and zone that subsets and locality select on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub identity: SpiffeId,
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub zone: String,
}

/// A service this proxy may call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemoteService {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// The endpoints as the balancer sees them (built once per snapshot).
    #[serde(skip)]
    pub workloads: Vec<Workload>,
    /// The Service's virtual IP: captured app connections to it come here (docs/deploy.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_ip: Option<Ipv4Addr>,
    /// Its declared ports and what each speaks: how a captured connection to the virtual IP
    /// is carried (empty when the config does not say; then only explicit listeners and the
    /// HTTP proxy listener reach it).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, Protocol>,
}

impl RemoteService {
    pub fn new(name: String, endpoints: Vec<Endpoint>, subsets: Vec<Subset>) -> Self {
        let workloads = endpoints
            .iter()
            .map(|e| Workload {
                address: e.address,
                labels: e.labels.clone(),
                zone: e.zone.clone(),
            })
            .collect();
        Self {
            name,
            endpoints,
            subsets,
            workloads,
            virtual_ip: None,
            ports: BTreeMap::new(),
        }
    }

    /// The same service reachable at `virtual_ip` on its declared `ports`.
    pub fn with_address(
        mut self,
        virtual_ip: Option<Ipv4Addr>,
        ports: BTreeMap<u16, Protocol>,
    ) -> Self {
        self.virtual_ip = virtual_ip;
        self.ports = ports;
        self
    }

    pub fn endpoint(&self, address: SocketAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.address == address)
    }
}

/// The dynamic part of a proxy's config.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Opaque version ("static" for a file; the control plane's version otherwise).
    pub version: String,
    /// The zone this proxy runs in ("" when unknown): locality prefers endpoints there.
    pub zone: String,
    pub inbound: Vec<LocalPort>,
    pub services: BTreeMap<String, RemoteService>,
    /// Routes, authorization and mesh defaults, as configured.
    pub policy_config: PolicyConfig,
    /// The same, compiled.
    #[serde(skip)]
    pub policy: Arc<Policy>,
    /// The deny-list: revoked SPIFFE id -> the notBefore (Unix seconds) below which its
    /// certificates are refused ([`crate::mesh::transport::Transport::set_revocations`]).
    pub revocations: BTreeMap<String, i64>,
    /// Virtual IP -> service name, for captured connections and mesh DNS.
    #[serde(skip)]
    by_address: HashMap<Ipv4Addr, String>,
}

impl Default for Snapshot {
    fn default() -> Self {
        // An empty policy always compiles; the expect documents that invariant.
        let policy = Policy::compile(
            &PolicyConfig::default(),
            &Services::new([], Unknown::Refuse),
        )
        .expect("the empty policy compiles");
        Self {
            version: String::new(),
            zone: String::new(),
            inbound: Vec::new(),
            services: BTreeMap::new(),
            policy_config: PolicyConfig::default(),
            policy: Arc::new(policy),
            revocations: BTreeMap::new(),
            by_address: HashMap::new(),
        }
    }
}

impl Snapshot {
    /// Assemble a snapshot, compiling its policy against the services' subsets; `unknown`
    /// says what a reference to a service not in `services` is (see
    /// `quiver_policy::services`). Every problem is returned with its field path; nothing is
    /// half-applied.
    pub fn build(
        version: String,
        zone: String,
        inbound: Vec<LocalPort>,
        services: BTreeMap<String, RemoteService>,
        policy_config: PolicyConfig,
        unknown: Unknown,
    ) -> Result<Self, Vec<FieldError>> {
        let index = Services::new(
            services
                .iter()
                .map(|(name, s)| (name.as_str(), s.subsets.as_slice())),
            unknown,
        );
        let mut policy = Policy::compile(&policy_config, &index);
        let mut by_address = HashMap::new();
        for (i, s) in services.values().enumerate() {
            let Some(ip) = s.virtual_ip else { continue };
            if let Some(other) = by_address.insert(ip, s.name.clone()) {
                let e = FieldError {
                    path: format!("services[{i}].virtualIp"),
                    reason: format!("{ip} is also the address of service {other}"),
                };
                match &mut policy {
                    Ok(_) => policy = Err(vec![e]),
                    Err(errs) => errs.push(e),
                }
            }
        }
        Ok(Self {
            version,
            zone,
            inbound,
            services,
            policy_config,
            policy: Arc::new(policy?),
            revocations: BTreeMap::new(),
            by_address,
        })
    }

    /// The service whose virtual IP is `ip`.
    pub fn service_at(&self, ip: Ipv4Addr) -> Option<&RemoteService> {
        self.by_address
            .get(&ip)
            .and_then(|name| self.services.get(name))
    }
}

/// The service (and optionally port) an outbound request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub port: Option<u16>,
}

impl Target {
    /// Read `name` or `name:port` from an HTTP authority (Host header, CONNECT target, or the
    /// mesh's `quiver-target` header).
    pub fn from_authority(authority: &str) -> Result<Target, ProxyError> {
        let bad = || ProxyError::NoRoute(format!("{authority:?} is not a mesh service name"));
        let (name, port) = match authority.rsplit_once(':') {
            Some((n, p)) => {
                let port: u16 = p.parse().map_err(|_| bad())?;
                if port == 0 {
                    return Err(bad());
                }
                (n, Some(port))
            }
            None => (authority, None),
        };
        quiver_api::validate::check_dns_label(name).map_err(|_| bad())?;
        Ok(Target {
            service: name.to_string(),
            port,
        })
    }

    /// `name` or `name:port`, as sent to the peer in `quiver-target` / the CONNECT authority.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.service),
            None => self.service.clone(),
        }
    }
}

impl Snapshot {
    /// The zone of the endpoint at `ip`, if this snapshot lists one there with a zone (for
    /// classing an inbound connection's path; a caller this proxy never calls is unknown).
    pub fn zone_of(&self, ip: std::net::IpAddr) -> Option<&str> {
        self.services
            .values()
            .flat_map(|s| &s.endpoints)
            .find(|e| e.address.ip() == ip && !e.zone.is_empty())
            .map(|e| e.zone.as_str())
    }

    /// The local app port an inbound request for `target` maps to. Without a port, the
    /// service must have exactly one.
    pub fn resolve_inbound(&self, target: &Target) -> Result<&LocalPort, ProxyError> {
        let mut ports = self.inbound.iter().filter(|p| p.service == target.service);
        match target.port {
            Some(port) => ports.find(|p| p.port == port).ok_or_else(|| {
                ProxyError::NoRoute(format!(
                    "service {:?} port {port} is not served here",
                    target.service
                ))
            }),
            None => {
                let first = ports.next().ok_or_else(|| {
                    ProxyError::NoRoute(format!("service {:?} is not served here", target.service))
                })?;
                if ports.next().is_some() {
                    return Err(ProxyError::NoRoute(format!(
                        "service {:?} has several ports here; name one",
                        target.service
                    )));
                }
                Ok(first)
            }
        }
    }
}

#[cfg(test)]
mod tests;
