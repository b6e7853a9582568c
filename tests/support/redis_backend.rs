//! Redis for the multi-node tests: a logical database of its own per test file on the
//! `REDIS_URL` server (flushed once, before the file's first test uses it), the shipped publish
//! script called the way README documents it, and control over the throwaway server
//! `scripts/test` started (`HUB_TEST_REDIS_OWNED=1`), for the restart test.
//!
//! Without `REDIS_URL` every Redis test fails at [`TestRedis::file_db`] with a message saying to
//! run `scripts/test`, instead of passing without testing anything.
//!
//! Databases in use (one per test file, so files may run in parallel):
//! 1 `redis_fanout`, 2 `redis_presence`, 3 `redis_resume`, 4 `redis_script`, 5 `redis_restart`,
//! 6 `pg_multi_node`, 7 `terminal_nodes`, 8 `ops`.
//! Pub/sub channels are server-wide, not per database, so topic names are also unique across
//! all tests (the JS suite's `multinode.test.mjs` uses random names on `REDIS_URL`'s database).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::Value;

use crate::WAIT;

/// The `REDIS_URL` the tests run against; panics with what to do when it is not set.
#[track_caller]
pub fn redis_url() -> String {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "REDIS_URL is not set, so the Redis multi-node tests cannot run. Run the tests with \
             `scripts/test` (it starts a throwaway Redis), or set REDIS_URL to a server whose \
             databases 1-7 these tests may flush."
        ),
    }
}

/// `url` with its database number replaced by `db` (query kept).
pub fn with_db(url: &str, db: u32) -> String {
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

/// One logical database of the test Redis server.
#[derive(Debug, Clone)]
pub struct TestRedis {
    /// `redis://…/<db>`, for the nodes' `REDIS_URL`.
    pub url: String,
    /// The database number.
    pub db: u32,
    client: redis::Client,
}

/// Databases this process has flushed already.
fn flushed() -> &'static Mutex<HashSet<u32>> {
    static FLUSHED: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    FLUSHED.get_or_init(|| Mutex::new(HashSet::new()))
}

impl TestRedis {
    /// Database `db` of the `REDIS_URL` server, emptied the first time this process asks for it
    /// (the tests of one file share it, with distinct topics; see the module doc for the numbers).
    pub fn file_db(db: u32) -> Self {
        let url = with_db(&redis_url(), db);
        let client = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("invalid Redis URL {url}: {e}"));
        let mut done = flushed().lock().unwrap_or_else(|p| p.into_inner());
        if !done.contains(&db) {
            // Synchronous on purpose: concurrent tests of this file wait here until it is done.
            let mut conn = client
                .get_connection_with_timeout(WAIT)
                .unwrap_or_else(|e| panic!("connecting to Redis at {url}: {e}"));
            redis::cmd("FLUSHDB")
                .exec(&mut conn)
                .unwrap_or_else(|e| panic!("FLUSHDB on {url}: {e}"));
            done.insert(db);
        }
        Self { url, db, client }
    }

    /// A command connection of the test's own (the backend side of a test).
    pub async fn conn(&self) -> MultiplexedConnection {
        tokio::time::timeout(WAIT, self.client.get_multiplexed_async_connection())
            .await
            .unwrap_or_else(|_| panic!("timed out connecting to Redis at {}", self.url))
            .unwrap_or_else(|e| panic!("connecting to Redis at {}: {e}", self.url))
    }

    /// The client (for connections made after a restart).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }
}

// ---------------------------------------------------------------------------------------------
// The shipped publish script, as README documents it
// ---------------------------------------------------------------------------------------------

/// `store/src/redis/publish.lua`, read from the repository (what a backend service ships with).
pub fn publish_script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../store/src/redis/publish.lua")
}

/// The publish script, loaded from [`publish_script_path`].
pub fn publish_script() -> redis::Script {
    let path = publish_script_path();
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    redis::Script::new(&source)
}

/// The Redis name of a public topic (`t:<topic>`), as README's examples build it.
pub fn tid(topic: &str) -> String {
    format!("t:{topic}")
}

/// A fresh epoch candidate, as README's Node example makes one (`'r' + Date.now()` in base 36).
pub fn epoch_candidate() -> String {
    let mut n = crate::now_ms();
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(char::from_digit((n % 36) as u32, 36).expect("digit < 36"));
        n /= 36;
    }
    digits.push('r');
    digits.iter().rev().collect()
}

/// Runs the publish script for public `topic` (the name without `realtime:`) exactly as README
/// documents: keys seq, epoch, hist of `t:<topic>`; arguments channel, topic, "0", event, payload
/// JSON, "", "", epoch candidate, 1000, 86400. Returns the script's `{offset, epoch}`.
pub async fn publish_via_script(
    script: &redis::Script,
    conn: &mut MultiplexedConnection,
    topic: &str,
    event: &str,
    payload: &Value,
) -> redis::RedisResult<(u64, String)> {
    publish_via_script_keeping(script, conn, topic, event, payload, 1000).await
}

/// [`publish_via_script`] with another history size than README's 1000.
pub async fn publish_via_script_keeping(
    script: &redis::Script,
    conn: &mut MultiplexedConnection,
    topic: &str,
    event: &str,
    payload: &Value,
    history: u64,
) -> redis::RedisResult<(u64, String)> {
    let tid = tid(topic);
    script
        .key(format!("hub:{{{tid}}}:seq"))
        .key(format!("hub:{{{tid}}}:epoch"))
        .key(format!("hub:{{{tid}}}:hist"))
        .arg(format!("hub:msg:{tid}"))
        .arg(topic)
        .arg("0")
        .arg(event)
        .arg(payload.to_string())
        .arg("")
        .arg("")
        .arg(epoch_candidate())
        .arg(history)
        .arg("86400")
        .invoke_async(conn)
        .await
}

// ---------------------------------------------------------------------------------------------
// The throwaway server
// ---------------------------------------------------------------------------------------------

/// The Redis server `scripts/test` started (`HUB_TEST_REDIS_OWNED=1`), which a test may restart.
#[derive(Debug, Clone)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: String,
    dbfilename: String,
    pidfile: String,
    logfile: String,
}

/// `CONFIG GET name` on the server at `port`.
fn config_get(conn: &mut redis::Connection, name: &str) -> String {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(conn)
        .unwrap_or_else(|e| panic!("CONFIG GET {name}: {e}"));
    pair.get(1).cloned().unwrap_or_default()
}

impl RedisServer {
    /// The throwaway server, or `None` when the tests run against a server given in the
    /// environment (which they must not restart).
    pub fn from_env() -> Option<Self> {
        if std::env::var("HUB_TEST_REDIS_OWNED").as_deref() != Ok("1") {
            return None;
        }
        let url = redis_url();
        let info = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("invalid REDIS_URL {url}: {e}"))
            .get_connection_info()
            .clone();
        let port = match info.addr() {
            redis::ConnectionAddr::Tcp(_, port) => *port,
            other => panic!("HUB_TEST_REDIS_OWNED=1 but REDIS_URL is not TCP: {other:?}"),
        };
        let mut conn = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(WAIT))
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        // The flags scripts/test started it with, read back from the server itself.
        let server = Self {
            port,
            dir: config_get(&mut conn, "dir"),
            dbfilename: config_get(&mut conn, "dbfilename"),
            pidfile: config_get(&mut conn, "pidfile"),
            logfile: config_get(&mut conn, "logfile"),
        };
        assert!(
            !server.dir.is_empty() && !server.pidfile.is_empty(),
            "the throwaway Redis has no dir or pidfile: {server:?}"
        );
        Some(server)
    }

    fn ping(&self) -> bool {
        let url = format!("redis://127.0.0.1:{}/0", self.port);
        redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// Shuts the server down and starts `redis-server` again on the same port with the flags of
    /// scripts/test's `start_redis`; returns once it answers PING, with how long it was down.
    ///
    /// `keep_data = false`: `shutdown nosave`, and the server comes back empty, like a Redis that
    /// lost its data. `keep_data = true`: `shutdown save` (an RDB snapshot in its directory, even
    /// without save points), which the new server loads: a restart that keeps every key.
    pub async fn restart(&self, keep_data: bool) -> Duration {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.restart_blocking(keep_data))
            .await
            .expect("restart task")
    }

    fn restart_blocking(&self, keep_data: bool) -> Duration {
        let port = self.port.to_string();
        let mode = if keep_data { "save" } else { "nosave" };
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port, "shutdown", mode])
            .output()
            .unwrap_or_else(|e| panic!("running redis-cli shutdown {mode}: {e}"));
        let down = Instant::now();
        // redis-cli returns once the server closed the connection; make sure it is gone.
        let deadline = Instant::now() + WAIT;
        while self.ping() {
            assert!(
                Instant::now() < deadline,
                "Redis on port {port} still answers {WAIT:?} after shutdown ({out:?})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let dump = std::path::Path::new(&self.dir).join(&self.dbfilename);
        if keep_data {
            assert!(
                dump.is_file(),
                "shutdown save left no snapshot at {} ({out:?})",
                dump.display()
            );
        } else if dump.exists() {
            // A snapshot of an earlier `keep_data` restart must not be loaded this time.
            std::fs::remove_file(&dump)
                .unwrap_or_else(|e| panic!("removing {}: {e}", dump.display()));
        }
        let status = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", &self.dir, "--daemonize", "yes"])
            .args(["--pidfile", &self.pidfile, "--logfile", &self.logfile])
            .status()
            .unwrap_or_else(|e| panic!("running redis-server: {e}"));
        assert!(status.success(), "redis-server did not start: {status}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "the restarted Redis on port {port} did not answer PING within 10 s; see {}",
                self.logfile
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        down.elapsed()
    }
}
