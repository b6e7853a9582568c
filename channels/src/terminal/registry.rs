//! Every terminal this node relays: its host connection, its viewers, its scrollback and driver.
//!
//! A terminal exists while it has a host or viewers, and for [`TerminalConfig::idle_free`]
//! after the last of them left (so a host or a viewer that reconnects finds its scrollback);
//! [`Terminals::sweep`] frees it after that.
//!
//! Every operation takes the terminal's lock briefly and never awaits: output is appended to the
//! scrollback and pushed to every viewer's outbox under the same lock as a viewer's catch-up, so
//! a viewer gets each byte once, in order (the catch-up ends exactly where the live tail
//! starts). Outboxes are bounded: a viewer that falls behind is closed as slow and reconnects
//! with its cursor (getting the held window: the "snapshot + live tail" of DESIGN §3); the host
//! is closed the same way if it stops reading input.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::control::{Ask, Control, Decision};
use super::scrollback::Scrollback;
use super::wire::ServerMsg;
use crate::outbox::{CloseReason, OutFrame, Outbox};
use crate::registry::ConnId;

/// Limits and sizes.
#[derive(Debug, Clone, Copy)]
pub struct TerminalConfig {
    /// Bytes of output kept per terminal. Default 256 KiB.
    pub scrollback: usize,
    /// Terminals one user may view at once. Default 5 (seed 003).
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

struct Viewer {
    conn: ConnId,
    sub: String,
    may_drive: bool,
    outbox: Outbox,
}

struct Term {
    scrollback: Scrollback,
    control: Control<ConnId>,
    host: Option<(ConnId, Outbox)>,
    viewers: Vec<Viewer>,
    size: (u16, u16),
    /// Since when nobody is attached (for `sweep`).
    empty_since: Option<Instant>,
}

impl Term {
    fn new(capacity: usize) -> Self {
        Self {
            scrollback: Scrollback::new(capacity),
            control: Control::default(),
            host: None,
            viewers: Vec::new(),
            size: DEFAULT_SIZE,
            empty_since: None,
        }
    }

    fn driver_sub(&self) -> Option<String> {
        let d = self.control.driver()?;
        self.viewers
            .iter()
            .find(|v| v.conn == *d)
            .map(|v| v.sub.clone())
    }

    fn to_viewers(&self, msg: &ServerMsg) {
        let frame = OutFrame::Text(Bytes::from(msg.to_text()));
        for v in &self.viewers {
            v.outbox.push(frame.clone());
        }
    }

    fn to_host(&self, frame: OutFrame) {
        if let Some((_, outbox)) = &self.host {
            outbox.push(frame);
        }
    }

    fn announce_driver(&self) {
        self.to_viewers(&ServerMsg::Control {
            driver: self.driver_sub(),
        });
        self.to_host(OutFrame::Text(Bytes::from(
            ServerMsg::Control {
                driver: self.driver_sub(),
            }
            .to_text(),
        )));
    }

    fn touch(&mut self) {
        self.empty_since = (self.host.is_none() && self.viewers.is_empty()).then(Instant::now);
    }
}

/// The terminals of this node.
#[derive(Default)]
pub struct Terminals {
    config: TerminalConfig,
    map: Mutex<HashMap<String, Arc<Mutex<Term>>>>,
    /// Per user: terminal id → viewer connections of that user on it.
    users: Mutex<HashMap<String, HashMap<String, usize>>>,
}

impl std::fmt::Debug for Terminals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminals")
            .field("config", &self.config)
            .field("terminals", &self.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a terminal's lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Terminals {
    /// Terminals with `config`.
    pub fn new(config: TerminalConfig) -> Self {
        Self {
            config,
            ..Self::default()
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

    fn term(&self, id: &str) -> Arc<Mutex<Term>> {
        lock(&self.map)
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(Term::new(self.config.scrollback))))
            .clone()
    }

    fn existing(&self, id: &str) -> Option<Arc<Mutex<Term>>> {
        lock(&self.map).get(id).cloned()
    }

    /// Attaches `conn` as the host of `id`, replacing (and closing) a previous host connection:
    /// a host that reconnects before its old connection timed out takes over at once. The host
    /// is sent `connected` with the current size; viewers are told `host_connected`.
    pub fn attach_host(&self, id: &str, conn: ConnId, outbox: Outbox) {
        let term = self.term(id);
        let mut t = lock(&term);
        if let Some((_, old)) = t.host.take() {
            old.close(CloseReason::Server {
                code: 4000,
                reason: "replaced by a new host connection".into(),
            });
        }
        let connected = ServerMsg::Connected {
            driver: t.driver_sub(),
            cols: t.size.0,
            rows: t.size.1,
            cursor: t.scrollback.end(),
            continuous: true,
            host: true,
        };
        outbox.push(OutFrame::Text(Bytes::from(connected.to_text())));
        t.host = Some((conn, outbox));
        t.to_viewers(&ServerMsg::HostConnected);
        t.touch();
    }

    /// Detaches host connection `conn` (if it is still the host); viewers are told.
    pub fn detach_host(&self, id: &str, conn: ConnId) {
        let Some(term) = self.existing(id) else {
            return;
        };
        let mut t = lock(&term);
        if t.host.as_ref().is_some_and(|(c, _)| *c == conn) {
            t.host = None;
            t.to_viewers(&ServerMsg::HostDisconnected);
            t.touch();
        }
    }

    /// Attaches a viewer: sends it `connected` and the scrollback after `cursor` (or the held
    /// window), then live output. Refused past the per-user limit.
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
            driver: t.driver_sub(),
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
        t.viewers.push(Viewer {
            conn,
            sub: sub.to_owned(),
            may_drive,
            outbox,
        });
        t.touch();
        Ok(())
    }

    /// Detaches viewer `conn`; a driver that leaves releases (everyone is told).
    pub fn detach_viewer(&self, id: &str, conn: ConnId) {
        let Some(term) = self.existing(id) else {
            return;
        };
        let mut t = lock(&term);
        let Some(pos) = t.viewers.iter().position(|v| v.conn == conn) else {
            return;
        };
        let viewer = t.viewers.swap_remove(pos);
        if t.control.left(&conn) {
            t.announce_driver();
        }
        t.touch();
        drop(t);
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
    }

    /// Output from host connection `conn`: kept in the scrollback and sent to every viewer.
    /// Ignored when `conn` is no longer the host (a replaced connection's last bytes).
    pub fn output(&self, id: &str, conn: ConnId, bytes: Bytes) {
        let Some(term) = self.existing(id) else {
            return;
        };
        let mut t = lock(&term);
        if t.host.as_ref().is_none_or(|(c, _)| *c != conn) {
            return;
        }
        t.scrollback.push(bytes.clone());
        let frame = OutFrame::Binary(bytes);
        for v in &t.viewers {
            v.outbox.push(frame.clone());
        }
    }

    /// Input from viewer `conn`, or the reason it was refused.
    pub fn input(&self, id: &str, conn: ConnId, bytes: Bytes) -> Result<(), Refusal> {
        self.ask(id, conn, Ask::Input, Some(OutFrame::Binary(bytes)))
    }

    /// A viewer's `take_control` or `release`.
    pub fn control(&self, id: &str, conn: ConnId, ask: Ask) -> Result<(), Refusal> {
        self.ask(id, conn, ask, None)
    }

    fn ask(
        &self,
        id: &str,
        conn: ConnId,
        ask: Ask,
        to_host: Option<OutFrame>,
    ) -> Result<(), Refusal> {
        let term = self.existing(id).ok_or(NO_HOST)?;
        let mut t = lock(&term);
        let may_drive = t
            .viewers
            .iter()
            .find(|v| v.conn == conn)
            .is_some_and(|v| v.may_drive);
        if to_host.is_some() && t.host.is_none() {
            return Err(NO_HOST);
        }
        match t.control.ask(&conn, may_drive, ask) {
            Decision::Refused(why) => Err(why),
            Decision::Granted { changed } => {
                if changed {
                    t.announce_driver();
                }
                if let Some(frame) = to_host {
                    t.to_host(frame);
                }
                Ok(())
            }
        }
    }

    /// A resize: from the host (its PTY's size) or from a viewer allowed to drive (it takes
    /// the keyboard as if it typed). Everyone else is told the new size.
    pub fn resize(&self, id: &str, conn: ConnId, cols: u16, rows: u16) -> Result<(), Refusal> {
        let term = self.existing(id).ok_or(NO_HOST)?;
        let mut t = lock(&term);
        let from_host = t.host.as_ref().is_some_and(|(c, _)| *c == conn);
        if !from_host {
            let may_drive = t
                .viewers
                .iter()
                .find(|v| v.conn == conn)
                .is_some_and(|v| v.may_drive);
            match t.control.ask(&conn, may_drive, Ask::Input) {
                Decision::Refused(why) => return Err(why),
                Decision::Granted { changed: true } => t.announce_driver(),
                Decision::Granted { changed: false } => {}
            }
        }
        t.size = (cols, rows);
        let msg = ServerMsg::Resize { cols, rows };
        if !from_host {
            t.to_host(OutFrame::Text(Bytes::from(msg.to_text())));
        }
        let frame = OutFrame::Text(Bytes::from(msg.to_text()));
        for v in t.viewers.iter().filter(|v| v.conn != conn) {
            v.outbox.push(frame.clone());
        }
        Ok(())
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
mod tests {
    use super::*;
    use crate::outbox::OutboxLimits;

    fn outbox() -> Outbox {
        Outbox::new(OutboxLimits::default())
    }

    fn frames(o: &Outbox) -> Vec<OutFrame> {
        let mut v = Vec::new();
        o.drain(&mut v);
        v
    }

    fn text(f: &OutFrame) -> serde_json::Value {
        match f {
            OutFrame::Text(b) => serde_json::from_slice(b).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    fn bytes(fs: &[OutFrame]) -> Vec<u8> {
        fs.iter()
            .filter_map(|f| match f {
                OutFrame::Binary(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn output_reaches_viewers_and_a_reconnect_resumes_without_duplicates() {
        let ts = Terminals::default();
        let host = outbox();
        ts.attach_host("t1", 1, host.clone());
        assert_eq!(text(&frames(&host)[0])["type"], "connected");
        let v = outbox();
        ts.attach_viewer("t1", 2, "alice", true, None, v.clone())
            .unwrap();
        ts.output("t1", 1, Bytes::from_static(b"hello "));
        let got = frames(&v);
        assert_eq!(text(&got[0])["host"], true);
        assert_eq!(bytes(&got), b"hello ");
        // The viewer drops after offset 6; output continues; it comes back with cursor 6.
        ts.detach_viewer("t1", 2);
        ts.output("t1", 1, Bytes::from_static(b"world"));
        let again = outbox();
        ts.attach_viewer("t1", 3, "alice", true, Some(6), again.clone())
            .unwrap();
        ts.output("t1", 1, Bytes::from_static(b"!"));
        let got = frames(&again);
        assert_eq!(text(&got[0])["cursor"], 11);
        assert_eq!(text(&got[0])["continuous"], true);
        assert_eq!(bytes(&got), b"world!");
    }

    #[test]
    fn only_the_driver_types_and_handoff_is_announced() {
        let ts = Terminals::default();
        let host = outbox();
        ts.attach_host("t", 1, host.clone());
        frames(&host);
        let (owner, guest, agent) = (outbox(), outbox(), outbox());
        ts.attach_viewer("t", 10, "owner", true, None, owner.clone())
            .unwrap();
        ts.attach_viewer("t", 11, "guest", false, None, guest.clone())
            .unwrap();
        ts.attach_viewer("t", 12, "agent", true, None, agent.clone())
            .unwrap();
        assert_eq!(
            ts.input("t", 11, Bytes::from_static(b"x")),
            Err(super::super::control::NOT_ALLOWED)
        );
        ts.input("t", 10, Bytes::from_static(b"ls\r")).unwrap();
        let to_host = frames(&host);
        assert_eq!(text(&to_host[0])["driver"], "owner");
        assert_eq!(bytes(&to_host), b"ls\r");
        assert_eq!(
            ts.input("t", 12, Bytes::from_static(b"x")),
            Err(super::super::control::NOT_DRIVER)
        );
        ts.control("t", 12, Ask::TakeControl).unwrap();
        let seen = frames(&guest);
        let last = text(seen.last().unwrap());
        assert_eq!(
            (last["type"].as_str(), last["driver"].as_str()),
            (Some("control"), Some("agent"))
        );
        ts.input("t", 12, Bytes::from_static(b"y")).unwrap();
        assert_eq!(bytes(&frames(&host)), b"y");
        // The driver leaves: nobody drives.
        ts.detach_viewer("t", 12);
        let last = text(frames(&owner).last().unwrap());
        assert_eq!(last["driver"], serde_json::Value::Null);
    }

    #[test]
    fn without_a_host_input_is_refused_and_viewers_are_told() {
        let ts = Terminals::default();
        let v = outbox();
        ts.attach_viewer("t", 2, "u", true, None, v.clone())
            .unwrap();
        assert_eq!(text(&frames(&v)[0])["host"], false);
        assert_eq!(ts.input("t", 2, Bytes::from_static(b"x")), Err(NO_HOST));
        let host = outbox();
        ts.attach_host("t", 1, host.clone());
        ts.detach_host("t", 1);
        let seen: Vec<_> = frames(&v).iter().map(|f| text(f)["type"].clone()).collect();
        assert_eq!(seen, ["host_connected", "host_disconnected"]);
    }

    #[test]
    fn a_user_may_view_five_terminals() {
        let ts = Terminals::default();
        for k in 0..5 {
            ts.attach_viewer(&format!("t{k}"), k, "u", true, None, outbox())
                .unwrap();
        }
        // Another connection to a terminal already open is fine; a sixth terminal is not.
        ts.attach_viewer("t0", 99, "u", true, None, outbox())
            .unwrap();
        assert_eq!(
            ts.attach_viewer("t5", 5, "u", true, None, outbox()),
            Err(AttachError::TooMany(5))
        );
        ts.attach_viewer("t5", 6, "other", true, None, outbox())
            .unwrap();
        ts.detach_viewer("t4", 4);
        ts.attach_viewer("t5", 7, "u", true, None, outbox())
            .unwrap();
    }

    #[test]
    fn idle_terminals_are_freed() {
        let ts = Terminals::new(TerminalConfig {
            idle_free: Duration::from_secs(60),
            ..TerminalConfig::default()
        });
        ts.attach_viewer("t", 1, "u", true, None, outbox()).unwrap();
        ts.attach_host("busy", 2, outbox());
        ts.detach_viewer("t", 1);
        let now = Instant::now();
        assert_eq!(ts.sweep(now), 0);
        assert_eq!(ts.sweep(now + Duration::from_secs(61)), 1);
        assert_eq!(ts.len(), 1, "the terminal with a host stays");
    }
}
