//! Shared test fixtures: a private Postgres database per test, SQLite in a temp dir, polling.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use quiver_control::store::{PgStore, SqliteStore, Store};
use sqlx::Connection;

pub const INSTALL_HINT: &str = "Postgres is required for these tests: \
    `apt-get install -y postgresql && pg_ctlcluster 15 main start` \
    (or point QUIVER_TEST_DATABASE_URL at a server where the user may CREATE DATABASE)";

pub fn base_url() -> String {
    std::env::var("QUIVER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A uniquely named database, dropped (with its connections) when this value is dropped, even
/// when the test panics.
pub struct PgTestDb {
    pub url: String,
    pub name: String,
}

impl PgTestDb {
    pub async fn create() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "quiver_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let base = base_url();
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("cannot reach Postgres at {base}: {e}\n{INSTALL_HINT}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}\n{INSTALL_HINT}"));
        let _ = conn.close().await;
        let url = match base.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{name}"),
            None => panic!("QUIVER_TEST_DATABASE_URL {base:?} has no /database part"),
        };
        Self { url, name }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        Arc::new(
            PgStore::connect(&self.url)
                .await
                .expect("connect test database"),
        )
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived runtime on its own thread does it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&base_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

pub struct SqliteTestDb {
    pub dir: tempfile::TempDir,
}

impl SqliteTestDb {
    pub fn create() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        Arc::new(
            SqliteStore::open_dir(self.dir.path())
                .await
                .expect("open sqlite store"),
        )
    }
}

/// Poll `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
