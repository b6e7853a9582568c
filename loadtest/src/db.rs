//! The database side of `pg-feed`: connections, the schema check, and the build sessions a run
//! creates and deletes.
//!
//! `tokio-postgres` without TLS: the load test talks to a database on this machine, and its
//! small per-query overhead keeps the client's share of insert→receive latency to microseconds.
//! Every statement is a plain autocommit statement, so each INSERT is its own transaction.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// `application_name` of the load test's connections (unless the URL sets one), so they can be
/// told apart in `pg_stat_activity`.
const APPLICATION_NAME: &str = "loadtest";

/// Limit for one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Limit for the setup and clean-up statements.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates `$1` build sessions in one statement. The `status` trigger publishes each one's
/// initial status on its topic, before any viewer has joined.
pub const CREATE_SESSIONS: &str = "insert into public.build_sessions (status, template, vibe_text) \
     select 'queued', 'saas', 'loadtest' from generate_series(1, $1::int4) \
     returning id::text";

/// Deletes the run's sessions; their events go with them (`on delete cascade`).
pub const DELETE_SESSIONS: &str =
    "delete from public.build_sessions where id = any($1::text[]::uuid[])";

/// Opens a connection to `url` and drives it on its own task.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let config = config(url)?;
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {} timed out", describe(&config)))?
        .with_context(|| format!("connecting to {}", describe(&config)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("database connection ended: {e}");
        }
    });
    Ok(client)
}

/// Parses `url` and names the connections.
pub fn config(url: &str) -> anyhow::Result<Config> {
    let mut config: Config = url.parse().context("--database-url")?;
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    config.connect_timeout(CONNECT_TIMEOUT);
    Ok(config)
}

/// `user@host:port/dbname` of a connection string, without its password (for reports).
pub fn describe(config: &Config) -> String {
    let user = config.get_user().unwrap_or("");
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let db = dbname(config);
    let at = if user.is_empty() { "" } else { "@" };
    format!("{user}{at}{}/{db}", hosts.join(","))
}

/// The database a connection string names (Postgres defaults it to the user name).
pub fn dbname(config: &Config) -> &str {
    config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
}

/// The process id of the backend serving `client`.
pub async fn backend_pid(client: &Client) -> anyhow::Result<u32> {
    let row = bounded(client.query_one("select pg_backend_pid()", &[])).await?;
    Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}

/// Fails with a hint when the hub has not set this database up: the tables and the outbox its
/// triggers publish through must exist.
pub async fn check_schema(client: &Client) -> anyhow::Result<()> {
    let row = bounded(client.query_one(
        "select to_regclass('public.build_sessions') is not null, \
                to_regclass('public.build_events') is not null, \
                to_regclass('hub.outbox') is not null",
        &[],
    ))
    .await?;
    let (sessions, events, outbox): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !(sessions && events && outbox) {
        bail!(
            "the database lacks {}: start the hub with DATABASE_URL pointing at it first (the \
             hub applies its migrations at start)",
            [
                (!sessions).then_some("public.build_sessions"),
                (!events).then_some("public.build_events"),
                (!outbox).then_some("hub.outbox"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
        );
    }
    Ok(())
}

/// Creates `n` build sessions; returns their ids.
pub async fn create_sessions(client: &Client, n: usize) -> anyhow::Result<Vec<String>> {
    let n = i32::try_from(n).context("too many sessions")?;
    let rows = bounded(client.query(CREATE_SESSIONS, &[&n]))
        .await
        .context("creating the build sessions")?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Deletes the sessions `ids` and (by cascade) their events; returns how many were deleted.
pub async fn delete_sessions(client: &Client, ids: &[String]) -> anyhow::Result<u64> {
    bounded(client.execute(DELETE_SESSIONS, &[&ids]))
        .await
        .context("deleting the build sessions")
}

/// Bounds a setup or clean-up statement.
async fn bounded<T>(
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("no answer from the database within {STATEMENT_TIMEOUT:?}"),
    }
}

/// A short error-count key for a failed statement: the server's message, or the client error.
pub fn error_key(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None if e.is_closed() => "connection closed".to_owned(),
        None => e.to_string(),
    };
    // Keep the keys few: messages with ids in them would make one key per row.
    text.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_leave_the_password_out() {
        let c = config("postgres://lt:secret@127.0.0.1:5433/loadtest_pg").unwrap();
        assert_eq!(describe(&c), "lt@127.0.0.1:5433/loadtest_pg");
        let c = config("host=127.0.0.1 user=postgres password=pw").unwrap();
        assert_eq!(describe(&c), "postgres@127.0.0.1/postgres");
        assert_eq!(dbname(&c), "postgres");
        assert_eq!(c.get_application_name(), Some(APPLICATION_NAME));
        let c = config("postgres://u@h/db?application_name=mine").unwrap();
        assert_eq!(c.get_application_name(), Some("mine"));
        assert!(config("postgres://u@h:notaport/db").is_err());
    }

    #[test]
    fn statements_touch_only_the_build_tables() {
        assert!(CREATE_SESSIONS.starts_with("insert into public.build_sessions"));
        assert!(CREATE_SESSIONS.contains("select 'queued', 'saas', 'loadtest'"));
        assert!(DELETE_SESSIONS.starts_with("delete from public.build_sessions where id = any("));
    }
}
