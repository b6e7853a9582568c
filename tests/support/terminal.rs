//! Terminal clients for the end-to-end tests of `/v1/terminal/{id}` (issue 6): [`Term`], one
//! WebSocket connection (viewer or host) that keeps every output byte it received and its
//! control messages; [`EchoHost`], a host that echoes input back and records it; and [`Agent`],
//! the real `hub terminal-agent` as a child process. Every wait has a timeout and says what it
//! waited for, with what had arrived so far.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;
use crate::nodes::{Log, STOP_TIMEOUT, hub_bin, keep_lines, lock as lock_log};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `bytes` for a failure message: lossy UTF-8 with control characters escaped, at most the last
/// 2000 characters.
pub fn show(bytes: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(bytes).escape_debug().collect();
    let n = s.chars().count();
    if n > 2000 {
        let tail: String = s.chars().skip(n - 2000).collect();
        format!("…{tail}")
    } else {
        s
    }
}

/// Whether `needle` occurs in `hay`; the index just past its first occurrence.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + needle.len())
}

/// How many times `needle` occurs in `hay` (overlaps counted).
pub fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Connects to `ws://<addr>/v1/terminal/<id>?<query>` within [`WAIT`]; panics if refused.
pub async fn connect_ws(addr: SocketAddr, id: &str, query: &str) -> Ws {
    let url = format!("ws://{addr}/v1/terminal/{id}?{query}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .unwrap_or_else(|_| panic!("timed out connecting {url}"))
        .unwrap_or_else(|e| panic!("connecting {url}: {e}"));
    ws
}

/// One terminal connection: output bytes and control messages as they arrive.
#[derive(Debug)]
pub struct Term {
    ws: Ws,
    /// Name in failure messages.
    pub name: String,
    /// The `connected` message the connection started with.
    pub connected: Value,
    /// Offset of `out[0]` in the terminal's byte stream: the cursor it connected with, or 0 (a
    /// first connection is sent the whole window, which starts at 0 while the terminal has
    /// written less than its scrollback).
    pub base: u64,
    /// Every output byte received.
    pub out: Vec<u8>,
    /// Control messages received and not yet taken by an `expect_*` call.
    pub texts: VecDeque<Value>,
    /// Every control message received, taken or not (for failure messages).
    pub all_texts: Vec<Value>,
    /// Output before this index has been matched by [`Term::expect_output`] already.
    seen: usize,
    /// The close frame, once one arrived.
    pub closed: Option<(u16, String)>,
}

impl Term {
    /// Connects (`query` without the leading `?`) and reads the `connected` message. `base`
    /// is taken from a `cursor=` in `query`, else 0.
    pub async fn connect(addr: SocketAddr, id: &str, query: &str, name: &str) -> Self {
        let base = query
            .split('&')
            .find_map(|p| p.strip_prefix("cursor="))
            .map_or(0, |c| c.parse().expect("a numeric cursor"));
        let ws = connect_ws(addr, id, query).await;
        let mut t = Self {
            ws,
            name: name.to_owned(),
            connected: Value::Null,
            base,
            out: Vec::new(),
            texts: VecDeque::new(),
            all_texts: Vec::new(),
            seen: 0,
            closed: None,
        };
        let c = t
            .expect_text(&format!("{name}'s connected message"), |m| {
                m["type"] == "connected"
            })
            .await;
        assert_eq!(
            t.all_texts.len(),
            1,
            "{name}: `connected` must be the first message, got {:?}",
            t.all_texts
        );
        t.connected = c;
        t
    }

    /// The offset just past the last byte received.
    pub fn offset(&self) -> u64 {
        self.base + self.out.len() as u64
    }

    /// Reads one frame (bytes into `out`, text into `texts`) before `deadline`; `Err` with why
    /// not (timeout, end of the connection).
    async fn pump(&mut self, deadline: tokio::time::Instant) -> Result<(), String> {
        loop {
            let m = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err("timed out".into()),
                Ok(None) => return Err("the connection ended".into()),
                Ok(Some(Err(e))) => return Err(format!("read error: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            match m {
                Message::Binary(b) => self.out.extend_from_slice(&b),
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| {
                        panic!("{}: non-JSON text frame {t:?}: {e}", self.name)
                    });
                    self.all_texts.push(v.clone());
                    self.texts.push_back(v);
                }
                Message::Close(c) => {
                    let c = c.map_or((1005, String::new()), |c| {
                        (u16::from(c.code), c.reason.to_string())
                    });
                    self.closed = Some(c.clone());
                    return Err(format!("the connection was closed ({} {:?})", c.0, c.1));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
            return Ok(());
        }
    }

    fn failure(&self, what: &str, why: &str) -> String {
        format!(
            "{}: {why} waiting for {what} (within {WAIT:?}); output so far ({} bytes from offset \
             {}): \"{}\"; control messages: {:?}",
            self.name,
            self.out.len(),
            self.base,
            show(&self.out),
            self.all_texts
        )
    }

    /// Waits until the output not yet matched contains `needle`; marks it matched. Returns the
    /// index in `out` just past it.
    pub async fn expect_output(&mut self, needle: &[u8], what: &str) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = find(&self.out[self.seen..], needle) {
                self.seen += end;
                return self.seen;
            }
            if let Err(why) = self.pump(deadline).await {
                panic!(
                    "{}",
                    self.failure(&format!("{what} (\"{}\")", show(needle)), &why)
                );
            }
        }
    }

    /// Waits until at least `n` output bytes arrived in all.
    pub async fn expect_len(&mut self, n: usize, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.out.len() < n {
            if let Err(why) = self.pump(deadline).await {
                panic!(
                    "{}",
                    self.failure(&format!("{what} ({n} bytes in all)"), &why)
                );
            }
        }
    }

    /// Marks all output so far as matched: the next [`Term::expect_output`] looks at newer
    /// output only.
    pub fn mark(&mut self) {
        self.seen = self.out.len();
    }

    /// Takes the first control message matching `pred` (received already or arriving within
    /// [`WAIT`]); others stay queued.
    pub async fn expect_text(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.texts.iter().position(&mut pred) {
                return self.texts.remove(i).expect("index found above");
            }
            if let Err(why) = self.pump(deadline).await {
                panic!("{}", self.failure(what, &why));
            }
        }
    }

    /// Takes the first message of type `ty`.
    pub async fn expect_type(&mut self, ty: &str, what: &str) -> Value {
        self.expect_text(&format!("{what} (a {ty:?} message)"), |m| m["type"] == ty)
            .await
    }

    /// Takes the first `error` message and checks that its message contains `part`.
    pub async fn expect_error(&mut self, part: &str, what: &str) -> String {
        let e = self.expect_type("error", what).await;
        let message = e["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains(part),
            "{}: {what}: expected an error containing {part:?}, got {e}",
            self.name
        );
        message
    }

    /// Takes the first `control` message naming `driver` (`None`: nobody drives).
    pub async fn expect_driver(&mut self, driver: Option<&str>, what: &str) {
        let want = driver.map_or(Value::Null, |d| Value::String(d.into()));
        self.expect_text(&format!("{what} (control with driver {want})"), |m| {
            m["type"] == "control" && m["driver"] == want
        })
        .await;
    }

    /// Waits until a host is connected: `connected.host`, or a `host_connected` message (which
    /// is taken).
    pub async fn expect_host(&mut self, what: &str) {
        if self.connected["host"] == true
            && !self.texts.iter().any(|m| m["type"] == "host_disconnected")
        {
            return;
        }
        self.expect_type("host_connected", what).await;
    }

    /// Whether a control message of type `ty` is queued (received and not taken).
    pub fn has_text(&self, ty: &str) -> bool {
        self.texts.iter().any(|m| m["type"] == ty)
    }

    /// Reads until the close frame; returns its code and reason.
    pub async fn expect_close(&mut self, what: &str) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(c) = self.closed.clone() {
                return c;
            }
            if let Err(why) = self.pump(deadline).await {
                if let Some(c) = self.closed.clone() {
                    return c;
                }
                panic!("{}", self.failure(&format!("{what} (a close frame)"), &why));
            }
        }
    }

    /// Sends raw bytes (input from a viewer, output from a host).
    pub async fn send_bytes(&mut self, b: &[u8]) {
        tokio::time::timeout(WAIT, self.ws.send(Message::Binary(b.to_vec().into())))
            .await
            .unwrap_or_else(|_| panic!("{}: timed out sending bytes", self.name))
            .unwrap_or_else(|e| panic!("{}: sending bytes: {e}", self.name));
    }

    /// Sends a control message.
    pub async fn send_json(&mut self, v: Value) {
        tokio::time::timeout(WAIT, self.ws.send(Message::Text(v.to_string().into())))
            .await
            .unwrap_or_else(|_| panic!("{}: timed out sending {v}", self.name))
            .unwrap_or_else(|e| panic!("{}: sending {v}: {e}", self.name));
    }

    /// Closes the connection (close frame, then waits for the server's, bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }
}

/// A host connection that echoes every input byte back as output and records the input, until
/// its connection ends.
#[derive(Debug)]
pub struct EchoHost {
    /// The `connected` message the host got.
    pub connected: Value,
    /// Every input byte the host received, in order.
    pub input: Arc<Mutex<Vec<u8>>>,
    /// Ends with the close frame (code, reason) when the hub closed the connection, or `None`
    /// when it ended otherwise.
    task: JoinHandle<Option<(u16, String)>>,
}

impl EchoHost {
    /// Connects as the host of `id` with `token` and starts echoing.
    pub async fn start(addr: SocketAddr, id: &str, token: &str) -> Self {
        let mut t =
            Term::connect(addr, id, &format!("role=host&access_token={token}"), "host").await;
        assert_eq!(
            t.connected["host"], true,
            "the host's connected message: {}",
            t.connected
        );
        let input = Arc::new(Mutex::new(Vec::new()));
        let rec = input.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = t.ws.next().await {
                match m {
                    Ok(Message::Binary(b)) => {
                        rec.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend_from_slice(&b);
                        if t.ws.send(Message::Binary(b)).await.is_err() {
                            return None;
                        }
                    }
                    Ok(Message::Close(c)) => {
                        return Some(c.map_or((1005, String::new()), |c| {
                            (u16::from(c.code), c.reason.to_string())
                        }));
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
            None
        });
        Self {
            connected: t.connected,
            input,
            task,
        }
    }

    /// The input received so far.
    pub fn input(&self) -> Vec<u8> {
        self.input.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for the connection to end; returns its close frame (`None`: ended without one).
    pub async fn ended(&mut self, what: &str) -> Option<(u16, String)> {
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
            .expect("the echo host task")
    }

    /// Stops echoing (drops the connection).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for EchoHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `hub terminal-agent` as a child process, killed when dropped; its log is printed when a test
/// panics.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    log: Arc<Mutex<Log>>,
}

impl Agent {
    /// Starts `hub terminal-agent --hub ws://<addr> --id <id> --token <token> -- <command…>`
    /// with a small fixed environment (PATH, HOME=/tmp, no SHELL, `PS1='$ '`).
    pub fn start(addr: SocketAddr, id: &str, token: &str, command: &[&str]) -> Self {
        let bin = hub_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("terminal-agent")
            .args([
                "--hub",
                &format!("ws://{addr}"),
                "--id",
                id,
                "--token",
                token,
            ])
            .arg("--")
            .args(command)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/tmp")
            .env("PS1", "$ ")
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
            .unwrap_or_else(|e| panic!("starting {} terminal-agent: {e}", bin.display()));
        let log = Arc::new(Mutex::new(Log::default()));
        keep_lines(
            child.stdout.take().expect("piped stdout"),
            log.clone(),
            None,
        );
        keep_lines(
            child.stderr.take().expect("piped stderr"),
            log.clone(),
            None,
        );
        Self { child, log }
    }

    /// The agent's output so far.
    pub fn log(&self) -> String {
        lock_log(&self.log).text.clone()
    }

    /// Kills the agent with SIGKILL (no close frame: the hub sees the TCP connection drop) and
    /// waits for it to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the agent");
        tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .expect("the agent still runs after SIGKILL")
            .expect("waiting for the agent");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- terminal agent log ----\n{}---- end of terminal agent log ----",
                self.log()
            );
        }
        // kill_on_drop kills it; say so explicitly for the reader.
        let _ = self.child.start_kill();
    }
}
