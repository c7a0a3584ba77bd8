//! A pushed `quiver.v1.ProxySnapshot` as the proxy receives it from `MeshDiscovery.Watch`:
//! protobuf bytes decoded (prost), then converted and compiled
//! (`quiver_proxy::control::pushed::snapshot`). Any bytes: no panic; a refused push names
//! the field of every error; an accepted one answers inbound lookups and plans a request
//! for each of its services without panicking.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use quiver_api::v1;
use quiver_policy::plan::Rolls;
use quiver_policy::route::RequestHead;
use quiver_proxy::control::pushed;
use quiver_proxy::snapshot::Target;

const APP_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fuzz_target!(|data: &[u8]| {
    let Ok(pushed) = v1::ProxySnapshot::decode(data) else {
        return;
    };
    let own = [
        SocketAddr::new(APP_HOST, 15000),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15001),
    ];
    let snapshot = match pushed::snapshot(&pushed, "zone-a", APP_HOST, &own) {
        Ok(s) => s,
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            for e in &errors {
                assert!(!e.path.is_empty(), "an error without a field path: {e}");
                assert!(!e.reason.is_empty(), "an error without a reason: {e}");
            }
            return;
        }
    };
    for port in &snapshot.inbound {
        assert!(
            !own.iter().any(|l| l.port() == port.app.port()),
            "an inbound port targets the sidecar's own listener: {port:?}"
        );
        let target = Target {
            service: port.service.clone(),
            port: Some(port.port),
        };
        let _ = snapshot.resolve_inbound(&target);
    }
    let headers = http::HeaderMap::new();
    let head = RequestHead {
        method: "GET",
        path: "/",
        query: None,
        headers: &headers,
    };
    // Fixed rolls, so a crash reproduces from its input alone.
    let rolls = Rolls {
        backend: 42,
        delay: 0.5,
        abort: 0.5,
        mirror: 0.5,
    };
    for name in snapshot.services.keys() {
        let _ = snapshot.policy.plan(name, &head, rolls);
    }
});
