//! One store suite, run against real Postgres and real SQLite.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{PgTestDb, SqliteTestDb};
use quiver_api::resource::Kind;
use quiver_control::store::{
    ApiTokenRecord, CaRole, ChangeOp, Feed, JoinTokenRecord, Lease, PutOutcome, RedeemError,
    SealedCa, SpanRecord, Store, StoreError, now_ms,
};
use quiver_control::telemetry::blocks::{TraceQuery, search_traces, spans_of_traces};

/// Runs each suite function once per engine, each in a fresh database.
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::PgTestDb::create().await;
                    super::$name(&|| Box::pin(db.store())).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::SqliteTestDb::create();
                    super::$name(&|| Box::pin(db.store())).await;
                }
            )*
        }
    };
}

/// Opens another handle on the same database (another "process" for Postgres; a re-open with
/// migrations re-run for both).
type Open<'a> =
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Store>> + 'a>> + 'a;

both_engines!(
    crud,
    stale_version_conflicts,
    change_feed_delivers_every_change_in_order,
    concurrent_writers_lose_no_update,
    migrations_rerun_and_keep_data,
    sql_metacharacters_are_stored_verbatim,
    join_tokens_expire_and_run_out,
    api_tokens_and_ca,
    leases_renew_only_while_live_and_expire_with_their_workload,
);

async fn crud(open: &Open<'_>) {
    let s = open().await;
    let (created, outcome) = s
        .put(Kind::Route, "shop", "a", b"one".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Created);
    assert_eq!(created.resource_version, 1);
    let got = s.get(Kind::Route, "shop", "a").await.unwrap().unwrap();
    assert_eq!(got.body, b"one");
    assert_eq!(got.resource_version, 1);
    assert!(got.created_at > 0);

    let (same, outcome) = s
        .put(Kind::Route, "shop", "a", b"one".to_vec(), None)
        .await
        .unwrap();
    assert_eq!((outcome, same.resource_version), (PutOutcome::Unchanged, 1));
    let (updated, outcome) = s
        .put(Kind::Route, "shop", "a", b"two".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        (outcome, updated.resource_version),
        (PutOutcome::Updated, 2)
    );
    assert_eq!(updated.created_at, created.created_at);

    s.put(Kind::Route, "default", "b", b"x".to_vec(), None)
        .await
        .unwrap();
    s.put(Kind::Service, "shop", "a", b"svc".to_vec(), None)
        .await
        .unwrap();
    let (all, version) = s.list(Kind::Route, None).await.unwrap();
    let names: Vec<_> = all
        .iter()
        .map(|o| format!("{}/{}", o.namespace, o.name))
        .collect();
    assert_eq!(names, ["default/b", "shop/a"]);
    assert_eq!(version, 4);
    let (shop, _) = s.list(Kind::Route, Some("shop")).await.unwrap();
    assert_eq!(shop.len(), 1);

    let change = s.delete(Kind::Route, "shop", "a", None).await.unwrap();
    assert_eq!(change.op, ChangeOp::Delete);
    assert_eq!(change.resource_version, 5);
    assert_eq!(change.object.body, b"two");
    assert!(s.get(Kind::Route, "shop", "a").await.unwrap().is_none());
    assert!(matches!(
        s.delete(Kind::Route, "shop", "a", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.counts().await.unwrap().get("Route"), Some(&1));
}

async fn stale_version_conflicts(open: &Open<'_>) {
    let s = open().await;
    let (v1, _) = s
        .put(Kind::Route, "default", "r", b"1".to_vec(), None)
        .await
        .unwrap();
    let v1 = v1.resource_version;
    // Alice and Bob both read v1; Alice writes first.
    let (v2, _) = s
        .put(Kind::Route, "default", "r", b"alice".to_vec(), Some(v1))
        .await
        .unwrap();
    let err = s
        .put(Kind::Route, "default", "r", b"bob".to_vec(), Some(v1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { expected, current: Some(c), .. } if expected == v1 && c == v2.resource_version),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("changed since you read it"),
        "{err}"
    );
    assert_eq!(
        s.get(Kind::Route, "default", "r")
            .await
            .unwrap()
            .unwrap()
            .body,
        b"alice",
        "Bob's stale write must not land"
    );
    assert!(matches!(
        s.delete(Kind::Route, "default", "r", Some(v1)).await,
        Err(StoreError::Conflict { .. })
    ));
    // Updating something that was deleted since it was read is a conflict too.
    s.delete(Kind::Route, "default", "r", Some(v2.resource_version))
        .await
        .unwrap();
    assert!(matches!(
        s.put(
            Kind::Route,
            "default",
            "r",
            b"late".to_vec(),
            Some(v2.resource_version)
        )
        .await,
        Err(StoreError::Conflict { current: None, .. })
    ));
}

async fn change_feed_delivers_every_change_in_order(open: &Open<'_>) {
    let s = open().await;
    let feed = Feed::start(s.clone()).await.unwrap();
    let mut rx = feed.subscribe();
    let mut expected = Vec::new();
    for i in 0..40u32 {
        let name = format!("r{}", i % 7);
        if i % 5 == 4
            && s.get(Kind::Route, "default", &name)
                .await
                .unwrap()
                .is_some()
        {
            let c = s.delete(Kind::Route, "default", &name, None).await.unwrap();
            expected.push((c.resource_version, ChangeOp::Delete, name));
        } else {
            let (o, outcome) = s
                .put(
                    Kind::Route,
                    "default",
                    &name,
                    i.to_be_bytes().to_vec(),
                    None,
                )
                .await
                .unwrap();
            let op = if outcome == PutOutcome::Created {
                ChangeOp::Create
            } else {
                ChangeOp::Update
            };
            expected.push((o.resource_version, op, name));
        }
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let c = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("feed stalled")
            .expect("feed closed");
        got.push((c.resource_version, c.op, c.object.name.clone()));
    }
    assert_eq!(got, expected);
    let versions: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        versions,
        (1..=40).collect::<Vec<u64>>(),
        "no gaps, no reordering"
    );
}

async fn concurrent_writers_lose_no_update(open: &Open<'_>) {
    let s = open().await;
    s.put(Kind::Service, "default", "counter", b"0".to_vec(), None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..10 {
                loop {
                    let cur = s
                        .get(Kind::Service, "default", "counter")
                        .await
                        .unwrap()
                        .unwrap();
                    let n: u64 = String::from_utf8(cur.body).unwrap().parse().unwrap();
                    let next = (n + 1).to_string().into_bytes();
                    match s
                        .put(
                            Kind::Service,
                            "default",
                            "counter",
                            next,
                            Some(cur.resource_version),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let end = s
        .get(Kind::Service, "default", "counter")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8(end.body).unwrap(),
        "60",
        "{conflicts} conflicts retried"
    );
    assert_eq!(end.resource_version, 61);
}

async fn migrations_rerun_and_keep_data(open: &Open<'_>) {
    let s = open().await;
    s.put(Kind::MeshConfig, "default", "mesh", b"m".to_vec(), None)
        .await
        .unwrap();
    drop(s);
    let again = open().await;
    let again2 = open().await;
    assert_eq!(
        again
            .get(Kind::MeshConfig, "default", "mesh")
            .await
            .unwrap()
            .unwrap()
            .body,
        b"m"
    );
    assert_eq!(again2.current_version().await.unwrap(), 1);
}

async fn sql_metacharacters_are_stored_verbatim(open: &Open<'_>) {
    let s = open().await;
    let names = [
        "x'; DROP TABLE resources; --",
        "quote\"double",
        "back\\slash",
        "percent%_under",
        "$1 ?1 :name",
        "ünïcødé ✓",
    ];
    for n in names {
        s.put(Kind::Route, "default", n, n.as_bytes().to_vec(), None)
            .await
            .unwrap();
    }
    for n in names {
        let o = s.get(Kind::Route, "default", n).await.unwrap().unwrap();
        assert_eq!((o.name.as_str(), o.body.as_slice()), (n, n.as_bytes()));
    }
    let (all, _) = s.list(Kind::Route, Some("default")).await.unwrap();
    assert_eq!(all.len(), names.len());
    assert!(
        s.get(Kind::Route, "default", "percent%")
            .await
            .unwrap()
            .is_none()
    );
}

async fn join_tokens_expire_and_run_out(open: &Open<'_>) {
    let s = open().await;
    let now = now_ms();
    let token = |hash: &str, expires_at, max_uses| JoinTokenRecord {
        id: hash.to_uppercase(),
        token_hash: hash.into(),
        namespace: "shop".into(),
        service_account: "web".into(),
        expires_at,
        max_uses,
        uses: 0,
        created_at: now,
    };
    s.insert_join_token(&token("twice", now + 60_000, 2))
        .await
        .unwrap();
    s.insert_join_token(&token("old", now - 1, 5))
        .await
        .unwrap();
    let first = s.redeem_join_token("twice", now).await.unwrap();
    assert_eq!((first.namespace.as_str(), first.uses), ("shop", 1));
    s.redeem_join_token("twice", now).await.unwrap();
    assert!(matches!(
        s.redeem_join_token("twice", now).await,
        Err(RedeemError::UsedUp(2))
    ));
    assert!(matches!(
        s.redeem_join_token("old", now).await,
        Err(RedeemError::Expired)
    ));
    assert!(matches!(
        s.redeem_join_token("nope", now).await,
        Err(RedeemError::Unknown)
    ));
    let listed = s.list_join_tokens().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(s.revoke_join_token("OLD").await.unwrap());
    assert!(!s.revoke_join_token("OLD").await.unwrap());
    assert!(matches!(
        s.redeem_join_token("old", now).await,
        Err(RedeemError::Unknown)
    ));
}

async fn api_tokens_and_ca(open: &Open<'_>) {
    let s = open().await;
    assert_eq!(s.count_api_tokens().await.unwrap(), 0);
    let record = ApiTokenRecord {
        id: "t1".into(),
        token_hash: "h1".into(),
        role: "viewer".into(),
        description: "ci".into(),
        created_at: now_ms(),
        expires_at: now_ms() + 60_000,
    };
    s.insert_api_token(&record).await.unwrap();
    let grant = s.api_token("h1").await.unwrap().unwrap();
    assert_eq!(
        (grant.role.as_str(), grant.expires_at),
        ("viewer", record.expires_at)
    );
    assert_eq!(s.api_token("h2").await.unwrap(), None);
    assert_eq!(s.list_api_tokens().await.unwrap(), vec![record]);
    assert_eq!(
        s.revoke_api_token("t1").await.unwrap().as_deref(),
        Some("h1")
    );
    assert_eq!(s.api_token("h1").await.unwrap(), None, "revoked: gone");
    assert_eq!(s.revoke_api_token("t1").await.unwrap(), None);
    assert!(s.certificate_authority().await.unwrap().is_none());
    let first = s
        .init_certificate_authority("cert-a", "key-a")
        .await
        .unwrap();
    let second = s
        .init_certificate_authority("cert-b", "key-b")
        .await
        .unwrap();
    assert_eq!(first, ("cert-a".to_string(), "key-a".to_string()));
    assert_eq!(second, first, "the first CA stored wins");
    s.delete_certificate_authority().await.unwrap();
    assert!(s.certificate_authority().await.unwrap().is_none());

    // Sealed roots and intermediates: the first stored wins; a replacement applies only over
    // the one the caller saw.
    let sealed = |c: &str| SealedCa {
        cert_pem: c.into(),
        key_sealed: format!("v1:sealed-{c}"),
    };
    assert!(s.ca_key(CaRole::Root).await.unwrap().is_none());
    let root = s
        .init_ca_key(CaRole::Root, &sealed("root-a"))
        .await
        .unwrap();
    assert_eq!(
        s.init_ca_key(CaRole::Root, &sealed("root-b"))
            .await
            .unwrap(),
        root
    );
    let inter = s
        .init_ca_key(CaRole::Intermediate, &sealed("int-a"))
        .await
        .unwrap();
    assert_eq!(inter, sealed("int-a"));
    let replaced = s
        .replace_ca_key(CaRole::Intermediate, &inter, &sealed("int-b"))
        .await
        .unwrap();
    assert_eq!(replaced, sealed("int-b"));
    let stale = s
        .replace_ca_key(CaRole::Intermediate, &inter, &sealed("int-c"))
        .await
        .unwrap();
    assert_eq!(
        stale,
        sealed("int-b"),
        "a replica that saw an older one loses"
    );
    assert_eq!(s.ca_key(CaRole::Root).await.unwrap(), Some(root));
}

/// Two replicas on one Postgres: a write through one reaches the other's feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_share_the_change_feed() {
    let db = PgTestDb::create().await;
    let a = db.store().await;
    let b = db.store().await;
    let feed_b = Feed::start(b.clone()).await.unwrap();
    let mut rx = feed_b.subscribe();
    let (o, _) = a
        .put(Kind::Route, "default", "from-a", b"x".to_vec(), None)
        .await
        .unwrap();
    let c = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("replica b never saw replica a's write")
        .unwrap();
    assert_eq!(
        (c.object.name.as_str(), c.resource_version),
        ("from-a", o.resource_version)
    );
}

async fn leases_renew_only_while_live_and_expire_with_their_workload(open: &Open<'_>) {
    let s = open().await;
    let id = "spiffe://mesh.local/ns/shop/sa/reviews";
    let now = now_ms();
    s.put_lease(&Lease {
        namespace: "shop".into(),
        name: "w".into(),
        spiffe_id: id.into(),
        expires_at: now + 1_000,
    })
    .await
    .unwrap();
    s.put(Kind::Workload, "shop", "w", b"body".to_vec(), None)
        .await
        .unwrap();
    let before = s.current_version().await.unwrap();

    // Renewal moves no version; another identity cannot renew.
    assert!(
        s.renew_lease("shop", "w", id, now + 5_000, now)
            .await
            .unwrap()
    );
    assert!(
        !s.renew_lease(
            "shop",
            "w",
            "spiffe://mesh.local/ns/shop/sa/web",
            now + 9_000,
            now
        )
        .await
        .unwrap()
    );
    assert_eq!(s.current_version().await.unwrap(), before);
    assert!(s.lapsed_leases(now + 4_000).await.unwrap().is_empty());
    // Not lapsed yet: nothing happens.
    assert!(
        s.expire_workload("shop", "w", now + 4_000)
            .await
            .unwrap()
            .is_none()
    );

    // Lapsed: cannot be renewed, and expiring deletes the workload through the feed.
    assert!(
        !s.renew_lease("shop", "w", id, now + 20_000, now + 6_000)
            .await
            .unwrap()
    );
    let lapsed = s.lapsed_leases(now + 6_000).await.unwrap();
    assert_eq!(lapsed.len(), 1);
    assert_eq!(lapsed[0].spiffe_id, id);
    let change = s
        .expire_workload("shop", "w", now + 6_000)
        .await
        .unwrap()
        .expect("the workload is deleted");
    assert_eq!(change.op, ChangeOp::Delete);
    assert_eq!(change.resource_version, before + 1);
    assert!(s.get(Kind::Workload, "shop", "w").await.unwrap().is_none());
    assert!(s.leases(None).await.unwrap().is_empty());
    // A second sweep (another replica) finds nothing.
    assert!(
        s.expire_workload("shop", "w", now + 6_000)
            .await
            .unwrap()
            .is_none()
    );
    let feed = s.changes_since(before, 10).await.unwrap();
    assert_eq!(feed.len(), 1);
}

/// Spans stored before the block store (migration 0005) survive the upgrade: the database
/// is left at migration 0004 with spans in the old `spans` table, the upgraded store moves
/// them into blocks, and reads find every field as stored.
async fn old_spans_move_into_blocks(store: Arc<dyn Store>, spans: &[SpanRecord], now: i64) {
    let moved = quiver_control::telemetry::sweeper::convert_legacy(store.as_ref())
        .await
        .unwrap();
    assert_eq!(moved, spans.len() as u64);
    assert_eq!(
        quiver_control::telemetry::sweeper::convert_legacy(store.as_ref())
            .await
            .unwrap(),
        0,
        "the old table is gone"
    );
    let t1 = spans[0].trace_id.clone();
    let got = spans_of_traces(store.as_ref(), std::slice::from_ref(&t1))
        .await
        .unwrap();
    assert_eq!(got, spans[..2].to_vec(), "every field as stored");
    let q = TraceQuery {
        errors_only: true,
        start_ns: now - 60_000_000_000,
        end_ns: now + 1,
        limit: 20,
        ..Default::default()
    };
    assert_eq!(search_traces(store.as_ref(), &q).await.unwrap(), [t1]);
    let all = TraceQuery {
        limit: 200,
        errors_only: false,
        ..q
    };
    assert_eq!(
        search_traces(store.as_ref(), &all).await.unwrap().len(),
        200
    );
    let sizes = store.span_block_sizes().await.unwrap();
    assert_eq!(
        sizes.iter().map(|(_, n)| n).sum::<i64>(),
        spans.len() as i64
    );
    assert!(sizes.iter().all(|(_, n)| *n <= 256), "{sizes:?}");
}

/// Two traces (one with an error) and 5,000 one-span fillers: more than a conversion page
/// (4,096), so paging is exercised. `now` in Unix ns.
fn old_spans(now: i64) -> Vec<SpanRecord> {
    let old = |trace: String, span: &str, service: &str, start_ns: i64, status: i32| SpanRecord {
        trace_id: trace,
        span_id: span.into(),
        parent_span_id: String::new(),
        kind: "SERVER".into(),
        namespace: "shop".into(),
        service: service.into(),
        peer_service: "web".into(),
        peer_identity: "spiffe://mesh.local/ns/shop/sa/web".into(),
        name: "GET /items".into(),
        route: "items".into(),
        start_ns,
        duration_ns: 7_000_000,
        status_code: status,
        error: String::new(),
        is_error: status >= 500,
        attempt: 2,
        request_bytes: 11,
        response_bytes: 22,
        quic_connection_id: "00112233aabbccdd".into(),
        endpoint: "10.0.0.9:80".into(),
        reporter: format!("spiffe://mesh.local/ns/shop/sa/{service}"),
    };
    let (t1, t2) = (format!("{:032x}", 0xa1), format!("{:032x}", 0xa2));
    let mut spans = vec![
        old(t1.clone(), "00000000000000b1", "catalog", now - 5_000, 200),
        old(t1, "00000000000000b2", "ratings", now - 4_000, 503),
        old(t2, "00000000000000b3", "catalog", now - 3_000, 200),
    ];
    for i in 0..5_000u32 {
        spans.push(old(
            format!("{:032x}", 0x1000 + i),
            "00000000000000c1",
            "filler",
            now - 10_000_000 - i64::from(i),
            200,
        ));
    }
    spans
}

/// INSERTs of `spans` into the table migration 0004 left (every span in segment 0), as SQL
/// text (test values only: hex, names, numbers).
fn old_inserts(spans: &[SpanRecord]) -> String {
    let text = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut sql = String::new();
    for chunk in spans.chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|s| {
                format!(
                    "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, 0)",
                    text(&s.trace_id),
                    text(&s.span_id),
                    text(&s.parent_span_id),
                    text(&s.kind),
                    text(&s.namespace),
                    text(&s.service),
                    text(&s.peer_service),
                    text(&s.peer_identity),
                    text(&s.name),
                    text(&s.route),
                    s.start_ns,
                    s.duration_ns,
                    s.status_code,
                    text(&s.error),
                    if s.is_error { "TRUE" } else { "FALSE" },
                    s.attempt,
                    s.request_bytes,
                    s.response_bytes,
                    text(&s.quic_connection_id),
                    text(&s.endpoint),
                    text(&s.reporter),
                )
            })
            .collect();
        sql.push_str(&format!(
            "INSERT INTO spans (trace_id, span_id, parent_span_id, kind, namespace, service, \
             peer_service, peer_identity, name, route, start_ns, duration_ns, status_code, \
             error, is_error, attempt, request_bytes, response_bytes, quic_connection_id, \
             endpoint, reporter, segment) VALUES {};\n",
            rows.join(", ")
        ));
    }
    sql
}

/// The migrations up to 0004 of `engine` ("sqlite" or "postgres").
async fn migrations_to_0004(engine: &str) -> sqlx::migrate::Migrator {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../migrations/{engine}"));
    let mut m = sqlx::migrate::Migrator::new(dir).await.unwrap();
    let upto: Vec<_> = m
        .migrations
        .iter()
        .filter(|m| m.version <= 4)
        .cloned()
        .collect();
    assert_eq!(upto.len(), 4);
    m.migrations = upto.into();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_spans_move_into_blocks_on_sqlite() {
    let db = SqliteTestDb::create();
    let now = now_ms() * 1_000_000;
    let spans = old_spans(now);
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db.dir.path().join("quiver.db"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    migrations_to_0004("sqlite").await.run(&pool).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(old_inserts(&spans)))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    old_spans_move_into_blocks(db.store().await, &spans, now).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_spans_move_into_blocks_on_postgres() {
    let db = PgTestDb::create().await;
    let now = now_ms() * 1_000_000;
    let spans = old_spans(now);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    migrations_to_0004("postgres")
        .await
        .run(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(old_inserts(&spans)))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    old_spans_move_into_blocks(db.store().await, &spans, now).await;
}
