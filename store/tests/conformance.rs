//! The `channels::testing` conformance suites against every backend: the memory defaults and the
//! Postgres implementations, in the same run.
//!
//! Run with `scripts/test` (it starts a throwaway Postgres and sets `DATABASE_URL`), or
//! `DATABASE_URL=postgres://… cargo test -p store --test conformance` against a server where the
//! user may create databases: each Postgres case runs in a database of its own, dropped at the end.

use std::sync::Arc;

use channels::Registry;
use channels::broker::{Broker, MemoryBroker};
use channels::sessions::{MemorySessionStore, SessionStore};
use channels::testing::{durable_broker_suite, session_store_suite};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use store::pg::{PgBroker, PgSessionStore};

fn memory_broker() -> Arc<MemoryBroker> {
    Arc::new(MemoryBroker::new(Arc::new(Registry::new(1024)), 1000))
}

#[tokio::test]
async fn memory_session_store_conforms() {
    session_store_suite(|| {
        let broker: Arc<dyn Broker> = memory_broker();
        Arc::new(MemorySessionStore::new(broker)) as Arc<dyn SessionStore>
    })
    .await;
}

#[tokio::test]
async fn memory_broker_conforms() {
    durable_broker_suite(|| memory_broker() as Arc<dyn Broker>).await;
}

#[tokio::test]
async fn postgres_session_store_conforms() {
    let db = TestDb::create().await;
    let pool = db.pool.clone();
    session_store_suite(move || {
        Arc::new(PgSessionStore::new(pool.clone())) as Arc<dyn SessionStore>
    })
    .await;
}

#[tokio::test]
async fn postgres_broker_conforms() {
    let db = TestDb::create().await;
    let epoch = store::pg::epoch(&db.pool)
        .await
        .expect("read the database epoch");
    let pool = db.pool.clone();
    durable_broker_suite(move || {
        Arc::new(PgBroker::new(
            pool.clone(),
            epoch.clone(),
            "conformance".into(),
        )) as Arc<dyn Broker>
    })
    .await;
}

/// The Postgres epoch names the database's history: two databases never share one, so a cursor
/// from one is "another epoch" in the other.
#[tokio::test]
async fn postgres_epochs_differ_per_database() {
    let a = TestDb::create().await;
    let b = TestDb::create().await;
    let ea = store::pg::epoch(&a.pool).await.expect("epoch of a");
    let eb = store::pg::epoch(&b.pool).await.expect("epoch of b");
    assert_ne!(ea, eb, "two databases got the same epoch");
    // Re-applying the migrations (every hub start does) keeps the epoch.
    let again = store::pg::connect(&a.url, 1)
        .await
        .expect("connect and migrate again");
    assert_eq!(
        store::pg::epoch(&again).await.expect("epoch again"),
        ea,
        "re-running migrations changed the epoch"
    );
}

// ---------------------------------------------------------------------------------------------
// A database per test
// ---------------------------------------------------------------------------------------------

/// A freshly created, migrated database on the `DATABASE_URL` server; dropped (with its
/// connections) when this value is dropped, also when the test panics.
struct TestDb {
    name: String,
    admin_url: String,
    url: String,
    pool: PgPool,
}

fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DATABASE_URL is not set, so the Postgres conformance tests cannot run. Run the tests \
             with `scripts/test` (it starts a throwaway Postgres), or set DATABASE_URL to a server \
             where this user may CREATE DATABASE."
        ),
    }
}

/// `url` with its database name replaced by `db` (query parameters kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    async fn create() -> Self {
        let admin_url = database_url();
        let name = format!("hub_conformance_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connect to DATABASE_URL ({admin_url}): {e}"));
        admin
            .execute(format!("create database {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = store::pg::connect(&url, 4)
            .await
            .unwrap_or_else(|e| panic!("connect to {name} and apply migrations: {e}"));
        Self {
            name,
            admin_url,
            url,
            pool,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be unwinding: use a runtime of our own
        // on another thread.
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                admin
                    .execute(format!("drop database if exists {name} with (force)").as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u@127.0.0.1:5432/hub_test", "x"),
        "postgres://u@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
}
