use std::collections::BTreeMap;

use super::*;

fn snap() -> Snapshot {
    let ep = |a: &str, sa: &str| Endpoint {
        address: a.parse().unwrap(),
        identity: SpiffeId::parse(&format!("spiffe://mesh.local/ns/default/sa/{sa}")).unwrap(),
        labels: Default::default(),
        zone: String::new(),
    };
    let mut services = BTreeMap::new();
    services.insert(
        "reviews".to_string(),
        RemoteService::new(
            "reviews".into(),
            vec![
                ep("10.0.0.1:15443", "reviews"),
                ep("10.0.0.2:15443", "reviews-v2"),
            ],
            vec![],
        ),
    );
    services.insert(
        "empty".to_string(),
        RemoteService::new("empty".into(), vec![], vec![]),
    );
    let port = |service: &str, port: u16, protocol, app: &str| LocalPort {
        service: service.into(),
        port,
        protocol,
        app: app.parse().unwrap(),
    };
    Snapshot {
        version: "1".into(),
        inbound: vec![
            port("web", 8080, Protocol::Http1, "127.0.0.1:8080"),
            port("db", 5432, Protocol::Tcp, "127.0.0.1:5432"),
            port("db", 9187, Protocol::Http1, "127.0.0.1:9187"),
        ],
        services,
        ..Default::default()
    }
}

#[test]
fn authority_parsing() {
    assert_eq!(
        Target::from_authority("reviews:9080").unwrap(),
        Target {
            service: "reviews".into(),
            port: Some(9080)
        }
    );
    assert_eq!(Target::from_authority("reviews").unwrap().port, None);
    for bad in [
        "",
        "Reviews",
        "reviews:",
        "reviews:0",
        "reviews:99999",
        "a.b",
        "-x",
        "x:y",
    ] {
        let e = Target::from_authority(bad).unwrap_err();
        assert_eq!(e.reason(), "no-route", "{bad}");
    }
    let t = Target::from_authority("reviews:9080").unwrap();
    assert_eq!(t.authority(), "reviews:9080");
}

#[test]
fn inbound_maps_service_and_port_to_the_app() {
    let s = snap();
    let p = s
        .resolve_inbound(&Target::from_authority("web").unwrap())
        .unwrap();
    assert_eq!(p.app.to_string(), "127.0.0.1:8080");
    let p = s
        .resolve_inbound(&Target::from_authority("db:9187").unwrap())
        .unwrap();
    assert_eq!(p.protocol, Protocol::Http1);
    // Two ports and none named: ambiguous, refused rather than guessed.
    let e = s
        .resolve_inbound(&Target::from_authority("db").unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("several ports"), "{e}");
    let e = s
        .resolve_inbound(&Target::from_authority("web:9999").unwrap())
        .unwrap_err();
    assert_eq!(e.reason(), "no-route");
    let e = s
        .resolve_inbound(&Target::from_authority("reviews").unwrap())
        .unwrap_err();
    assert_eq!(e.reason(), "no-route");
}
