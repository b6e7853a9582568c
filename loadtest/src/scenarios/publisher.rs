//! The publisher: kind-3 broadcasts at a steady rate on one connection joined to every topic.
//!
//! Message `i` goes to topic `i % topics` with sequence number `i / topics` and is due at
//! `i / rate` seconds. A 1 ms timer wakes the loop, which sends every message that is due in one
//! write: if the loop falls behind (a slow write, a busy core), the next tick catches up in a
//! burst, and the total never exceeds the plan. Each payload is stamped when it is built, right
//! before the write, so latency covers the server and the network, not our own lateness.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use channels::Payload;
use channels::codec::binary::encode_user_broadcast_push;
use channels::ws_frame::Opcode;
use tokio_util::sync::CancellationToken;

use crate::client::WsConn;
use crate::live::Live;
use crate::payload::{self, Stamp};
use crate::phoenix;
use crate::{args, clock};

/// How often the pacing loop wakes, unless the plan says otherwise ([`Plan::with_tick`]).
const TICK: Duration = Duration::from_millis(1);

/// Most bytes written per tick when catching up, so a long stall does not build one huge
/// buffer; the rest follows on the next ticks.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Longest a single write may block before the publisher gives up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How far past `--duration` publishing may run (catching up) before it stops regardless.
const OVERRUN: Duration = Duration::from_secs(10);

/// The shape of a published payload (both carry the send time and sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// fanout's `{"t":…,"s":…,"p":"xx…"}` ([`payload::build`]).
    Flat,
    /// A chat token `{"text":"~<s>.<t>|xx…"}` ([`payload::build_text`]): exactly one `text`
    /// field, so the hub merges the deltas of a reader that falls behind.
    ChatText,
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Wire topics, in join order (join ref of topic `k` is `k + 1`).
    pub topics: Arc<Vec<String>>,
    /// Messages in total.
    pub total: u64,
    /// Messages per second.
    pub rate: u64,
    /// Payload bytes.
    pub size: usize,
    /// Broadcast event name.
    pub event: String,
    /// Planned publishing time.
    pub duration: Duration,
    /// Payload shape.
    pub body: Body,
    /// How often the pacing loop wakes and writes what is due.
    pub tick: Duration,
}

impl Plan {
    /// The plan for `rate` msg/s over `duration`.
    pub fn new(
        topics: Arc<Vec<String>>,
        rate: u64,
        duration: Duration,
        size: usize,
        event: &str,
    ) -> Self {
        Self {
            topics,
            total: args::messages_total(rate, duration),
            rate,
            size,
            event: event.to_owned(),
            duration,
            body: Body::Flat,
            tick: TICK,
        }
    }

    /// The same plan waking every `tick` (at least 1 ms). A coarser tick writes more messages
    /// per system call (on the publisher and on the server's read side) at the price of
    /// sending each up to `tick` after it was due; latency is unaffected, as every payload is
    /// stamped right before its write.
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick.max(TICK);
        self
    }

    /// The same plan with payloads of shape `body`.
    pub fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// Messages topic `k` gets.
    pub fn per_topic(&self, k: usize) -> u64 {
        let n = self.topics.len() as u64;
        self.total / n + u64::from((k as u64) < self.total % n)
    }

    /// Topic number and sequence number of message `i`.
    pub fn slot(&self, i: u64) -> (usize, u64) {
        let n = self.topics.len() as u64;
        ((i % n) as usize, i / n)
    }

    /// When message `i` is due, from the start: `i / rate`, rounded up to the nanosecond (so
    /// that [`due`](Self::due) at that moment includes it).
    pub fn due_at(&self, i: u64) -> Duration {
        let ns = (u128::from(i) * 1_000_000_000).div_ceil(u128::from(self.rate.max(1)));
        Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
    }

    /// Messages due `elapsed` after the start: message `i` is due at `i / rate`.
    pub fn due(&self, elapsed: Duration) -> u64 {
        let due = (elapsed.as_secs_f64() * self.rate as f64).floor() as u64 + 1;
        due.min(self.total)
    }
}

/// How publishing went.
#[derive(Debug, Clone)]
pub struct Published {
    /// Messages written.
    pub sent: u64,
    /// When the first message was due.
    pub started: Instant,
    /// The same moment on [`clock`].
    pub started_ns: u64,
    /// From start to the last write.
    pub elapsed: Duration,
    /// Why publishing stopped early, if it did.
    pub error: Option<String>,
}

/// Publishes `plan` on `conn`, which has joined every topic in order.
pub async fn publish(
    conn: &mut WsConn,
    plan: &Plan,
    stop: &CancellationToken,
    live: &Live,
    heartbeat: Duration,
) -> Published {
    let started = Instant::now();
    let mut out = Published {
        sent: 0,
        started,
        started_ns: clock::now_ns(),
        elapsed: Duration::ZERO,
        error: None,
    };
    let join_refs: Vec<String> = (1..=plan.topics.len()).map(|k| k.to_string()).collect();
    let mut tick = tokio::time::interval(plan.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut body = Vec::with_capacity(plan.size + 64);
    let mut msg_ref = String::with_capacity(24);
    let mut next_ref: u64 = 1_000;
    let give_up = started + plan.duration + OVERRUN;
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    while out.sent < plan.total {
        tokio::select! {
            biased;
            _ = &mut stopped => {
                out.error = Some("stopped".into());
                break;
            }
            _ = tick.tick() => {
                let due = plan.due(started.elapsed());
                let before = out.sent;
                while out.sent < due && conn.queued() < MAX_BATCH_BYTES {
                    let (k, seq) = plan.slot(out.sent);
                    let stamp = Stamp { t: clock::now_ns(), s: seq };
                    match plan.body {
                        Body::Flat => payload::build(&mut body, stamp, plan.size),
                        Body::ChatText => payload::build_text(&mut body, stamp, plan.size),
                    }
                    msg_ref.clear();
                    let _ = write!(msg_ref, "{next_ref}");
                    next_ref += 1;
                    let json = Payload::Json(Bytes::copy_from_slice(&body));
                    let Some(frame) = encode_user_broadcast_push(
                        &join_refs[k], &msg_ref, &plan.topics[k], &plan.event, &json,
                    ) else {
                        out.error = Some("topic or event too long for a kind-3 frame".into());
                        break;
                    };
                    conn.queue(Opcode::Binary, &frame);
                    out.sent += 1;
                }
                if out.error.is_some() {
                    break;
                }
                match tokio::time::timeout(WRITE_TIMEOUT, conn.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        out.error = Some(format!("publish write: {}", e.kind()));
                        break;
                    }
                    Err(_) => {
                        out.error = Some("publish write blocked for 10 s".into());
                        break;
                    }
                }
                Live::add(&live.sent, out.sent - before);
                out.elapsed = started.elapsed();
                if Instant::now() > give_up {
                    out.error = Some(format!("could not keep up: {} of {} sent", out.sent, plan.total));
                    break;
                }
            }
            _ = beat.tick() => {
                let hb = phoenix::heartbeat(next_ref);
                next_ref += 1;
                if let Err(e) = conn.send_within(WRITE_TIMEOUT, Opcode::Text, &hb).await {
                    out.error = Some(format!("heartbeat write: {}", e.kind()));
                    break;
                }
            }
            read = conn.read_some() => {
                if let Some(why) = drain_replies(conn, read) {
                    out.error = Some(why);
                    break;
                }
            }
        }
    }
    out
}

/// Consumes what the server sent the publisher (heartbeat replies, nothing else with
/// `ack: false`); returns why to stop when the connection or a channel ended.
fn drain_replies(conn: &mut WsConn, read: std::io::Result<usize>) -> Option<String> {
    match read {
        Ok(0) => return Some("publisher: server closed the connection".into()),
        Err(e) => return Some(format!("publisher read: {}", e.kind())),
        Ok(_) => {}
    }
    loop {
        match conn.next_frame() {
            Ok(None) => return None,
            Ok(Some((Opcode::Close, _))) => {
                return Some("publisher: server sent close".into());
            }
            Ok(Some((Opcode::Text, t))) => {
                if memchr::memmem::find(t, b"\"phx_error\"").is_some()
                    || memchr::memmem::find(t, b"\"phx_close\"").is_some()
                {
                    return Some("publisher: channel closed by server".into());
                }
                if memchr::memmem::find(t, b"\"status\":\"error\"").is_some() {
                    let text = String::from_utf8_lossy(&t[..t.len().min(200)]).into_owned();
                    return Some(format!("publisher: error reply {text}"));
                }
            }
            Ok(Some(_)) => {}
            Err(e) => return Some(format!("publisher: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(topics: usize, rate: u64, secs: u64) -> Plan {
        let names = (0..topics).map(|k| format!("realtime:t-{k}")).collect();
        Plan::new(Arc::new(names), rate, Duration::from_secs(secs), 100, "lt")
    }

    #[test]
    fn messages_are_spread_round_robin() {
        let p = plan(3, 10, 1);
        assert_eq!(p.total, 10);
        assert_eq!(
            (0..3).map(|k| p.per_topic(k)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!(p.slot(0), (0, 0));
        assert_eq!(p.slot(4), (1, 1));
        assert_eq!(p.slot(9), (0, 3));
    }

    #[test]
    fn pacing_catches_up_without_exceeding_the_total() {
        let p = plan(1, 1000, 10);
        assert_eq!(p.due(Duration::ZERO), 1);
        assert_eq!(p.due(Duration::from_micros(999)), 1);
        assert_eq!(p.due(Duration::from_millis(1)), 2);
        assert_eq!(
            p.due(Duration::from_millis(2500)),
            2501,
            "a late tick sends the backlog"
        );
        assert_eq!(p.due(Duration::from_secs(60)), 10_000);
    }

    #[test]
    fn due_times_agree_with_due_counts() {
        let p = plan(3, 700, 2);
        for i in [0, 1, 2, 699, 700, 1399] {
            let at = p.due_at(i);
            assert_eq!(p.due(at), i + 1, "message {i} is due at {at:?}");
        }
        assert_eq!(p.due_at(700), Duration::from_secs(1));
    }
}
