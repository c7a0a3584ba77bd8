//! What the proxy reports: one record per request ([`record`]: metrics, access log, span),
//! trace context and span shipping ([`trace`]), and the Prometheus metrics ([`metrics`]).

pub mod metrics;
pub mod record;
pub mod trace;
