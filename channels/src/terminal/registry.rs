//! Every terminal this node relays, and how nodes relay one terminal between them.
//!
//! Host and viewers of one terminal may sit on different nodes. They meet on the terminal's
//! *relay topic* (the private topic `terminal:<id>`, never readable by browsers: it carries
//! keystrokes) through the node's broker: memory on one node, Redis across nodes, which orders
//! the topic's messages and fills gaps. Every node that has a connection of the terminal
//! subscribes to it and applies its messages ([`Terminals::apply`], called by the registry for
//! relay topics):
//!
//! - `o` (binary: 8-byte start offset, then bytes): output, numbered by the host's node. Every
//!   node keeps the scrollback window from it and sends new bytes to its viewers.
//! - `i` (binary: 2-byte header length, JSON header `{r, s, d}`, then bytes): input from viewer
//!   `r` (user `s`, allowed to drive `d`).
//! - `ask` (`{r, s, d, ask, cols?, rows?}`): `take_control`, `release`, `resize`, `left`.
//! - `ctl` (`{driver, r}`), `size` (`{cols, rows, from}`), `host` (`{present, r}`),
//!   `refused` (`{r, message}`), `hello`.
//!
//! The node holding the host connection is the terminal's *authority*: it alone decides input
//! and control (the one-driver policy of [`super::control`]) and announces the outcome (`ctl`,
//! `refused`), so every node agrees on who drives without any shared lock. A node that starts
//! relaying a terminal reads the relay topic's history first (the scrollback survives a viewer
//! moving to another node) and says `hello`, to which the authority answers with the current
//! host, driver and size.
//!
//! Every method takes one terminal's lock briefly and never awaits; what must be published is
//! returned as [`Relay`] messages for the caller (a connection task, or the node's relay task
//! for messages produced while applying). Output is appended to the scrollback and queued to
//! viewers under the same lock as a viewer's catch-up, so a viewer gets each byte once, in
//! order. Outboxes are bounded: a viewer that falls behind is closed as slow and reconnects with
//! its cursor (the "snapshot + live tail" of DESIGN §3).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};

use super::control::{Ask, Control, Decision};
use super::scrollback::Scrollback;
use super::wire::ServerMsg;
use crate::envelope::{Envelope, Payload};
use crate::outbox::{CloseReason, OutFrame, Outbox};
use crate::registry::{ConnId, Registry};
use crate::topic::TopicKey;

/// Limits and sizes.
#[derive(Debug, Clone, Copy)]
pub struct TerminalConfig {
    /// Bytes of output kept per terminal. Default 256 KiB.
    pub scrollback: usize,
    /// Terminals one user may view at once on this node. Default 5 (seed 003).
    pub per_user: usize,
    /// A terminal without host and viewers is freed after this long. Default 5 min.
    pub idle_free: Duration,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        Self {
            scrollback: super::scrollback::DEFAULT_CAPACITY,
            per_user: 5,
            idle_free: Duration::from_secs(300),
        }
    }
}

/// Why a viewer was not attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The user already views `per_user` other terminals.
    #[error(
        "TooManyTerminals: at most {0} terminals per user are open at once; close one to open another"
    )]
    TooMany(usize),
}

/// A refused input or control request, to report back to the sender.
pub type Refusal = &'static str;

/// Refusal: no host is connected.
pub const NO_HOST: &str =
    "Unavailable: the terminal's host is not connected; input is refused until it is back";

/// Initial terminal size.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// A message to publish on a terminal's relay topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// The terminal.
    pub id: String,
    /// Event name (see the module doc).
    pub event: &'static str,
    /// Payload.
    pub payload: Payload,
}

impl Relay {
    fn json(id: &str, event: &'static str, v: Value) -> Self {
        Self {
            id: id.to_owned(),
            event,
            payload: Payload::Json(Bytes::from(v.to_string())),
        }
    }

    /// The publication for the broker (`None` for an id no topic can carry; the transport
    /// refuses such ids before any relay exists).
    pub fn publication(self) -> Option<crate::broker::Publication> {
        Some(crate::broker::Publication {
            topic: relay_topic(&self.id)?,
            event: self.event.into(),
            payload: self.payload,
            origin: None,
        })
    }
}

/// The private topic a terminal's nodes relay on; `None` when `id` cannot be part of a topic.
pub fn relay_topic(id: &str) -> Option<TopicKey> {
    TopicKey::new(&format!("terminal:{id}"), true).ok()
}

/// The public topic whose presence lists a terminal's host, viewers and driver.
pub fn presence_topic(id: &str) -> Option<TopicKey> {
    TopicKey::new(&format!("terminal:{id}"), false).ok()
}

/// The terminal id of a relay topic.
fn id_of(topic: &TopicKey) -> Option<&str> {
    topic.name().strip_prefix("terminal:")
}

struct Viewer {
    conn: ConnId,
    sub: String,
    may_drive: bool,
    outbox: Outbox,
    /// Offset just past the last output byte queued to this viewer.
    sent: u64,
}

impl Viewer {
    /// Queues output `fresh` (ending at `end`), or, for a viewer whose queue is filling (a
    /// reader slower than the host), skips it: once its queue drains (checked on the next output
    /// and after each write of its connection, see [`Terminals::resync`]), the viewer is sent
    /// what it missed from the scrollback (or, if the window moved past it, a `snapshot` notice and the
    /// window). A slow viewer therefore never overflows, is never disconnected, and never slows
    /// the host or the other viewers (DESIGN §3: "a snapshot + live tail").
    fn send_output(&mut self, scrollback: &Scrollback, fresh: &Bytes, end: u64) {
        let start = end - fresh.len() as u64;
        if self.sent == start {
            if self.outbox.has_room_for(fresh.len()) {
                self.outbox.push(OutFrame::Binary(fresh.clone()));
                self.sent = end;
            }
            return;
        }
        self.resync(scrollback);
    }

    /// Sends a viewer that skipped output what it missed, if its queue has drained: as much as
    /// fits below half its bounds now, the rest after its next write.
    fn resync(&mut self, scrollback: &Scrollback) {
        if self.sent == scrollback.end() || !self.outbox.is_draining() {
            return;
        }
        let catch_up = scrollback.since(Some(self.sent));
        let mut at = catch_up.cursor - catch_up.chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        if !catch_up.continuous {
            self.outbox.push(OutFrame::Text(Bytes::from(
                ServerMsg::Snapshot { cursor: at }.to_text(),
            )));
        }
        for chunk in catch_up.chunks {
            if !self.outbox.has_room_for(chunk.len()) {
                break;
            }
            at += chunk.len() as u64;
            self.outbox.push(OutFrame::Binary(chunk));
        }
        self.sent = at;
    }
}

/// Authority state: only on the node holding the host connection.
struct Authority {
    conn: ConnId,
    outbox: Outbox,
    /// Offset of the host's next output byte.
    next_out: u64,
    control: Control<String>,
    /// Viewer ref → user, for announcing the driver.
    subs: HashMap<String, String>,
}

#[derive(Default)]
struct Load {
    /// Relay messages that arrived while the history was being read.
    pending: Vec<Arc<Envelope>>,
}

struct Term {
    scrollback: Scrollback,
    authority: Option<Authority>,
    /// What every node knows (from `host`, `ctl`, `size`).
    host: Option<String>,
    driver: Option<(String, String)>,
    size: (u16, u16),
    viewers: Vec<Viewer>,
    /// Local connections (host and viewers); the relay topic is subscribed while > 0.
    local: usize,
    /// `Some` while the history is being read; messages wait in it.
    loading: Option<Load>,
    /// Whether this node's view is current (history read, subscribed).
    loaded: bool,
    /// Woken when loading finishes (connections that arrived meanwhile wait on it).
    loaded_notify: Arc<tokio::sync::Notify>,
    empty_since: Option<Instant>,
}

impl Term {
    fn new(capacity: usize) -> Self {
        Self {
            scrollback: Scrollback::new(capacity),
            authority: None,
            host: None,
            driver: None,
            size: DEFAULT_SIZE,
            viewers: Vec::new(),
            local: 0,
            loading: None,
            loaded: false,
            loaded_notify: Arc::new(tokio::sync::Notify::new()),
            empty_since: None,
        }
    }

    fn to_viewers(&self, msg: &ServerMsg, except: Option<ConnId>) {
        let frame = OutFrame::Text(Bytes::from(msg.to_text()));
        for v in self.viewers.iter().filter(|v| Some(v.conn) != except) {
            v.outbox.push(frame.clone());
        }
    }

    fn to_host(&self, frame: OutFrame) {
        if let Some(a) = &self.authority {
            a.outbox.push(frame);
        }
    }

    fn touch(&mut self) {
        self.empty_since = (self.local == 0).then(Instant::now);
    }
}

/// The terminals of this node.
pub struct Terminals {
    config: TerminalConfig,
    /// This node's name in viewer refs (`<node>/<conn>`).
    node: String,
    map: Mutex<HashMap<String, Arc<Mutex<Term>>>>,
    /// Per user: terminal id → viewer connections of that user on it.
    users: Mutex<HashMap<String, HashMap<String, usize>>>,
    /// For presence of terminal connections on the public topic.
    registry: Weak<Registry>,
    /// Messages produced while applying relay messages, for the node's relay task (bounded:
    /// control messages are few and small; when full, the newest is dropped and logged).
    jobs: tokio::sync::mpsc::Sender<Job>,
    job_rx: Mutex<Option<tokio::sync::mpsc::Receiver<Job>>>,
}

/// Work for the node's relay task.
#[derive(Debug)]
pub enum Job {
    /// Publish on a relay topic.
    Relay(Relay),
    /// Share a terminal connection's presence with other nodes.
    Track(TopicKey, ConnId, String, crate::presence::PresencePayload),
    /// A terminal connection's presence ended: tell the other nodes.
    Untrack(TopicKey, ConnId),
}

/// Capacity of the relay task's queue.
const JOBS: usize = 4096;

impl std::fmt::Debug for Terminals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminals")
            .field("config", &self.config)
            .field("node", &self.node)
            .field("terminals", &self.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a terminal's lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse_json(env: &Envelope) -> Map<String, Value> {
    match &env.payload {
        Payload::Json(b) => serde_json::from_slice(b).unwrap_or_default(),
        Payload::Binary(_) => Map::new(),
    }
}

fn str_of<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

fn dim(m: &Map<String, Value>, k: &str) -> u16 {
    m.get(k)
        .and_then(Value::as_u64)
        .map_or(0, |v| v.min(u64::from(super::wire::MAX_DIM)) as u16)
}

impl Terminals {
    /// Terminals with `config`, sharing presence through `registry`.
    pub fn new(config: TerminalConfig, registry: Weak<Registry>) -> Self {
        let (jobs, rx) = tokio::sync::mpsc::channel(JOBS);
        Self {
            config,
            node: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            map: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            registry,
            jobs,
            job_rx: Mutex::new(Some(rx)),
        }
    }

    /// The queue of the node's relay task (taken once, by whoever runs that task).
    pub fn take_jobs(&self) -> Option<tokio::sync::mpsc::Receiver<Job>> {
        lock(&self.job_rx).take()
    }

    fn queue(&self, relays: Vec<Relay>) {
        for r in relays {
            if self.jobs.try_send(Job::Relay(r)).is_err() {
                tracing::warn!(
                    "terminal relay queue full or closed; a control message was dropped"
                );
            }
        }
    }

    /// How many terminals are held.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no terminal is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ref of local connection `conn`.
    pub fn conn_ref(&self, conn: ConnId) -> String {
        format!("{}/{conn}", self.node)
    }

    fn term(&self, id: &str) -> Arc<Mutex<Term>> {
        lock(&self.map)
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(Term::new(self.config.scrollback))))
            .clone()
    }

    fn existing(&self, id: &str) -> Option<Arc<Mutex<Term>>> {
        lock(&self.map).get(id).cloned()
    }

    // -----------------------------------------------------------------------------------------
    // Local connections
    // -----------------------------------------------------------------------------------------

    /// A local connection of terminal `id` starts. Returns whether the caller must load the
    /// relay topic (subscribe, read its history into [`Terminals::load_history`], then
    /// [`Terminals::finish_load`]) before attaching; `false` when this node's view is current
    /// or another connection is loading it (then wait for [`Terminals::is_loaded`]).
    pub fn open(&self, id: &str) -> bool {
        let term = self.term(id);
        let mut t = lock(&term);
        t.local += 1;
        t.touch();
        if t.loaded || t.loading.is_some() {
            return false;
        }
        t.loading = Some(Load::default());
        true
    }

    /// Whether this node's view of `id` is current.
    pub fn is_loaded(&self, id: &str) -> bool {
        self.existing(id).is_some_and(|t| lock(&t).loaded)
    }

    /// Waits until another connection finished loading `id` (see [`Terminals::open`]), at most
    /// `limit`; returns whether it did.
    pub async fn wait_loaded(&self, id: &str, limit: Duration) -> bool {
        let Some(term) = self.existing(id) else {
            return false;
        };
        let notify = lock(&term).loaded_notify.clone();
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before checking, so a finish between the check and the wait is not missed.
        notified.as_mut().enable();
        if lock(&term).loaded {
            return true;
        }
        tokio::time::timeout(limit, notified).await.is_ok()
    }

    /// Applies relay messages read from history (oldest first) while loading.
    pub fn load_history(&self, id: &str, messages: &[Arc<Envelope>]) -> Vec<Relay> {
        let term = self.term(id);
        let mut t = lock(&term);
        let mut out = Vec::new();
        for env in messages {
            self.apply_locked(id, &mut t, env, &mut out);
        }
        out
    }

    /// Ends loading: applies what arrived meanwhile and says `hello` (the authority answers
    /// with the current host, driver and size).
    pub fn finish_load(&self, id: &str) -> Vec<Relay> {
        let term = self.term(id);
        let mut t = lock(&term);
        let mut out = Vec::new();
        if let Some(load) = t.loading.take() {
            for env in &load.pending {
                self.apply_locked(id, &mut t, env, &mut out);
            }
        }
        t.loaded = true;
        t.loaded_notify.notify_waiters();
        out.push(Relay::json(id, "hello", json!({})));
        out
    }

    /// A local connection of `id` ended (after its detach). Returns whether it was the last
    /// one (the caller unsubscribes; the view goes stale and is reloaded next time).
    pub fn close(&self, id: &str) -> bool {
        let Some(term) = self.existing(id) else {
            return false;
        };
        let mut t = lock(&term);
        t.local = t.local.saturating_sub(1);
        t.touch();
        if t.local == 0 {
            t.loaded = false;
            t.loading = None;
            return true;
        }
        false
    }

    /// Attaches `conn` as the host of `id` on this node, replacing (and closing) a previous
    /// local host connection. The host is sent `connected`; every node is told.
    pub fn attach_host(&self, id: &str, conn: ConnId, outbox: Outbox) -> Vec<Relay> {
        let term = self.term(id);
        let mut t = lock(&term);
        // A host reconnecting on this node keeps the driver; a new authority starts with nobody
        // driving, and says so (every node's view of the driver must match its decisions).
        let (control, subs, fresh) = match t.authority.take() {
            Some(old) => {
                old.outbox.close(CloseReason::Server {
                    code: 4000,
                    reason: "replaced by a new host connection".into(),
                });
                (old.control, old.subs, false)
            }
            None => (Control::default(), HashMap::new(), true),
        };
        let mut relays = vec![Relay::json(
            id,
            "host",
            json!({"present": true, "r": self.conn_ref(conn)}),
        )];
        if fresh && t.driver.is_some() {
            relays.push(Relay::json(id, "ctl", json!({"r": null, "driver": null})));
        }
        let connected = ServerMsg::Connected {
            driver: if fresh {
                None
            } else {
                t.driver.as_ref().map(|(_, s)| s.clone())
            },
            cols: t.size.0,
            rows: t.size.1,
            cursor: t.scrollback.end(),
            continuous: true,
            host: true,
        };
        outbox.push(OutFrame::Text(Bytes::from(connected.to_text())));
        t.authority = Some(Authority {
            conn,
            outbox,
            next_out: t.scrollback.end(),
            control,
            subs,
        });
        self.track(id, conn, "host", "host", false);
        relays
    }

    /// Detaches host connection `conn` (if it is still the host here).
    pub fn detach_host(&self, id: &str, conn: ConnId) -> Vec<Relay> {
        let Some(term) = self.existing(id) else {
            return Vec::new();
        };
        let mut t = lock(&term);
        if t.authority.as_ref().is_none_or(|a| a.conn != conn) {
            return Vec::new();
        }
        t.authority = None;
        self.untrack(id, conn);
        vec![Relay::json(
            id,
            "host",
            json!({"present": false, "r": self.conn_ref(conn)}),
        )]
    }

    /// Attaches a viewer: sends it `connected` and the scrollback after `cursor` (or the held
    /// window), then live output. Refused past the per-user limit. Call after loading.
    pub fn attach_viewer(
        &self,
        id: &str,
        conn: ConnId,
        sub: &str,
        may_drive: bool,
        cursor: Option<u64>,
        outbox: Outbox,
    ) -> Result<(), AttachError> {
        {
            let mut users = lock(&self.users);
            let mine = users.entry(sub.to_owned()).or_default();
            if !mine.contains_key(id) && mine.len() >= self.config.per_user {
                return Err(AttachError::TooMany(self.config.per_user));
            }
            *mine.entry(id.to_owned()).or_default() += 1;
        }
        let term = self.term(id);
        let mut t = lock(&term);
        let catch_up = t.scrollback.since(cursor);
        let connected = ServerMsg::Connected {
            driver: t.driver.as_ref().map(|(_, s)| s.clone()),
            cols: t.size.0,
            rows: t.size.1,
            cursor: catch_up.cursor,
            continuous: catch_up.continuous,
            host: t.host.is_some(),
        };
        outbox.push(OutFrame::Text(Bytes::from(connected.to_text())));
        for chunk in catch_up.chunks {
            outbox.push(OutFrame::Binary(chunk));
        }
        let sent = catch_up.cursor;
        let drives = t
            .driver
            .as_ref()
            .is_some_and(|(r, _)| *r == self.conn_ref(conn));
        t.viewers.push(Viewer {
            conn,
            sub: sub.to_owned(),
            may_drive,
            outbox,
            sent,
        });
        drop(t);
        self.track(id, conn, sub, "viewer", drives);
        Ok(())
    }

    /// Detaches viewer `conn`; a driver that leaves releases.
    pub fn detach_viewer(&self, id: &str, conn: ConnId) -> Vec<Relay> {
        let Some(term) = self.existing(id) else {
            return Vec::new();
        };
        let mut t = lock(&term);
        let Some(pos) = t.viewers.iter().position(|v| v.conn == conn) else {
            return Vec::new();
        };
        let viewer = t.viewers.swap_remove(pos);
        let me = self.conn_ref(conn);
        let drove = t.driver.as_ref().is_some_and(|(r, _)| *r == me);
        drop(t);
        self.untrack(id, conn);
        let mut users = lock(&self.users);
        if let Some(mine) = users.get_mut(&viewer.sub) {
            if let Some(n) = mine.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    mine.remove(id);
                }
            }
            if mine.is_empty() {
                users.remove(&viewer.sub);
            }
        }
        if drove {
            vec![Relay::json(id, "ask", json!({"r": me, "ask": "left"}))]
        } else {
            Vec::new()
        }
    }

    /// After local viewer `conn`'s connection wrote what was queued: if it skipped output while
    /// it was behind, queue what it missed (see `Viewer::send_output`).
    pub fn resync(&self, id: &str, conn: ConnId) {
        let Some(term) = self.existing(id) else {
            return;
        };
        let mut t = lock(&term);
        let Term {
            viewers,
            scrollback,
            ..
        } = &mut *t;
        if let Some(v) = viewers.iter_mut().find(|v| v.conn == conn) {
            v.resync(scrollback);
        }
    }

    /// Output from local host connection `conn`, numbered; `None` when `conn` is no longer the
    /// host (a replaced connection's last bytes).
    pub fn host_output(&self, id: &str, conn: ConnId, bytes: &[u8]) -> Option<Relay> {
        let term = self.existing(id)?;
        let mut t = lock(&term);
        let a = t.authority.as_mut().filter(|a| a.conn == conn)?;
        let at = a.next_out;
        a.next_out += bytes.len() as u64;
        let mut payload = BytesMut::with_capacity(8 + bytes.len());
        payload.put_u64(at);
        payload.put_slice(bytes);
        Some(Relay {
            id: id.to_owned(),
            event: "o",
            payload: Payload::Binary(payload.freeze()),
        })
    }

    /// A resize from the local host (its PTY's size): every node's viewers are told.
    pub fn host_resize(&self, id: &str, conn: ConnId, cols: u16, rows: u16) -> Option<Relay> {
        let term = self.existing(id)?;
        let t = lock(&term);
        t.authority.as_ref().filter(|a| a.conn == conn)?;
        Some(Relay::json(
            id,
            "size",
            json!({"cols": cols, "rows": rows, "from": self.conn_ref(conn)}),
        ))
    }

    fn viewer<'a>(&self, t: &'a Term, conn: ConnId) -> Option<&'a Viewer> {
        t.viewers.iter().find(|v| v.conn == conn)
    }

    /// Input from local viewer `conn`: the message for the authority, or a refusal this node
    /// can already give (no host, not allowed, someone else drives).
    pub fn viewer_input(&self, id: &str, conn: ConnId, bytes: &[u8]) -> Result<Relay, Refusal> {
        let term = self.existing(id).ok_or(NO_HOST)?;
        let t = lock(&term);
        let header = self.precheck(&t, conn, true)?;
        let header = Value::Object(header).to_string();
        let mut payload = BytesMut::with_capacity(2 + header.len() + bytes.len());
        payload.put_u16(header.len() as u16);
        payload.put_slice(header.as_bytes());
        payload.put_slice(bytes);
        Ok(Relay {
            id: id.to_owned(),
            event: "i",
            payload: Payload::Binary(payload.freeze()),
        })
    }

    /// `take_control`, `release` or `resize` from local viewer `conn`.
    pub fn viewer_ask(
        &self,
        id: &str,
        conn: ConnId,
        ask: Ask,
        size: Option<(u16, u16)>,
    ) -> Result<Relay, Refusal> {
        let term = self.existing(id).ok_or(NO_HOST)?;
        let t = lock(&term);
        let mut header = self.precheck(&t, conn, ask != Ask::Release)?;
        let name = match (ask, size) {
            (_, Some((cols, rows))) => {
                header.insert("cols".into(), json!(cols));
                header.insert("rows".into(), json!(rows));
                "resize"
            }
            (Ask::TakeControl, None) => "take_control",
            (Ask::Release, None) => "release",
            (Ask::Input, None) => "input",
        };
        header.insert("ask".into(), json!(name));
        Ok(Relay::json(id, "ask", Value::Object(header)))
    }

    /// The header of a viewer's request, or the refusal this node can give on its own.
    fn precheck(
        &self,
        t: &Term,
        conn: ConnId,
        drives: bool,
    ) -> Result<Map<String, Value>, Refusal> {
        let v = self
            .viewer(t, conn)
            .ok_or("Invalid: not a viewer of this terminal")?;
        if t.host.is_none() {
            return Err(NO_HOST);
        }
        if drives && !v.may_drive {
            return Err(super::control::NOT_ALLOWED);
        }
        let me = self.conn_ref(conn);
        let mut m = Map::new();
        m.insert("r".into(), json!(me));
        m.insert("s".into(), json!(v.sub));
        m.insert("d".into(), json!(v.may_drive));
        Ok(m)
    }

    // -----------------------------------------------------------------------------------------
    // Relay messages
    // -----------------------------------------------------------------------------------------

    /// Applies one relay message (called by the registry for relay topics). What it produces is
    /// queued for the node's relay task.
    pub fn apply(&self, env: &Arc<Envelope>) {
        let Some(id) = id_of(&env.topic) else {
            return;
        };
        let Some(term) = self.existing(id) else {
            return; // no local connection: nothing to keep
        };
        let mut out = Vec::new();
        {
            let mut t = lock(&term);
            if let Some(load) = &mut t.loading {
                // Bounded by the history page the loader is reading plus live traffic meanwhile;
                // a loader that never finishes is dropped with its connection (`close`).
                if load.pending.len() < 100_000 {
                    load.pending.push(env.clone());
                }
                return;
            }
            self.apply_locked(id, &mut t, env, &mut out);
        }
        self.queue(out);
    }

    fn apply_locked(&self, id: &str, t: &mut Term, env: &Envelope, out: &mut Vec<Relay>) {
        match &*env.event {
            "o" => {
                let Payload::Binary(b) = &env.payload else {
                    return;
                };
                if b.len() < 8 {
                    return;
                }
                let at = u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]));
                if let Some(fresh) = t.scrollback.push_at(at, b.slice(8..)) {
                    let end = t.scrollback.end();
                    let Term {
                        viewers,
                        scrollback,
                        ..
                    } = t;
                    for v in viewers.iter_mut() {
                        v.send_output(scrollback, &fresh, end);
                    }
                }
            }
            "i" => {
                let Payload::Binary(b) = &env.payload else {
                    return;
                };
                if t.authority.is_none() || b.len() < 2 {
                    return;
                }
                let hlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
                let Some(header) = b.get(2..2 + hlen) else {
                    return;
                };
                let header: Map<String, Value> = serde_json::from_slice(header).unwrap_or_default();
                let input = b.slice(2 + hlen..);
                if self.decide(id, t, &header, Ask::Input, out) {
                    t.to_host(OutFrame::Binary(input));
                }
            }
            "ask" => {
                if t.authority.is_none() {
                    return;
                }
                let m = parse_json(env);
                match str_of(&m, "ask") {
                    Some("left") => {
                        let r = str_of(&m, "r").unwrap_or_default().to_owned();
                        if let Some(a) = &mut t.authority
                            && a.control.left(&r)
                        {
                            self.announce(id, t, out);
                        }
                    }
                    Some("take_control") => {
                        self.decide(id, t, &m, Ask::TakeControl, out);
                    }
                    Some("release") => {
                        self.decide(id, t, &m, Ask::Release, out);
                    }
                    Some("resize") => {
                        let (cols, rows) = (dim(&m, "cols"), dim(&m, "rows"));
                        if cols > 0 && rows > 0 && self.decide(id, t, &m, Ask::Input, out) {
                            let msg = ServerMsg::Resize { cols, rows };
                            t.to_host(OutFrame::Text(Bytes::from(msg.to_text())));
                            out.push(Relay::json(
                                id,
                                "size",
                                json!({"cols": cols, "rows": rows, "from": str_of(&m, "r")}),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            "ctl" => {
                let m = parse_json(env);
                let before = t.driver.clone();
                t.driver = match (str_of(&m, "r"), str_of(&m, "driver")) {
                    (Some(r), Some(s)) => Some((r.to_owned(), s.to_owned())),
                    _ => None,
                };
                if before != t.driver {
                    let msg = ServerMsg::Control {
                        driver: t.driver.as_ref().map(|(_, s)| s.clone()),
                    };
                    t.to_viewers(&msg, None);
                    t.to_host(OutFrame::Text(Bytes::from(msg.to_text())));
                    // Presence: the local viewers whose driving changed.
                    for v in &t.viewers {
                        let me = self.conn_ref(v.conn);
                        let was = before.as_ref().is_some_and(|(r, _)| *r == me);
                        let is = t.driver.as_ref().is_some_and(|(r, _)| *r == me);
                        if was != is {
                            self.track(id, v.conn, &v.sub, "viewer", is);
                        }
                    }
                }
            }
            "size" => {
                let m = parse_json(env);
                let (cols, rows) = (dim(&m, "cols"), dim(&m, "rows"));
                if cols == 0 || rows == 0 {
                    return;
                }
                if t.size == (cols, rows) {
                    return; // e.g. the authority's answer to a `hello`
                }
                t.size = (cols, rows);
                let from = str_of(&m, "from").and_then(|r| {
                    let (node, conn) = r.split_once('/')?;
                    (node == self.node).then(|| conn.parse().ok()).flatten()
                });
                t.to_viewers(&ServerMsg::Resize { cols, rows }, from);
            }
            "host" => {
                let m = parse_json(env);
                let r = str_of(&m, "r").unwrap_or_default().to_owned();
                let present = m.get("present").and_then(Value::as_bool) == Some(true);
                if present {
                    // Another node's host took over: the local one (if any) is replaced.
                    if let Some(a) = &t.authority
                        && self.conn_ref(a.conn) != r
                    {
                        a.outbox.close(CloseReason::Server {
                            code: 4000,
                            reason: "replaced by a new host connection".into(),
                        });
                        t.authority = None;
                    }
                    // A host that is back, or a new one replacing another (on any node): both
                    // are host changes viewers are told about. The authority's answer to `hello`
                    // names the same host again and is not one.
                    let changed = t.host.as_deref() != Some(r.as_str());
                    t.host = Some(r);
                    if changed {
                        t.to_viewers(&ServerMsg::HostConnected, None);
                    }
                } else if t.host.as_deref() == Some(r.as_str()) {
                    t.host = None;
                    t.to_viewers(&ServerMsg::HostDisconnected, None);
                }
            }
            "refused" => {
                let m = parse_json(env);
                let Some((node, conn)) = str_of(&m, "r").and_then(|r| r.split_once('/')) else {
                    return;
                };
                if node != self.node {
                    return;
                }
                let conn: ConnId = conn.parse().unwrap_or(0);
                if let Some(v) = self.viewer(t, conn) {
                    let message = str_of(&m, "message").unwrap_or("refused").to_owned();
                    v.outbox.push(OutFrame::Text(Bytes::from(
                        ServerMsg::Error { message }.to_text(),
                    )));
                }
            }
            "hello" => {
                if let Some(a) = &t.authority {
                    out.push(Relay::json(
                        id,
                        "host",
                        json!({"present": true, "r": self.conn_ref(a.conn)}),
                    ));
                    self.announce(id, t, out);
                    out.push(Relay::json(
                        id,
                        "size",
                        json!({"cols": t.size.0, "rows": t.size.1}),
                    ));
                }
            }
            _ => {}
        }
    }

    /// The authority decides a viewer's request; returns whether it was granted.
    fn decide(
        &self,
        id: &str,
        t: &mut Term,
        header: &Map<String, Value>,
        ask: Ask,
        out: &mut Vec<Relay>,
    ) -> bool {
        let (Some(r), Some(s)) = (str_of(header, "r"), str_of(header, "s")) else {
            return false;
        };
        let may_drive = header.get("d").and_then(Value::as_bool) == Some(true);
        let Some(a) = &mut t.authority else {
            return false;
        };
        a.subs.insert(r.to_owned(), s.to_owned());
        match a.control.ask(&r.to_owned(), may_drive, ask) {
            Decision::Refused(why) => {
                out.push(Relay::json(id, "refused", json!({"r": r, "message": why})));
                false
            }
            Decision::Granted { changed } => {
                if changed {
                    self.announce(id, t, out);
                }
                true
            }
        }
    }

    /// The authority announces the driver.
    fn announce(&self, id: &str, t: &Term, out: &mut Vec<Relay>) {
        let Some(a) = &t.authority else {
            return;
        };
        let driver = a.control.driver();
        let sub = driver.and_then(|r| a.subs.get(r));
        out.push(Relay::json(id, "ctl", json!({"r": driver, "driver": sub})));
    }

    // -----------------------------------------------------------------------------------------
    // Presence and housekeeping
    // -----------------------------------------------------------------------------------------

    /// Presence of a local terminal connection on the public topic. Called with or without the
    /// terminal's lock held: it takes no terminal lock itself.
    fn track(&self, id: &str, conn: ConnId, sub: &str, role: &str, driver: bool) {
        let (Some(registry), Some(topic)) = (self.registry.upgrade(), presence_topic(id)) else {
            return;
        };
        let sub = sub.to_owned();
        let mut meta = Map::new();
        meta.insert("user".into(), json!(sub));
        meta.insert("role".into(), json!(role));
        meta.insert("driver".into(), json!(driver));
        registry.track_detached(&topic, conn, &sub, meta.clone());
        let _ = self.jobs.try_send(Job::Track(topic, conn, sub, meta));
    }

    fn untrack(&self, id: &str, conn: ConnId) {
        if let (Some(registry), Some(topic)) = (self.registry.upgrade(), presence_topic(id)) {
            registry.untrack_detached(&topic, conn);
            // Other nodes got the track through the broker; they must get the leave too.
            let _ = self.jobs.try_send(Job::Untrack(topic, conn));
        }
    }

    /// Frees terminals nobody has used for `idle_free`; returns how many were freed.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut map = lock(&self.map);
        let before = map.len();
        map.retain(|_, term| {
            let t = lock(term);
            t.empty_since
                .is_none_or(|since| now.duration_since(since) < self.config.idle_free)
        });
        before - map.len()
    }
}

#[cfg(test)]
mod tests;
