//! Hub nodes as separate processes: the real `hub` binary, started the way an operator starts it
//! (`--addr 127.0.0.1:0`, `HUB_JWT_SECRET`, `REDIS_URL`), announced by its `hub listening on
//! http://…` line, stopped with SIGTERM (or SIGKILL, for a node that dies) when dropped.
//!
//! The binary is `target/<profile>/hub` next to the running test executable (or `HUB_BIN`).
//! `scripts/test` builds it before `cargo test`. Plain `cargo test` does not (cargo builds a
//! crate's binaries only for that crate's own integration tests): run `cargo build -p hub` first,
//! or the tests run whatever binary was built last.
//!
//! A node's output (its log, `RUST_LOG=info` unless `HUB_TEST_NODE_LOG` says otherwise) is kept,
//! and printed when a test panics, so a failure shows what each node said.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::{SECRET, Vsn, WsClient};

/// How long a node may take to print its listening line (it connects to Redis first).
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a node may take to exit after SIGTERM before it is killed (drain is 2 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of each node's log kept for failure messages (the tail).
const LOG_TAIL: usize = 64 * 1024;

/// The hub binary to run: `HUB_BIN`, or `hub` in the target directory of this test executable.
/// Panics, saying what to run, when it is missing.
pub fn hub_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HUB_BIN")
        && !p.is_empty()
    {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "HUB_BIN={} is not a file", p.display());
        return p;
    }
    // target/<profile>/deps/<test>-<hash> → target/<profile>/hub
    let exe = std::env::current_exe().expect("path of the running test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("test executable {} has no grandparent", exe.display()));
    let bin = profile_dir.join(format!("hub{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the multi-node tests run the hub binary, and {} does not exist: run `cargo build -p hub` \
         first (scripts/test does)",
        bin.display()
    );
    bin
}

/// The kept tail of a node's output.
#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) text: String,
    dropped: usize,
}

impl Log {
    fn push(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > LOG_TAIL {
            let mut cut = self.text.len() - LOG_TAIL / 2;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.dropped += cut;
            self.text.drain(..cut);
        }
    }
}

/// A hub process on Redis.
pub struct Node {
    /// Name used in messages ("A", "B", …).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<Log>>,
    /// Set once the test stopped or killed it on purpose.
    stopped: bool,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    // Appends only: a panic cannot leave the text half-written.
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Copies `out` line by line into `log` until it ends.
pub(crate) fn keep_lines(
    out: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<Log>>,
    listening: Option<tokio::sync::oneshot::Sender<String>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        let mut listening = listening;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("hub listening on http://")
                && let Some(tx) = listening.take()
            {
                let _ = tx.send(addr.trim().to_owned());
            }
            lock(&log).push(&line);
        }
    });
}

impl Node {
    /// Starts a node on `redis_url` with the test secret, `--join-error-delay 0s` and
    /// `--drain-timeout 2s --drain-window 0s`, plus `extra` arguments; returns once it listens.
    pub async fn start(name: &str, redis_url: &str, extra: &[&str]) -> Self {
        let bin = hub_bin();
        let mut cmd = Command::new(&bin);
        cmd.args(["--addr", "127.0.0.1:0", "--join-error-delay", "0s"])
            .args(["--drain-timeout", "2s", "--drain-window", "0s"])
            .args(extra)
            // Nothing from the test's environment (DATABASE_URL, HUB_*) reaches the node.
            .env_clear()
            .env("HUB_JWT_SECRET", SECRET)
            .env("REDIS_URL", redis_url)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("HUB_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting node {name} ({}): {e}", bin.display()));
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        keep_lines(stderr, log.clone(), None);
        keep_lines(stdout, log.clone(), Some(tx));
        let addr = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                let status = tokio::time::timeout(STOP_TIMEOUT, child.wait()).await;
                panic!(
                    "node {name} exited ({status:?}) before printing its listening line; its \
                     output:\n{}",
                    lock(&log).text
                )
            }
            Err(_) => {
                let _ = child.start_kill();
                panic!(
                    "node {name} did not print `hub listening on …` within {START_TIMEOUT:?}; \
                     its output:\n{}",
                    lock(&log).text
                )
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("node {name} announced a bad address {addr:?}: {e}"));
        Self {
            name: name.to_owned(),
            addr,
            child,
            log,
            stopped: false,
        }
    }

    /// `http://<addr><path>`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The WebSocket URL supabase-js uses, with `apikey` and `vsn`.
    pub fn ws_url(&self, vsn: Vsn, token: &str) -> String {
        format!(
            "ws://{}/realtime/v1/websocket?apikey={token}&vsn={}",
            self.addr,
            vsn.as_str()
        )
    }

    /// A WebSocket client connected to this node; panics (with the node's log) if refused.
    pub async fn ws(&self, vsn: Vsn, token: &str) -> WsClient {
        let url = self.ws_url(vsn, token);
        match WsClient::connect_url(&url, vsn).await {
            Ok(c) => c,
            Err(e) => panic!(
                "WebSocket connect to node {} ({url}) failed: {e}; its log:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// `POST /realtime/v1/api/broadcast` of `messages` (`{"topic","event","payload"}` each, topic
    /// without `realtime:`) with a `service_role` Bearer token; returns the status (202 when
    /// every message was published). Errors (connection refused, timeout) are returned too.
    pub async fn rest_broadcast(
        &self,
        http: &reqwest::Client,
        messages: &[Value],
    ) -> Result<reqwest::StatusCode, reqwest::Error> {
        http.post(self.http("/realtime/v1/api/broadcast"))
            .bearer_auth(crate::token("service_role", "backend", 3600))
            .json(&serde_json::json!({ "messages": messages }))
            .send()
            .await
            .map(|r| r.status())
    }

    /// [`Node::rest_broadcast`] of one message that must be accepted (202).
    pub async fn rest_broadcast_ok(
        &self,
        http: &reqwest::Client,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let msg = serde_json::json!({"topic": topic, "event": event, "payload": payload});
        match self.rest_broadcast(http, std::slice::from_ref(&msg)).await {
            Ok(s) if s == reqwest::StatusCode::ACCEPTED => {}
            other => panic!(
                "REST broadcast of {msg} on node {} answered {other:?}, not 202",
                self.name
            ),
        }
    }

    /// The node's output so far (the tail of it).
    pub fn log(&self) -> String {
        let l = lock(&self.log);
        if l.dropped > 0 {
            format!("[… {} bytes dropped …]\n{}", l.dropped, l.text)
        } else {
            l.text.clone()
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .expect("the node's pid (it has not been waited for)")
    }

    /// Kills the node with SIGKILL (a crash: no goodbye to Redis) and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.stopped = true;
        self.child
            .start_kill()
            .unwrap_or_else(|e| panic!("SIGKILL node {}: {e}", self.name));
        tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("node {} still running after SIGKILL", self.name))
            .unwrap_or_else(|e| panic!("waiting for node {}: {e}", self.name));
    }

    /// Stops the node with SIGTERM (graceful shutdown) and waits for it to exit; returns its
    /// exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.stopped = true;
        sigterm(self.pid());
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for node {}: {e}", self.name),
            Err(_) => panic!(
                "node {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// Panics (with its log) if the node exited on its own.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "node {} exited unexpectedly ({status}); its log:\n{}",
                self.name,
                self.log()
            );
        }
    }
}

fn sigterm(pid: u32) {
    // `kill(2)` would need unsafe code (forbidden in this workspace); kill(1) does the same.
    let _ = std::process::Command::new("kill")
        .args(["-s", "TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Node {
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        if std::thread::panicking() {
            eprintln!(
                "---- node {} ({}) log ----\n{}---- end of node {} log ----",
                self.name,
                exited.map_or_else(|| "running".to_owned(), |s| s.to_string()),
                self.log(),
                self.name
            );
        } else if let (Some(status), false) = (exited, self.stopped) {
            eprintln!(
                "node {} had exited on its own ({status}); its log:\n{}",
                self.name,
                self.log()
            );
        }
        if exited.is_some() {
            return;
        }
        // Graceful first, so the node removes its presence from Redis; bounded, then killed.
        if let Some(pid) = self.child.id() {
            sigterm(pid);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.start_kill();
    }
}

/// Starts `names.len()` nodes on `redis_url` concurrently (same `extra` arguments).
pub async fn start_nodes(names: &[&str], redis_url: &str, extra: &[&str]) -> Vec<Node> {
    futures_util::future::join_all(names.iter().map(|n| Node::start(n, redis_url, extra))).await
}
