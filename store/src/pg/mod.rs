//! Postgres: migrations, the outbox broker, the LISTEN/NOTIFY feed, and build sessions.

mod broker;
mod feed;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

pub use broker::PgBroker;
pub use feed::{Feed, FeedStats};
pub use sessions::PgSessionStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::StoreError;

/// The migrations in `migrations/`, embedded at build time; applied at start (re-running is a
/// no-op: applied versions are recorded in `_sqlx_migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects a pool (a few connections: publishes, history reads, REST) and applies migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .map_err(|e| StoreError::Config(format!("DATABASE_URL: {e}")))?
        // The hub's statements are few and prepared once per connection; planning them anew
        // on each execution (Postgres' default for the first runs, and whenever it prefers)
        // cost more than executing the feed's read. Their generic plans are the right ones.
        .options([("plan_cache_mode", "force_generic_plan")])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| StoreError::Connect(e.to_string()))?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| StoreError::Migrate(e.to_string()))?;
    Ok(pool)
}

/// The database's history epoch (migration `hub_outbox` creates it once).
pub async fn epoch(pool: &PgPool) -> Result<Arc<str>, StoreError> {
    let epoch: String = sqlx::query_scalar("select value from hub.meta where key = 'epoch'")
        .fetch_one(pool)
        .await
        .map_err(|e| StoreError::Connect(e.to_string()))?;
    Ok(epoch.into())
}

/// Deletes outbox rows older than `retention`, in batches so no single statement holds locks
/// for long. Returns how many were deleted.
pub async fn prune_outbox(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "delete from hub.outbox where id in (
               select id from hub.outbox
               where created_at < now() - make_interval(secs => $1)
               order by id limit 10000)",
        )
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < 10000 {
            return Ok(total);
        }
    }
}
