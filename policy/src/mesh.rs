//! Mesh-wide settings, compiled from `quiver.v1.MeshConfigSpec`: the authorization default
//! and cross-namespace rule, the request timeout of rules that set none, the certificate lifetime and tracing.
//!
//! It must not apply any of them: [`crate::authz`] reads the default, [`crate::plan`] the
//! timeout, the control plane's CA the lifetime and the proxy's telemetry the tracing rule.

use std::time::Duration;

use quiver_api::v1;
use quiver_api::validate::FieldError;

use crate::fields::{self, err};

/// The decision for requests no policy speaks about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DefaultPolicy {
    #[default]
    Allow,
    Deny,
}

/// What a serving proxy does with a caller from another namespace. The control plane offers
/// a proxy only the services of its own namespace; this is the same scope held at the callee,
/// where a caller that dials a proxy directly cannot get around it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CrossNamespace {
    /// Only an allow rule that names the caller in its `sources` admits it; rules without
    /// `sources` and the mesh default never do.
    #[default]
    Deny,
    /// Callers of other namespaces are judged like callers of the same namespace.
    Allow,
}

impl DefaultPolicy {
    /// The MeshConfig spelling (`defaultPolicy`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
        }
    }
}

impl CrossNamespace {
    /// The MeshConfig spelling (`crossNamespacePolicy`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
        }
    }
}

/// Mesh-wide settings (an unset MeshConfig compiles to the defaults).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    pub default_policy: DefaultPolicy,
    pub cross_namespace: CrossNamespace,
    /// Request timeout for rules that set none.
    pub default_timeout: Option<Duration>,
    /// Certificate lifetime (read by the control plane only).
    pub svid_ttl: Option<Duration>,
    /// Distributed tracing: head sampling and the tail rule.
    pub tracing: Tracing,
}

/// `tracing` of the MeshConfig.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracing {
    /// Share of traces kept by head sampling, percent (0-100); default 1.
    pub sampling_percent: Option<f64>,
    /// Requests at least this slow are kept whatever the sampling said; default 1s.
    pub slow_threshold: Option<Duration>,
}

/// The shortest certificate lifetime a MeshConfig may ask for.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(300);
/// The longest: a leaked SVID stays valid this long at most.
pub const MAX_SVID_TTL: Duration = Duration::from_secs(30 * 86_400);

impl Mesh {
    /// Compile `spec` (at `at`, e.g. `spec` or `mesh`), appending every problem to `errors`.
    pub fn compile(
        spec: &v1::MeshConfigSpec,
        at: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<Self> {
        let before = errors.len();
        let default_policy = match spec.default_policy.as_str() {
            "" | "ALLOW" => DefaultPolicy::Allow,
            "DENY" => DefaultPolicy::Deny,
            _ => {
                errors.push(err(format!("{at}.defaultPolicy"), "must be ALLOW or DENY"));
                DefaultPolicy::Allow
            }
        };
        let cross_namespace = match spec.cross_namespace_policy.as_str() {
            "" | "DENY" => CrossNamespace::Deny,
            "ALLOW" => CrossNamespace::Allow,
            _ => {
                errors.push(err(
                    format!("{at}.crossNamespacePolicy"),
                    "must be ALLOW or DENY",
                ));
                CrossNamespace::Deny
            }
        };
        let default_timeout = fields::duration(
            errors,
            &format!("{at}.defaultTimeout"),
            &spec.default_timeout,
            false,
        );
        let svid_ttl = fields::duration_up_to(
            errors,
            &format!("{at}.svidTtl"),
            &spec.svid_ttl,
            false,
            MAX_SVID_TTL,
        );
        if svid_ttl.is_some_and(|t| t < MIN_SVID_TTL) {
            errors.push(err(format!("{at}.svidTtl"), "must be at least 5m"));
        }
        let mut tracing = Tracing::default();
        if let Some(t) = &spec.tracing {
            let path = format!("{at}.tracing");
            if let Some(p) = t.sampling_percent {
                fields::percent(errors, &format!("{path}.samplingPercent"), p);
            }
            tracing = Tracing {
                sampling_percent: t.sampling_percent,
                slow_threshold: fields::duration(
                    errors,
                    &format!("{path}.slowThreshold"),
                    &t.slow_threshold,
                    false,
                ),
            };
        }
        (errors.len() == before).then_some(Self {
            default_policy,
            cross_namespace,
            default_timeout,
            svid_ttl,
            tracing,
        })
    }
}

impl Tracing {
    pub const DEFAULT_PERCENT: f64 = 1.0;
    pub const DEFAULT_SLOW: Duration = Duration::from_secs(1);

    /// The head-sampling rate, 0-1.
    pub fn rate(&self) -> f64 {
        self.sampling_percent.unwrap_or(Self::DEFAULT_PERCENT) / 100.0
    }

    /// The tail rule: requests at least this slow are kept.
    pub fn slow(&self) -> Duration {
        self.slow_threshold.unwrap_or(Self::DEFAULT_SLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<Mesh, Vec<(String, String)>> {
        let spec: v1::MeshConfigSpec = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        Mesh::compile(&spec, "mesh", &mut errors)
            .ok_or_else(|| errors.into_iter().map(|e| (e.path, e.reason)).collect())
    }

    #[test]
    fn unset_is_the_defaults() {
        let m = compile("{}").unwrap();
        assert_eq!(m, Mesh::default());
        assert_eq!(m.cross_namespace, CrossNamespace::Deny);
        assert_eq!(m.tracing.rate(), 0.01);
        assert_eq!(m.tracing.slow(), Duration::from_secs(1));
    }

    #[test]
    fn values_are_read_and_zero_sampling_is_kept() {
        let m = compile(
            "defaultPolicy: DENY\ncrossNamespacePolicy: ALLOW\ndefaultTimeout: 15s\nsvidTtl: 1h\ntracing: {samplingPercent: 0, slowThreshold: 250ms}\n",
        )
        .unwrap();
        assert_eq!(m.default_policy, DefaultPolicy::Deny);
        assert_eq!(m.cross_namespace, CrossNamespace::Allow);
        assert_eq!(m.default_timeout, Some(Duration::from_secs(15)));
        assert_eq!(m.svid_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(m.tracing.rate(), 0.0);
        assert_eq!(m.tracing.slow(), Duration::from_millis(250));
    }

    #[test]
    fn bad_values_are_named() {
        let e = compile(
            "defaultPolicy: deny\ncrossNamespacePolicy: open\ndefaultTimeout: soon\nsvidTtl: 1m\ntracing: {samplingPercent: 120, slowThreshold: -1s}\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "mesh.defaultPolicy",
                "mesh.crossNamespacePolicy",
                "mesh.defaultTimeout",
                "mesh.svidTtl",
                "mesh.tracing.samplingPercent",
                "mesh.tracing.slowThreshold"
            ]
        );
        assert_eq!(e[4].1, "120 is outside 0..100");
    }
}
