#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed step fails the test"
)]

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

fn injector() -> Injector {
    Injector::new(InjectConfig::default(), "mesh.local")
}

fn injector_with(f: impl FnOnce(&mut InjectConfig)) -> Injector {
    let mut config = InjectConfig::default();
    f(&mut config);
    Injector::new(config, "mesh.local")
}

/// A Pod as the API server sends it at CREATE, with the opt-in label.
fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "catalog-v1-5d9f8c7b6-",
            "namespace": "shop",
            "labels": {
                "app": "catalog",
                "version": "v1",
                "pod-template-hash": "5d9f8c7b6",
                "quiver.dev/inject": "enabled",
            },
        },
        "spec": {
            "serviceAccountName": "catalog",
            "containers": [{
                "name": "catalog",
                "image": "example/catalog:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": 8081}},
            }],
        },
    })
}

fn review_of(object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0d6a4f5e-1b2c-4d3e-8f90-a1b2c3d4e5f6",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": object,
        },
    })
}

fn review(injector: &Injector, doc: &Value) -> Reviewed {
    injector
        .review(&serde_json::to_vec(doc).unwrap())
        .expect("a readable review")
}

fn response(r: &Reviewed) -> &Value {
    assert_eq!(r.document["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(r.document["kind"], "AdmissionReview");
    assert_eq!(
        r.document["response"]["uid"], "0d6a4f5e-1b2c-4d3e-8f90-a1b2c3d4e5f6",
        "the answer names the request"
    );
    &r.document["response"]
}

/// The patch operations of an allowed answer (None: allowed unchanged).
fn ops(r: &Reviewed) -> Option<Vec<Value>> {
    let resp = response(r);
    assert_eq!(resp["allowed"], true, "{resp}");
    let patch = resp.get("patch")?;
    assert_eq!(resp["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().unwrap())
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// The Pod after applying the answer's patch with the json-patch crate.
fn patched(injector: &Injector, object: Value) -> Value {
    let r = review(injector, &review_of(object.clone()));
    let ops = ops(&r).expect("a patch");
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
    let mut pod = object;
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    pod
}

/// The refusal message (asserting the answer's shape).
fn refusal(r: &Reviewed) -> String {
    let resp = response(r);
    assert_eq!(resp["allowed"], false, "{resp}");
    assert_eq!(resp["status"]["code"], 400);
    assert!(resp.get("patch").is_none());
    assert!(matches!(r.decision, Decision::Refused(_)));
    resp["status"]["message"].as_str().unwrap().to_string()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {container}"))
}

fn flag<'a>(command: &'a Value, name: &str) -> &'a str {
    let list = command.as_array().unwrap();
    let i = list
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("no {name} in {command}"));
    list[i + 1].as_str().unwrap()
}

/// [`pod`] without probes (the operations that concern probes are tested on their own).
fn pod_without_probes() -> Value {
    let mut object = pod();
    let app = object["spec"]["containers"][0].as_object_mut().unwrap();
    app.remove("readinessProbe");
    app.remove("livenessProbe");
    object
}

#[test]
fn a_labelled_pod_without_init_containers_volumes_or_annotations_gets_three_operations() {
    let r = review(&injector(), &review_of(pod_without_probes()));
    let ops = ops(&r).expect("a patch");
    let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/spec/initContainers",
            "/spec/volumes",
            "/metadata/annotations"
        ]
    );
    assert!(ops.iter().all(|o| o["op"] == "add"));
    assert_eq!(names(&ops[0]["value"]), ["quiver-capture", "quiver-proxy"]);
    assert_eq!(
        ops[1]["value"],
        json!([{"name": "quiver-trust-bundle", "configMap": {"name": "quiver-trust-bundle"}}])
    );
    assert_eq!(ops[2]["value"], json!({"quiver.dev/injected": "true"}));
    assert_eq!(
        r.decision,
        Decision::Injected {
            pod: "catalog-v1-5d9f8c7b6-*".into(),
            service: "catalog".into()
        }
    );
}

#[test]
fn the_proxy_is_a_native_sidecar_that_gates_the_app_on_readyz() {
    let pod = patched(&injector(), pod());
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(proxy["name"], "quiver-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["image"], DEFAULT_PROXY_IMAGE);
    let readyz = json!({"path": "/readyz", "port": 15020});
    assert_eq!(proxy["startupProbe"]["httpGet"], readyz);
    assert_eq!(proxy["readinessProbe"]["httpGet"], readyz);
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"], 1337);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(
        proxy["ports"],
        json!([
            {"name": "quiver-quic", "containerPort": 15443, "protocol": "UDP"},
            {"name": "quiver-admin", "containerPort": 15020, "protocol": "TCP"},
        ])
    );
    assert_eq!(
        proxy["volumeMounts"],
        json!([{"name": "quiver-trust-bundle", "mountPath": "/var/run/quiver/trust-bundle", "readOnly": true}])
    );
    let value = |name: &str| env(proxy, name)["value"].as_str().unwrap().to_string();
    assert_eq!(
        value("QUIVER_CONTROL_PLANE"),
        "quiver-control.quiver-system.svc:15010"
    );
    assert_eq!(
        value("QUIVER_CA_CERT"),
        "/var/run/quiver/trust-bundle/ca.pem"
    );
    assert_eq!(value("QUIVER_TRUST_DOMAIN"), "mesh.local");
    assert_eq!(value("QUIVER_SERVICE"), "catalog");
    // The opt-in label and the rollout's hash are not workload labels.
    assert_eq!(value("QUIVER_LABELS"), "app=catalog,version=v1");
    assert_eq!(value("QUIVER_ADVERTISE"), "$(POD_IP):15443");
    assert_eq!(value("QUIVER_QUIC_LISTEN"), "0.0.0.0:15443");
    assert_eq!(value("QUIVER_ADMIN_LISTEN"), "0.0.0.0:15020");
    assert_eq!(value("QUIVER_CAPTURE"), "true");
    assert_eq!(
        env(proxy, "QUIVER_JOIN_TOKEN")["valueFrom"],
        json!({"secretKeyRef": {"name": "quiver-join-catalog", "key": "token"}})
    );
    assert_eq!(
        env(proxy, "POD_IP")["valueFrom"],
        json!({"fieldRef": {"fieldPath": "status.podIP"}})
    );
    assert_eq!(
        env(proxy, "POD_NAMESPACE")["valueFrom"],
        json!({"fieldRef": {"fieldPath": "metadata.namespace"}})
    );
    // $(POD_IP) expands only from a variable defined before it.
    let order: Vec<&str> = names(&proxy["env"]);
    let at = |n: &str| order.iter().position(|e| *e == n).unwrap();
    assert!(at("POD_IP") < at("QUIVER_ADVERTISE"));
    // The app's own container is untouched but for its probes (tested below).
    let mut app = pod["spec"]["containers"][0].clone();
    let mut before = super::tests::pod()["spec"]["containers"][0].clone();
    for probe in ["readinessProbe", "livenessProbe"] {
        app.as_object_mut().unwrap().remove(probe);
        before.as_object_mut().unwrap().remove(probe);
    }
    assert_eq!(app, before);
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
}

#[test]
fn the_capture_step_runs_first_as_root_with_net_admin_and_excludes_what_must_not_be_captured() {
    let pod = patched(&injector(), pod());
    let capture = &pod["spec"]["initContainers"][0];
    assert_eq!(capture["name"], "quiver-capture");
    assert!(
        capture.get("restartPolicy").is_none(),
        "runs once, to completion"
    );
    let command = &capture["command"];
    assert_eq!(
        command.as_array().unwrap()[..3],
        [
            json!("/usr/local/bin/quiver-proxy"),
            json!("capture"),
            json!("install")
        ]
    );
    assert_eq!(flag(command, "--proxy-uid"), "1337");
    assert_eq!(flag(command, "--outbound-port"), "15002");
    assert_eq!(flag(command, "--inbound-port"), "15006");
    assert_eq!(flag(command, "--dns-port"), "15053");
    assert_eq!(flag(command, "--inbound-ports"), "*");
    // The sidecar's admin port; the app's probe ports stay captured (strict mode holds).
    assert_eq!(flag(command, "--exclude-inbound-ports"), "15020");
    // The control plane's port.
    assert_eq!(flag(command, "--exclude-outbound-ports"), "15010");
    assert!(
        !command
            .as_array()
            .unwrap()
            .contains(&json!("--exclude-cidrs"))
    );
    let sc = &capture["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["runAsNonRoot"], false);
    assert_eq!(
        sc["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
}

/// The rewritten probe the app's container gets.
fn asks_sidecar(path: &str, rest: Value) -> Value {
    let mut probe = rest;
    probe["httpGet"] = json!({"path": path, "port": 15020, "scheme": "HTTP"});
    probe
}

/// The originals the sidecar is given (`QUIVER_APP_PROBES`), or None.
fn originals(pod: &Value) -> Option<Value> {
    let proxy = &pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "quiver-proxy")
        .unwrap();
    let e = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "QUIVER_APP_PROBES")?;
    Some(serde_json::from_str(e["value"].as_str().unwrap()).unwrap())
}

#[test]
fn probes_to_captured_ports_ask_the_sidecar_which_checks_the_app_from_inside_the_pod() {
    let mut object = pod();
    let app = &mut object["spec"]["containers"][0];
    app["readinessProbe"] = json!({
        "httpGet": {"path": "ready", "port": "http", "scheme": "HTTP",
                    "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
        "periodSeconds": 3,
        "timeoutSeconds": 2,
    });
    app["startupProbe"] =
        json!({"grpc": {"port": 9090, "service": "catalog"}, "failureThreshold": 30});
    let r = review(&injector(), &review_of(object.clone()));
    assert!(
        response(&r).get("warnings").is_none(),
        "every probe is taken care of: {}",
        response(&r)
    );
    let pod = patched(&injector(), object);
    let app = &pod["spec"]["containers"][0];
    // Same timings, same kind of probe; kubelet now asks the admin port (never captured).
    assert_eq!(
        app["readinessProbe"],
        asks_sidecar(
            "/app-health/catalog/readyz",
            json!({"periodSeconds": 3, "timeoutSeconds": 2})
        )
    );
    assert_eq!(
        app["livenessProbe"],
        asks_sidecar("/app-health/catalog/livez", json!({}))
    );
    assert_eq!(
        app["startupProbe"],
        asks_sidecar(
            "/app-health/catalog/startupz",
            json!({"failureThreshold": 30})
        )
    );
    // The sidecar gets each original (its scheme kept), its named port resolved and its path
    // made absolute as kubelet would, with the probe's own timeout.
    assert_eq!(
        originals(&pod),
        Some(json!({
            "/app-health/catalog/readyz": {
                "httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP",
                            "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                "timeoutSeconds": 2,
            },
            "/app-health/catalog/livez": {"tcpSocket": {"port": 8081}},
            "/app-health/catalog/startupz": {"grpc": {"port": 9090, "service": "catalog"}},
        }))
    );
}

#[test]
fn a_probe_of_an_init_container_is_rewritten_where_it_ends_up() {
    // The Pod's own native sidecar: our two containers go in front of it, so the rewrite must
    // address it before they are inserted.
    let mut object = pod_without_probes();
    object["spec"]["initContainers"] = json!([{
        "name": "log-shipper",
        "image": "example/shipper:1",
        "restartPolicy": "Always",
        "ports": [{"containerPort": 9000}],
        "readinessProbe": {"httpGet": {"path": "/ok", "port": 9000}},
    }]);
    let pod = patched(&injector(), object);
    let init = &pod["spec"]["initContainers"];
    assert_eq!(
        names(init),
        ["quiver-capture", "quiver-proxy", "log-shipper"]
    );
    assert_eq!(
        init[2]["readinessProbe"],
        asks_sidecar("/app-health/log-shipper/readyz", json!({}))
    );
    assert_eq!(
        originals(&pod),
        Some(json!({"/app-health/log-shipper/readyz": {"httpGet": {"path": "/ok", "port": 9000}}}))
    );
}

#[test]
fn probes_that_are_not_rewritten_are_left_alone_and_named_when_strict_mode_refuses_them() {
    let warnings_and_pod = |f: &dyn Fn(&mut Value), injector: &Injector| {
        let mut object = pod();
        f(&mut object);
        let r = review(injector, &review_of(object.clone()));
        let w = response(&r).get("warnings").cloned();
        (w, patched(injector, object))
    };
    let untouched = |pod: &Value| {
        assert_eq!(
            pod["spec"]["containers"][0]["readinessProbe"],
            json!({"httpGet": {"path": "/ready", "port": "http"}})
        );
        assert_eq!(
            pod["spec"]["containers"][0]["livenessProbe"],
            json!({"tcpSocket": {"port": 8081}})
        );
    };
    // Opted out: kept; the HTTP probe is refused in strict mode, so it is named (a tcpSocket
    // probe passes, the inbound listener takes the connection).
    let (w, pod) = warnings_and_pod(
        &|o| o["metadata"]["annotations"] = json!({"quiver.dev/rewrite-app-probes": "false"}),
        &injector(),
    );
    untouched(&pod);
    assert_eq!(originals(&pod), None);
    assert_eq!(
        w,
        Some(json!([
            "quiver: \"catalog\" readinessProbe (httpGet) to captured port 8080: not \
             rewritten, and strict mode refuses kubelet's plaintext; see \
             quiver.dev/exclude-inbound-ports"
        ]))
    );
    // Ports capture does not cover: nothing to do.
    for annotations in [
        json!({"quiver.dev/exclude-inbound-ports": "8080,8081"}),
        json!({"quiver.dev/inbound-ports": "9090"}),
    ] {
        let (w, pod) = warnings_and_pod(
            &|o| o["metadata"]["annotations"] = annotations.clone(),
            &injector(),
        );
        untouched(&pod);
        assert_eq!((w, originals(&pod)), (None, None));
    }
    // Without capture nothing is refused.
    let (w, pod) = warnings_and_pod(&|_| {}, &injector_with(|c| c.capture = false));
    untouched(&pod);
    assert_eq!((w, originals(&pod)), (None, None));
    // Another host: not this Pod, left alone and not named. HTTPS: rewritten like HTTP; the
    // sidecar's check keeps the scheme (it probes the app over TLS, as kubelet would).
    let (w, pod) = warnings_and_pod(
        &|o| {
            o["spec"]["containers"][0]["readinessProbe"]["httpGet"]["scheme"] = json!("HTTPS");
            o["spec"]["containers"][0]["livenessProbe"]["tcpSocket"]["host"] = json!("10.0.0.9");
        },
        &injector(),
    );
    assert_eq!(w, None);
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"],
        asks_sidecar("/app-health/catalog/readyz", json!({}))
    );
    assert_eq!(
        pod["spec"]["containers"][0]["livenessProbe"],
        json!({"tcpSocket": {"port": 8081, "host": "10.0.0.9"}})
    );
    assert_eq!(
        originals(&pod),
        Some(json!({"/app-health/catalog/readyz":
            {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTPS"}}}))
    );
}

#[test]
fn existing_init_containers_volumes_and_annotations_are_kept_and_ours_go_first() {
    let mut object = pod_without_probes();
    object["metadata"]["annotations"] = json!({"owner": "team-a", "a/b~c": "x"});
    object["spec"]["initContainers"] = json!([{"name": "migrate", "image": "example/migrate:1"}]);
    object["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let r = review(&injector(), &review_of(object.clone()));
    let paths: Vec<String> = ops(&r)
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/initContainers/0",
            "/spec/initContainers/1",
            "/spec/volumes/-",
            "/metadata/annotations/quiver.dev~1injected",
        ]
    );
    let pod = patched(&injector(), object);
    assert_eq!(
        names(&pod["spec"]["initContainers"]),
        ["quiver-capture", "quiver-proxy", "migrate"]
    );
    assert_eq!(
        names(&pod["spec"]["volumes"]),
        ["data", "quiver-trust-bundle"]
    );
    assert_eq!(
        pod["metadata"]["annotations"],
        json!({"owner": "team-a", "a/b~c": "x", "quiver.dev/injected": "true"})
    );
}

#[test]
fn empty_and_null_arrays_are_handled_like_present_and_absent_ones() {
    let mut object = pod();
    object["spec"]["initContainers"] = json!([]);
    object["spec"]["volumes"] = Value::Null;
    object["metadata"]["annotations"] = json!({});
    let pod = patched(&injector(), object);
    assert_eq!(
        names(&pod["spec"]["initContainers"]),
        ["quiver-capture", "quiver-proxy"]
    );
    assert_eq!(names(&pod["spec"]["volumes"]), ["quiver-trust-bundle"]);
    assert_eq!(
        pod["metadata"]["annotations"],
        json!({"quiver.dev/injected": "true"})
    );
}

#[test]
fn pointer_tokens_escape_tilde_before_slash() {
    assert_eq!(pointer_token("quiver.dev/injected"), "quiver.dev~1injected");
    assert_eq!(pointer_token("a/b~c"), "a~1b~0c");
    // "~1" in a key is a tilde and a one, not a slash.
    assert_eq!(pointer_token("~1"), "~01");
    assert_eq!(pointer_token("plain"), "plain");
}

#[test]
fn pods_without_the_label_opted_out_or_already_injected_are_admitted_unchanged() {
    // (case, where in the Pod, the new value or None to remove it)
    let cases = [
        ("no label", "/metadata/labels/quiver.dev~1inject", None),
        ("no labels at all", "/metadata/labels", None),
        (
            "another value",
            "/metadata/labels/quiver.dev~1inject",
            Some(json!("disabled")),
        ),
        (
            "opted out",
            "/metadata/annotations",
            Some(json!({"sidecar.quiver.dev/inject": "false"})),
        ),
        (
            "already injected",
            "/metadata/annotations",
            Some(json!({"quiver.dev/injected": "true"})),
        ),
    ];
    for (case, pointer, value) in cases {
        let mut object = pod();
        set(&mut object, pointer, value);
        let r = review(&injector(), &review_of(object));
        assert_eq!(ops(&r), None, "{case}");
        assert!(
            matches!(r.decision, Decision::Untouched { .. }),
            "{case}: {:?}",
            r.decision
        );
        assert!(response(&r).get("patchType").is_none(), "{case}");
    }
}

/// Set (or, with None, remove) the member at a JSON pointer whose parent exists.
fn set(doc: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    let parent = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{pointer}: no parent"));
    match (parent, value) {
        (Value::Object(map), Some(v)) => {
            map.insert(key, v);
        }
        (Value::Object(map), None) => {
            map.remove(&key);
        }
        (Value::Array(list), Some(v)) => list[key.parse::<usize>().unwrap()] = v,
        (other, _) => panic!("{pointer}: cannot change {other}"),
    }
}

#[test]
fn an_opt_out_annotation_saying_true_does_not_opt_out() {
    let mut object = pod();
    object["metadata"]["annotations"] = json!({"sidecar.quiver.dev/inject": "true"});
    assert!(ops(&review(&injector(), &review_of(object))).is_some());
}

#[test]
fn operations_other_than_create_are_admitted_unchanged() {
    for operation in ["UPDATE", "DELETE", "CONNECT"] {
        let mut doc = review_of(pod());
        doc["request"]["operation"] = json!(operation);
        if operation == "DELETE" {
            doc["request"]["object"] = Value::Null;
        }
        let r = review(&injector(), &doc);
        assert_eq!(ops(&r), None, "{operation}");
    }
}

#[test]
fn the_settings_shape_the_patch() {
    let injector = injector_with(|c| {
        c.capture = false;
        c.proxy_image = "registry.example/quiver-proxy:9".into();
        c.pull_policy = "Always".into();
        c.control_plane = "cp.example:16000".into();
        c.trust_bundle_configmap = "mesh-ca".into();
        c.join_token_secret = "join-{service}-{serviceAccount}".into();
        c.label = "mesh=on".into();
    });
    let mut object = pod();
    object["metadata"]["labels"] =
        json!({"mesh": "on", "quiver.dev/service": "catalog-api", "app": "catalog"});
    let pod = patched(&injector, object);
    assert_eq!(names(&pod["spec"]["initContainers"]), ["quiver-proxy"]);
    let proxy = &pod["spec"]["initContainers"][0];
    assert_eq!(proxy["image"], "registry.example/quiver-proxy:9");
    assert_eq!(proxy["imagePullPolicy"], "Always");
    assert_eq!(
        env(proxy, "QUIVER_CONTROL_PLANE")["value"],
        "cp.example:16000"
    );
    assert_eq!(env(proxy, "QUIVER_SERVICE")["value"], "catalog-api");
    assert_eq!(env(proxy, "QUIVER_LABELS")["value"], "app=catalog");
    assert_eq!(
        env(proxy, "QUIVER_JOIN_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
        "join-catalog-api-catalog"
    );
    assert!(
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "QUIVER_CAPTURE")
    );
    assert_eq!(pod["spec"]["volumes"][0]["configMap"]["name"], "mesh-ca");
}

#[test]
fn capture_annotations_are_passed_on_and_checked() {
    let mut object = pod();
    object["metadata"]["annotations"] = json!({
        "quiver.dev/inbound-ports": "8080, 9090",
        "quiver.dev/exclude-inbound-ports": "9100",
        "quiver.dev/exclude-outbound-ports": "5432,6379",
        "quiver.dev/exclude-cidrs": "169.254.169.254, 10.96.0.0/12",
    });
    let pod = patched(&injector(), object);
    let command = &pod["spec"]["initContainers"][0]["command"];
    assert_eq!(flag(command, "--inbound-ports"), "8080,9090");
    assert_eq!(flag(command, "--exclude-inbound-ports"), "15020,9100");
    assert_eq!(flag(command, "--exclude-outbound-ports"), "15010,5432,6379");
    assert_eq!(
        flag(command, "--exclude-cidrs"),
        "169.254.169.254/32,10.96.0.0/12"
    );
    for (key, value) in [
        ("quiver.dev/inbound-ports", "http"),
        ("quiver.dev/exclude-inbound-ports", "0"),
        ("quiver.dev/exclude-outbound-ports", "70000"),
        ("quiver.dev/exclude-cidrs", "10.0.0.0/33"),
        ("quiver.dev/exclude-cidrs", "example.com"),
        // Capture's rules are IPv4 only.
        ("quiver.dev/exclude-cidrs", "fd00::/8"),
    ] {
        let mut object = super::tests::pod();
        object["metadata"]["annotations"] = json!({key: value});
        let message = refusal(&review(&injector(), &review_of(object)));
        assert!(
            message.contains(&format!("request.object.metadata.annotations[{key:?}]")),
            "{key}={value}: {message}"
        );
    }
}

#[test]
fn every_bad_request_gets_a_refusal_naming_the_field() {
    const POD: &str = "/request/object";
    const SPEC: &str = "/request/object/spec";
    const C0: &str = "/request/object/spec/containers/0";
    // (the field the refusal names, where in the review, the new value or None to remove it)
    let cases: Vec<(&str, String, Option<Value>)> = vec![
        (
            "apiVersion",
            "/apiVersion".into(),
            Some(json!("admission.k8s.io/v1beta1")),
        ),
        ("apiVersion", "/apiVersion".into(), None),
        ("kind", "/kind".into(), Some(json!("Pod"))),
        ("request.kind", "/request/kind".into(), None),
        (
            "request.kind",
            "/request/kind".into(),
            Some(json!({"group": "apps", "version": "v1", "kind": "Deployment"})),
        ),
        ("request.operation", "/request/operation".into(), None),
        ("request.object", POD.into(), None),
        ("request.object", POD.into(), Some(json!("a pod"))),
        ("request.object.metadata", format!("{POD}/metadata"), None),
        ("request.object.spec", SPEC.into(), None),
        ("request.object.spec", SPEC.into(), Some(json!([]))),
        (
            "request.object.metadata.labels",
            format!("{POD}/metadata/labels"),
            Some(json!(["app"])),
        ),
        (
            "request.object.metadata.labels[\"version\"]",
            format!("{POD}/metadata/labels/version"),
            Some(json!(1)),
        ),
        (
            "request.object.metadata.annotations",
            format!("{POD}/metadata/annotations"),
            Some(json!("x")),
        ),
        (
            "request.object.metadata.name",
            format!("{POD}/metadata/name"),
            Some(json!(7)),
        ),
        (
            "request.object.spec.serviceAccountName",
            format!("{SPEC}/serviceAccountName"),
            Some(json!({})),
        ),
        (
            "request.object.spec.hostNetwork",
            format!("{SPEC}/hostNetwork"),
            Some(json!("yes")),
        ),
        (
            "request.object.spec.hostNetwork",
            format!("{SPEC}/hostNetwork"),
            Some(json!(true)),
        ),
        (
            "request.object.spec.containers",
            format!("{SPEC}/containers"),
            None,
        ),
        (
            "request.object.spec.containers",
            format!("{SPEC}/containers"),
            Some(json!({})),
        ),
        (
            "request.object.spec.containers",
            format!("{SPEC}/containers"),
            Some(json!([])),
        ),
        (
            "request.object.spec.containers[0].name",
            format!("{C0}/name"),
            None,
        ),
        (
            "request.object.spec.containers[0].ports",
            format!("{C0}/ports"),
            Some(json!(8080)),
        ),
        (
            "request.object.spec.containers[0].ports[0].containerPort",
            format!("{C0}/ports/0/containerPort"),
            Some(json!("8080")),
        ),
        (
            "request.object.spec.containers[0].ports[0].containerPort",
            format!("{C0}/ports/0/containerPort"),
            Some(json!(70000)),
        ),
        (
            "request.object.spec.containers[0].readinessProbe.httpGet.port",
            format!("{C0}/readinessProbe/httpGet/port"),
            Some(json!("metrics")),
        ),
        (
            "request.object.spec.containers[0].livenessProbe.tcpSocket.port",
            format!("{C0}/livenessProbe/tcpSocket/port"),
            None,
        ),
        (
            "request.object.spec.initContainers",
            format!("{SPEC}/initContainers"),
            Some(json!("migrate")),
        ),
        (
            "request.object.spec.initContainers[0]",
            format!("{SPEC}/initContainers"),
            Some(json!([null])),
        ),
        (
            "request.object.spec.volumes[0].name",
            format!("{SPEC}/volumes"),
            Some(json!([{"emptyDir": {}}])),
        ),
        (
            "request.object.metadata.labels",
            format!("{POD}/metadata/labels/app"),
            None,
        ),
        (
            "request.object.metadata.labels[\"app\"]",
            format!("{POD}/metadata/labels/app"),
            Some(json!("Catalog_Service")),
        ),
        (
            "request.object.metadata.labels[\"quiver.dev/service\"]",
            format!("{POD}/metadata/labels/quiver.dev~1service"),
            Some(json!("-x")),
        ),
        (
            "request.object.spec",
            format!("{C0}/name"),
            Some(json!("quiver-proxy")),
        ),
        (
            "request.object.spec",
            format!("{SPEC}/initContainers"),
            Some(json!([{"name": "quiver-capture"}])),
        ),
        (
            "request.object.spec",
            format!("{C0}/ports/0/containerPort"),
            Some(json!(15020)),
        ),
        (
            "request.object.spec.volumes",
            format!("{SPEC}/volumes"),
            Some(json!([{"name": "quiver-trust-bundle", "emptyDir": {}}])),
        ),
        (
            "request.object.spec.serviceAccountName",
            format!("{SPEC}/serviceAccountName"),
            Some(json!("Not_A_Name")),
        ),
    ];
    for (field, pointer, value) in cases {
        let mut doc = review_of(pod());
        set(&mut doc, &pointer, value);
        let message = refusal(&review(&injector(), &doc));
        assert!(
            message.starts_with(&format!("quiver sidecar injector: {field}: ")),
            "{pointer}: expected a refusal naming {field}, got {message:?}"
        );
    }
}

#[test]
fn refusals_quote_the_request_only_so_far() {
    let mut object = pod();
    object["metadata"]["labels"]["app"] = json!("é".repeat(100_000));
    let message = refusal(&review(&injector(), &review_of(object)));
    assert!(message.len() < 600, "{} bytes", message.len());
    assert!(message.ends_with("..."));
}

#[test]
fn a_body_without_a_readable_uid_is_unreadable() {
    let cases: [&[u8]; 9] = [
        b"",
        b"not json",
        b"{\"apiVersion\": ",
        b"[]",
        b"{}",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"kind":"Pod"}}}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":42}}"#,
    ];
    for body in cases {
        let err = injector().review(body).expect_err("unreadable");
        let text = String::from_utf8_lossy(body);
        assert!(
            err.0.starts_with("the body is not JSON")
                || err.0.starts_with("request: ")
                || err.0.starts_with("request.uid: "),
            "{text}: {err}"
        );
    }
}

#[test]
fn no_prefix_of_a_review_makes_the_injector_panic() {
    // Every truncation of a real review, and every single-byte corruption of it: each gets
    // an answer or an Unreadable, and a readable uid always gets a well-formed answer.
    let mut object = pod();
    object["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    let body = serde_json::to_vec(&review_of(object)).unwrap();
    for end in 0..body.len() {
        let _ = injector().review(&body[..end]);
    }
    for i in 0..body.len() {
        for b in [b'"', b'{', b'0', b'x', b'\\'] {
            let mut bad = body.clone();
            bad[i] = b;
            if let Ok(r) = injector().review(&bad) {
                let resp = &r.document["response"];
                assert!(resp["uid"].is_string() && resp["allowed"].is_boolean());
            }
        }
    }
}

#[test]
fn the_settings_are_checked_when_parsed() {
    assert!(host_port("quiver-control.quiver-system.svc:15010").is_ok());
    assert!(host_port("10.0.0.1:15010").is_ok());
    assert!(host_port("[fd00::1]:15010").is_ok());
    for bad in [
        "quiver-control",
        ":15010",
        "host:0",
        "host:http",
        "[fd00::1:15010",
    ] {
        assert!(host_port(bad).is_err(), "{bad}");
    }
    assert_eq!(
        port_of("quiver-control.quiver-system.svc:15010"),
        Some(15010)
    );
    assert!(secret_pattern("quiver-join-{serviceAccount}").is_ok());
    assert!(secret_pattern("{service}.{serviceAccount}").is_ok());
    assert!(secret_pattern("quiver-join-{namespace}").is_err());
    assert!(secret_pattern("Quiver-{service}").is_err());
    assert!(label_pair("quiver.dev/inject=enabled").is_ok());
    for bad in ["quiver.dev/inject", "=enabled", "k=", "k=v=w"] {
        assert!(label_pair(bad).is_err(), "{bad}");
    }
    assert!(object_name("quiver-trust-bundle").is_ok());
    assert!(object_name("Trust").is_err());
    // The flags reach the config, with their environment variables' names.
    let config = <crate::server::Config as clap::Parser>::try_parse_from([
        "quiver-control",
        "--inject-proxy-image",
        "img:1",
        "--inject-capture",
        "false",
        "--inject-label",
        "mesh=yes",
    ])
    .unwrap();
    assert_eq!(config.inject.proxy_image, "img:1");
    assert!(!config.inject.capture);
    assert_eq!(config.inject.label, "mesh=yes");
    assert_eq!(
        config.inject.control_plane,
        InjectConfig::default().control_plane
    );
    assert!(
        <crate::server::Config as clap::Parser>::try_parse_from([
            "quiver-control",
            "--inject-join-token-secret",
            "{pod}",
        ])
        .is_err()
    );
}
