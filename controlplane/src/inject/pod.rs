//! What the injector reads of a Pod: labels, annotations, the service account, the names of
//! its containers, init containers and volumes, their declared ports and the ports their
//! probes use. Read from the JSON as sent (no typed Pod: every other field is left alone and
//! never round-tripped), each problem named by its field path in the AdmissionReview.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::Refusal;

/// The parts of a Pod the patch depends on.
#[derive(Debug, Default)]
pub(super) struct PodView {
    /// `metadata.name`, or `metadata.generateName` with a trailing `*` (for logs).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// None when the Pod has no `metadata.annotations` (the patch must create the map).
    pub annotations: Option<BTreeMap<String, String>>,
    /// `spec.serviceAccountName`, `default` when unset.
    pub service_account: String,
    pub host_network: bool,
    /// None when the Pod has no `spec.initContainers` (the patch must create the array).
    pub init_containers: Option<Vec<ContainerView>>,
    pub containers: Vec<ContainerView>,
    /// Volume names; None when the Pod has no `spec.volumes`.
    pub volumes: Option<Vec<String>>,
}

#[derive(Debug, Default)]
pub(super) struct ContainerView {
    pub name: String,
    /// Declared `ports[].containerPort`, with their names (probes may name them).
    pub ports: Vec<(Option<String>, u16)>,
    /// What kubelet probes: the startup, liveness and readiness probes' `httpGet`,
    /// `tcpSocket` and `grpc` handlers, named ports resolved against `ports`.
    pub probes: Vec<Probe>,
    /// Where the container is in the Pod, as a JSON pointer (`/spec/containers/0`).
    pub pointer: String,
}

/// One probe kubelet sends to a port of the Pod.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Probe {
    /// `readinessProbe`, ...
    pub probe: &'static str,
    /// `httpGet`, `tcpSocket` or `grpc`.
    pub handler: &'static str,
    pub port: u16,
    /// The whole probe as the Pod gives it (timings, the handler's other fields).
    pub raw: Map<String, Value>,
}

/// Where the Pod is in an AdmissionReview.
const OBJECT: &str = "request.object";

impl PodView {
    /// Read `request.object`.
    pub fn read(object: &Value) -> Result<Self, Refusal> {
        let pod = as_object(object, OBJECT)?;
        let metadata_path = format!("{OBJECT}.metadata");
        let metadata = match pod.get("metadata") {
            Some(m) => as_object(m, &metadata_path)?,
            None => return Err(Refusal::field(&metadata_path, "missing")),
        };
        let spec_path = format!("{OBJECT}.spec");
        let spec = match pod.get("spec") {
            Some(s) => as_object(s, &spec_path)?,
            None => return Err(Refusal::field(&spec_path, "missing")),
        };
        let name = match (
            opt_string(metadata, "name", &metadata_path)?,
            opt_string(metadata, "generateName", &metadata_path)?,
        ) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(g)) => format!("{g}*"),
            _ => String::new(),
        };
        let labels = string_map(metadata, "labels", &metadata_path)?.unwrap_or_default();
        let annotations = string_map(metadata, "annotations", &metadata_path)?;
        let service_account = opt_string(spec, "serviceAccountName", &spec_path)?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let host_network = match present(spec, "hostNetwork") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(Refusal::field(
                    &format!("{spec_path}.hostNetwork"),
                    "not a boolean",
                ));
            }
        };
        let containers = read_containers(spec, "containers", &spec_path)?.unwrap_or_default();
        if containers.is_empty() {
            return Err(Refusal::field(
                &format!("{spec_path}.containers"),
                "a Pod needs at least one container",
            ));
        }
        let init_containers = read_containers(spec, "initContainers", &spec_path)?;
        let volumes = match present(spec, "volumes") {
            None => None,
            Some(v) => {
                let path = format!("{spec_path}.volumes");
                let list = as_array(v, &path)?;
                let mut names = Vec::with_capacity(list.len());
                for (i, volume) in list.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    names.push(required_string(as_object(volume, &at)?, "name", &at)?);
                }
                Some(names)
            }
        };
        Ok(Self {
            name,
            labels,
            annotations,
            service_account,
            host_network,
            init_containers,
            containers,
            volumes,
        })
    }

    /// Every container of the Pod, init containers first.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerView> {
        self.init_containers
            .iter()
            .flatten()
            .chain(self.containers.iter())
    }
}

/// A member that is there and not `null` (Kubernetes clients send `null` for empty fields).
fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, Refusal> {
    v.as_object()
        .ok_or_else(|| Refusal::field(path, &format!("not an object ({})", type_of(v))))
}

fn as_array<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>, Refusal> {
    v.as_array()
        .ok_or_else(|| Refusal::field(path, &format!("not an array ({})", type_of(v))))
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn opt_string(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, Refusal> {
    match present(map, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(Refusal::field(
            &format!("{path}.{key}"),
            &format!("not a string ({})", type_of(v)),
        )),
    }
}

fn required_string(map: &Map<String, Value>, key: &str, path: &str) -> Result<String, Refusal> {
    match opt_string(map, key, path)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Refusal::field(&format!("{path}.{key}"), "missing")),
    }
}

/// A `map[string]string` (labels, annotations); None when absent.
fn string_map(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<BTreeMap<String, String>>, Refusal> {
    let Some(v) = present(map, key) else {
        return Ok(None);
    };
    let path = format!("{path}.{key}");
    let mut out = BTreeMap::new();
    for (k, v) in as_object(v, &path)? {
        match v {
            Value::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            other => {
                return Err(Refusal::field(
                    &format!("{path}[{k:?}]"),
                    &format!("not a string ({})", type_of(other)),
                ));
            }
        }
    }
    Ok(Some(out))
}

fn read_containers(
    spec: &Map<String, Value>,
    key: &str,
    spec_path: &str,
) -> Result<Option<Vec<ContainerView>>, Refusal> {
    let Some(v) = present(spec, key) else {
        return Ok(None);
    };
    let path = format!("{spec_path}.{key}");
    as_array(v, &path)?
        .iter()
        .enumerate()
        .map(|(i, c)| container(c, &format!("{path}[{i}]"), format!("/spec/{key}/{i}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn container(v: &Value, path: &str, pointer: String) -> Result<ContainerView, Refusal> {
    let map = as_object(v, path)?;
    let name = required_string(map, "name", path)?;
    let mut ports = Vec::new();
    if let Some(list) = present(map, "ports") {
        let list_path = format!("{path}.ports");
        for (i, p) in as_array(list, &list_path)?.iter().enumerate() {
            let at = format!("{list_path}[{i}]");
            let port_map = as_object(p, &at)?;
            let number = match present(port_map, "containerPort") {
                Some(n) => port_number(n, &format!("{at}.containerPort"))?,
                None => return Err(Refusal::field(&format!("{at}.containerPort"), "missing")),
            };
            ports.push((opt_string(port_map, "name", &at)?, number));
        }
    }
    let mut probes = Vec::new();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let Some(p) = present(map, probe) else {
            continue;
        };
        let probe_path = format!("{path}.{probe}");
        let probe_map = as_object(p, &probe_path)?;
        for handler in ["httpGet", "tcpSocket", "grpc"] {
            let Some(h) = present(probe_map, handler) else {
                continue;
            };
            let at = format!("{probe_path}.{handler}");
            let Some(port) = present(as_object(h, &at)?, "port") else {
                return Err(Refusal::field(&format!("{at}.port"), "missing"));
            };
            let at = format!("{at}.port");
            let number = match port {
                // A named port (httpGet, tcpSocket): one of the container's own.
                Value::String(name) => match name.parse::<u16>() {
                    Ok(n) if n > 0 => n,
                    _ => ports
                        .iter()
                        .find(|(n, _)| n.as_deref() == Some(name.as_str()))
                        .map(|(_, number)| *number)
                        .ok_or_else(|| {
                            Refusal::field(
                                &at,
                                &format!(
                                    "names port {name:?}, which the container does not declare"
                                ),
                            )
                        })?,
                },
                other => port_number(other, &at)?,
            };
            probes.push(Probe {
                probe,
                handler,
                port: number,
                raw: probe_map.clone(),
            });
        }
    }
    Ok(ContainerView {
        name,
        ports,
        probes,
        pointer,
    })
}

fn port_number(v: &Value, path: &str) -> Result<u16, Refusal> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| Refusal::field(path, &format!("{v} is not a port (1..65535)")))
}
