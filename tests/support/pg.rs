//! Postgres for the end-to-end tests: a database of its own per test on the `DATABASE_URL`
//! server, rows written the way an orchestrator writes them (plain SQL on the seed tables, the
//! triggers publish), and control over the throwaway server `scripts/test` started.
//!
//! Without `DATABASE_URL` every Postgres test fails at [`TestDb::create`] with a message saying
//! to run `scripts/test`, instead of passing without testing anything.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use uuid::Uuid;

use crate::{Bcast, WAIT, WsClient, now_secs, token, token_claims};

/// A freshly created database with the hub's migrations applied, on the `DATABASE_URL` server.
/// Dropped (its connections terminated) when this value is dropped, also when the test panics.
#[derive(Debug)]
pub struct TestDb {
    /// Database name (`hub_e2e_<random>`).
    pub name: String,
    /// URL of this database, for `TestHub::spawn_pg`.
    pub url: String,
    /// A pool on it (8 connections), for the test's own writes and reads.
    pub pool: PgPool,
    admin_url: String,
}

/// The `DATABASE_URL` the tests run against; panics with what to do when it is not set.
#[track_caller]
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DATABASE_URL is not set, so the Postgres tests cannot run. Run the tests with \
             `scripts/test` (it starts a throwaway Postgres), or set DATABASE_URL to a server \
             where this user may CREATE DATABASE."
        ),
    }
}

/// `url` with its database name replaced by `db` (query parameters kept).
pub fn with_database(url: &str, db: &str) -> String {
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

/// `realtime:build:<id>`, the wire topic of a build session.
pub fn build_topic(id: Uuid) -> String {
    format!("realtime:build:{id}")
}

/// A `service_role` token valid for an hour.
pub fn service_token() -> String {
    token("service_role", "orchestrator", 3600)
}

/// An `authenticated` user's token with `sub` = `user`, valid for an hour.
pub fn user_token(user: Uuid) -> String {
    token("authenticated", &user.to_string(), 3600)
}

/// The token the hub issues for a share link: `{"role":"anon","exp",…,"share_session":<id>}`.
pub fn share_token(session: Uuid) -> String {
    token_claims(&json!({
        "role": "anon",
        "exp": now_secs() + 3600,
        "share_session": session.to_string(),
    }))
}

impl TestDb {
    /// Creates and migrates a database named `hub_e2e_<random>` on the `DATABASE_URL` server.
    pub async fn create() -> Self {
        let admin_url = database_url();
        let name = format!("hub_e2e_{:016x}", rand::random::<u64>());
        let fut = async {
            let mut admin = PgConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("connect to DATABASE_URL ({admin_url}): {e}"));
            admin
                .execute(format!("create database {name}").as_str())
                .await
                .unwrap_or_else(|e| panic!("create database {name}: {e}"));
            let _ = admin.close().await;
            let url = with_database(&admin_url, &name);
            let pool = store::pg::connect(&url, 8)
                .await
                .unwrap_or_else(|e| panic!("connect to {name} and apply migrations: {e}"));
            (url, pool)
        };
        let (url, pool) = tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .expect("timed out after 30 s creating a test database");
        Self {
            name,
            url,
            pool,
            admin_url,
        }
    }

    /// The database's history epoch (every cursor of a durable topic starts with it).
    pub async fn epoch(&self) -> String {
        sqlx::query_scalar("select value from hub.meta where key = 'epoch'")
            .fetch_one(&self.pool)
            .await
            .expect("read hub.meta epoch")
    }

    /// Inserts a `queued` build session owned by `owner`, as an orchestrator would; its trigger
    /// publishes the initial `status` event (offset 1 of its topic). Returns the session id.
    pub async fn session(&self, owner: Option<Uuid>) -> Uuid {
        sqlx::query_scalar(
            "insert into public.build_sessions (status, template, vibe_text, created_by)
             values ('queued', 'saas', 'e2e test build', $1) returning id",
        )
        .bind(owner)
        .fetch_one(&self.pool)
        .await
        .expect("insert a build session")
    }

    /// Inserts one timeline row in its own transaction; returns its id.
    pub async fn event(&self, session: Uuid, kind: &str, message: &str, payload: &Value) -> Uuid {
        insert_event(&self.pool, session, kind, message, payload)
            .await
            .unwrap_or_else(|e| panic!("insert a {kind} event into session {session}: {e}"))
    }

    /// Sets a session's status (its trigger publishes a `status` event when it changes).
    pub async fn set_status(&self, session: Uuid, status: &str) {
        sqlx::query("update public.build_sessions set status = $2 where id = $1")
            .bind(session)
            .bind(status)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("set the status of {session} to {status}: {e}"));
    }

    /// The ids of a session's committed timeline rows, in the order the outbox numbered them.
    pub async fn event_ids_in_seq_order(&self, session: Uuid) -> Vec<Uuid> {
        sqlx::query_scalar(
            "select (o.payload->>'id')::uuid from hub.outbox o
             where o.topic = $1 and not o.private and o.event <> 'status'
             order by o.seq",
        )
        .bind(format!("build:{session}"))
        .fetch_all(&self.pool)
        .await
        .expect("read the session's outbox rows")
    }

    /// How many timeline rows of `session` are committed.
    pub async fn count_events(&self, session: Uuid) -> i64 {
        sqlx::query_scalar("select count(*) from public.build_events where session_id = $1")
            .bind(session)
            .fetch_one(&self.pool)
            .await
            .expect("count the session's events")
    }

    /// Backends of this database that are hubs' feed listeners (`application_name` hub-feed).
    pub async fn listener_pids(&self) -> Vec<i32> {
        sqlx::query_scalar(
            "select pid from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()
               and application_name = 'hub-feed'",
        )
        .fetch_all(&self.pool)
        .await
        .expect("list listener backends")
    }

    /// Waits until a hub's feed listens on this database. A feed delivers the rows committed
    /// after it started, so a test counting its deliveries writes only after this.
    pub async fn wait_for_feed(&self) {
        wait_for(
            "a hub's feed listens on the test database",
            WAIT,
            || async { !self.listener_pids().await.is_empty() },
        )
        .await;
    }

    /// Terminates every feed listener connection of this database (only this database: other
    /// tests share the server). Returns the pids terminated.
    pub async fn terminate_listeners(&self) -> Vec<i32> {
        // Two steps: in one statement Postgres may call pg_terminate_backend before the filter.
        let pids = self.listener_pids().await;
        for pid in &pids {
            sqlx::query("select pg_terminate_backend($1)")
                .bind(pid)
                .execute(&self.pool)
                .await
                .expect("terminate a listener backend");
        }
        pids
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be unwinding from a panic: drop the
        // database from a runtime of our own on another thread.
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let fut = async {
                    let mut admin = PgConnection::connect(&admin_url)
                        .await
                        .map_err(|e| e.to_string())?;
                    admin
                        .execute(format!("drop database if exists {name} with (force)").as_str())
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = admin.close().await;
                    Ok::<(), String>(())
                };
                tokio::time::timeout(Duration::from_secs(30), fut)
                    .await
                    .map_err(|_| "timed out after 30 s".to_owned())?
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

/// Joins a build topic from its beginning (`broadcast.resume.since = "0"`) and reads the session's
/// initial `status` message, offset 1, which history or the live feed delivers exactly once.
///
/// Tests join this way rather than plainly because a plain join races with the feed: a row
/// committed just before the join (the session's creation) may still be delivered live after it,
/// depending on when the feed reads it.
pub async fn join_build(c: &mut WsClient, topic: &str) -> Bcast {
    c.join_ok(topic, json!({"broadcast": {"resume": {"since": "0"}}}))
        .await;
    let first = c
        .expect_offsets(
            topic,
            1..=1,
            &format!("the initial status of {topic}"),
            WAIT,
        )
        .await;
    let b = first.into_iter().next().expect("one message read");
    assert_eq!(b.event, "status", "offset 1 is the initial status: {b:?}");
    b
}

/// Inserts one timeline row in its own transaction (for writer tasks that handle errors).
pub async fn insert_event(
    pool: &PgPool,
    session: Uuid,
    kind: &str,
    message: &str,
    payload: &Value,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "insert into public.build_events (session_id, type, message, payload)
         values ($1, $2, $3, $4) returning id",
    )
    .bind(session)
    .bind(kind)
    .bind(message)
    .bind(Json(payload))
    .fetch_one(pool)
    .await
}

/// Polls `cond` every 20 ms until it holds, at most `limit`; panics naming `what`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        let ok = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), cond())
            .await
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The throwaway server `scripts/test` started, which a test may restart. `None` when
/// `DATABASE_URL` points at a server the tests did not start (never restart someone's server).
#[derive(Debug, Clone)]
pub struct PgServer {
    pg_ctl: String,
    pgdata: String,
    log: String,
    os_user: Option<String>,
}

impl PgServer {
    /// From `HUB_TEST_PG_CTL`, `HUB_TEST_PGDATA`, `HUB_TEST_PGLOG` and `HUB_TEST_PG_OS_USER`.
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(Self {
            pg_ctl: var("HUB_TEST_PG_CTL")?,
            pgdata: var("HUB_TEST_PGDATA")?,
            log: var("HUB_TEST_PGLOG")?,
            os_user: var("HUB_TEST_PG_OS_USER"),
        })
    }

    /// `pg_ctl restart -m fast`: every connection is cut, in-flight transactions abort, and the
    /// server is back (accepting connections) when this returns.
    pub async fn restart(&self) {
        let mut cmd = match &self.os_user {
            Some(user) => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", user, "--", &self.pg_ctl]);
                c
            }
            None => tokio::process::Command::new(&self.pg_ctl),
        };
        cmd.args(["-D", &self.pgdata, "-l", &self.log])
            .args(["-m", "fast", "-w", "-t", "60", "restart"])
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
            .await
            .expect("timed out after 90 s waiting for pg_ctl restart")
            .unwrap_or_else(|e| panic!("run pg_ctl restart ({}): {e}", self.pg_ctl));
        assert!(
            out.status.success(),
            "pg_ctl restart failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
