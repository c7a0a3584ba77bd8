//! The proxy status rows (`store/proxies.rs`) against real Postgres and real SQLite: reports
//! replace what a proxy runs, the latest pushed version only moves forward, the kept snapshot
//! is reported back so it is written once per version, rows go with their workload.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::sync::Arc;

use common::{PgTestDb, SqliteTestDb};
use quiver_control::store::{ProxyStatusRecord, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_rows_on_postgres() {
    let db = PgTestDb::create().await;
    rows(db.store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_rows_on_sqlite() {
    let db = SqliteTestDb::create();
    rows(db.store().await).await;
}

fn report(workload: &str, applied: i64, latest: i64, at: i64) -> ProxyStatusRecord {
    ProxyStatusRecord {
        namespace: "shop".into(),
        workload: workload.into(),
        spiffe_id: "spiffe://mesh.local/ns/shop/sa/reviews".into(),
        service: "reviews".into(),
        proxy_version: "0.1.0".into(),
        applied_version: applied,
        applied_at: at,
        refused_version: 0,
        refused_reason: String::new(),
        cert_expires_at: 1_900_000_000,
        last_seen: at,
        latest_version: latest,
        latest_since: at,
        snapshot_version: 0,
    }
}

async fn rows(s: Arc<dyn Store>) {
    let id = "spiffe://mesh.local/ns/shop/sa/reviews";
    // First report: no snapshot kept yet.
    assert_eq!(
        s.put_proxy_report(&report("r-1", 5, 5, 1000))
            .await
            .unwrap(),
        0
    );
    s.put_proxy_snapshot("shop", "r-1", 5, b"snap-5")
        .await
        .unwrap();
    s.put_proxy_report(&report("r-2", 5, 5, 1000))
        .await
        .unwrap();
    s.put_proxy_report(&report("other", 5, 5, 1000))
        .await
        .unwrap();

    // A push to the identity moves both of its proxies' latest forward, once.
    s.note_pushed(id, "reviews", 7, 2000).await.unwrap();
    s.note_pushed(id, "reviews", 6, 3000).await.unwrap();
    s.note_pushed(id, "ratings", 9, 3000).await.unwrap();
    let rows = s.proxy_statuses(Some("shop")).await.unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
    assert_eq!(names, ["other", "r-1", "r-2"]);
    for r in &rows {
        assert_eq!(
            (r.applied_version, r.latest_version, r.latest_since),
            (5, 7, 2000),
            "{r:?}"
        );
    }

    // A later report with an older "latest" (another replica had not seen the push) keeps
    // the newer one; a new applied version restarts applied_at; the kept snapshot comes back.
    let mut next = report("r-1", 7, 5, 4000);
    next.refused_version = 6;
    next.refused_reason = "routes[0]: 'quoted' reason".into();
    assert_eq!(s.put_proxy_report(&next).await.unwrap(), 5);
    s.put_proxy_snapshot("shop", "r-1", 7, b"snap-7")
        .await
        .unwrap();
    let (row, bytes) = s.proxy_status("shop", "r-1").await.unwrap().unwrap();
    assert_eq!(
        (
            row.applied_version,
            row.applied_at,
            row.latest_version,
            row.snapshot_version
        ),
        (7, 4000, 7, 7)
    );
    assert_eq!(row.refused_reason, "routes[0]: 'quoted' reason");
    assert_eq!(bytes, b"snap-7");
    // The same applied version again keeps applied_at.
    assert_eq!(
        s.put_proxy_report(&report("r-1", 7, 7, 5000))
            .await
            .unwrap(),
        7
    );
    let (row, _) = s.proxy_status("shop", "r-1").await.unwrap().unwrap();
    assert_eq!((row.applied_at, row.last_seen), (4000, 5000));
    // No snapshot kept: empty bytes.
    let (_, bytes) = s.proxy_status("shop", "r-2").await.unwrap().unwrap();
    assert!(bytes.is_empty());

    s.delete_proxy_status("shop", "r-1").await.unwrap();
    assert!(s.proxy_status("shop", "r-1").await.unwrap().is_none());
    assert_eq!(s.proxy_statuses(None).await.unwrap().len(), 2);
    assert!(s.proxy_statuses(Some("none")).await.unwrap().is_empty());
}
