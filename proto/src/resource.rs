//! Resource kinds and the trait every resource message implements, so the store, the API and
//! the CLI handle all kinds with one code path.

use std::fmt;

use crate::v1;

/// The API version of Quiver's own documents.
pub const API_VERSION: &str = "quiver.dev/v1";

/// The API version of Gateway API documents (`HTTPRoute`, `GRPCRoute`), as rendered.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// The namespace used when a document names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A resource kind: the same word in proto, SQL, YAML and the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    MeshConfig,
    Service,
    AuthorizationPolicy,
    Route,
    Canary,
    Workload,
    /// Gateway API `HTTPRoute` attached to Services (`gateway.networking.k8s.io/v1`).
    HttpRoute,
    /// Gateway API `GRPCRoute` attached to Services (`gateway.networking.k8s.io/v1`).
    GrpcRoute,
}

impl Kind {
    /// Every kind, in the order a multi-document apply writes them (referenced kinds first).
    pub const ALL: [Kind; 8] = [
        Kind::MeshConfig,
        Kind::Service,
        Kind::AuthorizationPolicy,
        Kind::Route,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::Canary,
        Kind::Workload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MeshConfig => "MeshConfig",
            Kind::Service => "Service",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Route => "Route",
            Kind::Canary => "Canary",
            Kind::Workload => "Workload",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
        }
    }

    /// The `apiVersion` its documents carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::HttpRoute | Kind::GrpcRoute => GATEWAY_API_VERSION,
            _ => API_VERSION,
        }
    }

    /// Whether a document of this kind may carry `api_version`: Quiver's own kinds only
    /// theirs; Gateway API routes also the older versions whose shape is the same
    /// (`v1beta1` for HTTPRoute, `v1alpha2` for GRPCRoute).
    pub fn accepts_api_version(self, api_version: &str) -> bool {
        match self {
            Kind::HttpRoute => matches!(
                api_version,
                GATEWAY_API_VERSION | "gateway.networking.k8s.io/v1beta1"
            ),
            Kind::GrpcRoute => matches!(
                api_version,
                GATEWAY_API_VERSION | "gateway.networking.k8s.io/v1alpha2"
            ),
            _ => api_version == API_VERSION,
        }
    }

    /// The document `kind:` value, exactly as written (`Route`, not `route`).
    pub fn from_document(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// What an operator types on the command line: any case, singular or plural, short names.
    pub fn from_cli(s: &str) -> Option<Kind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "meshconfig" | "meshconfigs" | "mc" => Kind::MeshConfig,
            "service" | "services" | "svc" => Kind::Service,
            "authorizationpolicy" | "authorizationpolicies" | "authz" | "policy" | "policies" => {
                Kind::AuthorizationPolicy
            }
            "route" | "routes" | "rt" => Kind::Route,
            "canary" | "canaries" => Kind::Canary,
            "workload" | "workloads" | "wl" => Kind::Workload,
            "httproute" | "httproutes" => Kind::HttpRoute,
            "grpcroute" | "grpcroutes" => Kind::GrpcRoute,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource message: metadata + spec (+ status).
pub trait Resource:
    prost::Message + Default + Clone + PartialEq + serde::Serialize + serde::de::DeserializeOwned
{
    const KIND: Kind;

    fn metadata(&self) -> Option<&v1::ObjectMeta>;
    fn metadata_mut(&mut self) -> &mut v1::ObjectMeta;

    /// `namespace/name`, with the default namespace filled in.
    fn key(&self) -> String {
        let meta = self.metadata();
        let ns = meta.map(|m| m.namespace.as_str()).unwrap_or_default();
        let name = meta.map(|m| m.name.as_str()).unwrap_or_default();
        format!(
            "{}/{}",
            if ns.is_empty() { DEFAULT_NAMESPACE } else { ns },
            name
        )
    }

    /// Wrap into the [`AnyResource`] sum type.
    fn into_any(self) -> AnyResource;
}

macro_rules! resources {
    ($($ty:ident),*) => {
        $(
            impl Resource for v1::$ty {
                const KIND: Kind = Kind::$ty;
                fn metadata(&self) -> Option<&v1::ObjectMeta> {
                    self.metadata.as_ref()
                }
                fn metadata_mut(&mut self) -> &mut v1::ObjectMeta {
                    self.metadata.get_or_insert_with(Default::default)
                }
                fn into_any(self) -> AnyResource {
                    AnyResource::$ty(self)
                }
            }
        )*

        /// Any resource, for code that handles documents of mixed kinds.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(
            clippy::large_enum_variant,
            reason = "documents are handled one at a time, off the data path; a Canary with \
                      its status history is the largest"
        )]
        pub enum AnyResource {
            $($ty(v1::$ty)),*
        }

        impl AnyResource {
            pub fn kind(&self) -> Kind {
                match self {
                    $(AnyResource::$ty(_) => Kind::$ty),*
                }
            }

            pub fn metadata(&self) -> Option<&v1::ObjectMeta> {
                match self {
                    $(AnyResource::$ty(r) => r.metadata()),*
                }
            }

            pub fn key(&self) -> String {
                match self {
                    $(AnyResource::$ty(r) => r.key()),*
                }
            }

            /// The document body (metadata, spec, status) as a YAML value.
            pub fn to_yaml_value(&self) -> Result<serde_yaml::Value, serde_yaml::Error> {
                match self {
                    $(AnyResource::$ty(r) => serde_yaml::to_value(r)),*
                }
            }
        }
    };
}

resources!(
    MeshConfig,
    Service,
    AuthorizationPolicy,
    Route,
    Canary,
    Workload,
    HttpRoute,
    GrpcRoute
);
