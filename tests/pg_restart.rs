//! Postgres restarting under a live stream: while a writer keeps inserting (retrying through the
//! outage), the server is restarted with `pg_ctl restart -m fast`; the subscribed client receives
//! every committed row exactly once, in order.
//!
//! Restarts the throwaway server `scripts/test` started (never a server given in DATABASE_URL);
//! alone in its test binary because the restart cuts every connection of the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::pg::{PgServer, TestDb, build_topic, insert_event, join_build, service_token, wait_for};
use tests::{TestHub, Vsn, WAIT, WsClient};
use uuid::Uuid;

/// How long one message may take to arrive across the restart (the feed reconnects with backoff).
const ACROSS_RESTART: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_stream_loses_and_duplicates_nothing() {
    let Some(server) = PgServer::from_env() else {
        eprintln!(
            "SKIPPED: a_postgres_restart_mid_stream_loses_and_duplicates_nothing restarts only the \
             throwaway Postgres that scripts/test starts (HUB_TEST_PGDATA is not set)"
        );
        return;
    };
    let db = TestDb::create().await;
    let hub = TestHub::spawn_pg(&db.url, |c| c.outbox_messages = 10_000).await;
    let stats = hub.feed_stats();
    let session = db.session(None).await;
    let topic = build_topic(session);
    let mut c = WsClient::connect(&hub, Vsn::V1, &service_token()).await;
    join_build(&mut c, &topic).await;

    // The writer inserts until 400 rows committed after the restart, retrying failed inserts.
    // An insert whose commit succeeded but whose reply was lost is retried too: that is a second
    // row, and the table (not the writer's count) says what was committed.
    let committed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let restarted = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, committed, failures, restarted) = (
            db.pool.clone(),
            committed.clone(),
            failures.clone(),
            restarted.clone(),
        );
        tokio::spawn(async move {
            let mut after_restart = 0;
            let mut k = 0u64;
            while after_restart < 400 {
                match insert_event(&pool, session, "log", "", &json!({"k": k})).await {
                    Ok(_) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                        if restarted.load(Ordering::Relaxed) {
                            after_restart += 1;
                        }
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        // Retry pacing while the server is down; not a wait for an event.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                k += 1;
            }
        })
    };
    wait_for(
        "300 rows are committed before the restart",
        WAIT,
        || async { committed.load(Ordering::Relaxed) >= 300 },
    )
    .await;
    // A transaction caught open by the restart: aborted, its outbox id becomes a gap for good.
    let other = db.session(None).await;
    let mut caught = db
        .pool
        .begin()
        .await
        .expect("begin the transaction the restart aborts");
    sqlx::query("insert into public.build_events (session_id, type, message) values ($1, 'x', '')")
        .bind(other)
        .execute(&mut *caught)
        .await
        .expect("insert in the transaction the restart aborts");
    let reconnects_before = stats.reconnects.load(Ordering::Relaxed);
    let started_before = postmaster_start(&db).await;
    let t = Instant::now();
    server.restart().await;
    let restart_took = t.elapsed();
    restarted.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("timed out after 60 s waiting for the writer to commit 400 rows after the restart")
        .expect("writer task");

    let total = db.count_events(session).await as u64;
    let got = c
        .expect_offsets(&topic, 2..=total + 1, "every committed row", ACROSS_RESTART)
        .await;
    let ids: Vec<Uuid> = got
        .iter()
        .map(|b| {
            b.json()["id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .expect("payload.id is a uuid")
        })
        .collect();
    assert_eq!(
        ids,
        db.event_ids_in_seq_order(session).await,
        "exactly the committed rows, in the outbox's order"
    );
    db.event(session, "sentinel", "", &json!({})).await;
    let b = c
        .expect_broadcast_within(&topic, "the sentinel row", ACROSS_RESTART)
        .await;
    assert_eq!(
        (b.event.as_str(), b.offset()),
        ("sentinel", total + 2),
        "the next message after the stream is the sentinel: {b:?}"
    );
    // The aborted transaction's row never appears, and its gap blocks nothing on its topic.
    drop(caught);
    let other_topic = build_topic(other);
    join_build(&mut c, &other_topic).await;
    db.event(other, "after", "", &json!({})).await;
    let b = c
        .expect_broadcast_within(&other_topic, "the other session's row", ACROSS_RESTART)
        .await;
    assert_eq!(
        (b.event.as_str(), b.offset()),
        ("after", 2),
        "the aborted insert took no offset: {b:?}"
    );
    let failed = failures.load(Ordering::Relaxed);
    let reconnects = stats.reconnects.load(Ordering::Relaxed) - reconnects_before;
    eprintln!(
        "restart took {restart_took:?}; {total} rows committed, {failed} inserts failed during \
         the outage, feed counted {reconnects} listener reconnects"
    );
    assert_ne!(
        postmaster_start(&db).await,
        started_before,
        "the server's start time did not change: it was not restarted"
    );
}

async fn postmaster_start(db: &TestDb) -> String {
    sqlx::query_scalar("select pg_postmaster_start_time()::text")
        .fetch_one(&db.pool)
        .await
        .expect("read pg_postmaster_start_time()")
}
