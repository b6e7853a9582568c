//! The inserter: rows into `build_events` at a steady rate over a few database connections.
//!
//! Row `i` goes to session `i % sessions` with sequence number `i / sessions` and is due at
//! `i / rate` seconds (the publisher's [`Plan`]). Each connection takes the next row number from
//! a shared counter, waits until that row is due and inserts it in its own transaction
//! (autocommit), so a slow commit holds up only its own connection while the next due rows go
//! out on the others. A row is stamped right before its INSERT is sent, so insert→receive covers
//! the statement, the trigger, the commit, the hub's feed and the WebSocket, not our lateness
//! (which is measured apart, as "behind schedule").
//!
//! Two rows of one session can be in flight at once only when an insert took longer than
//! `sessions / rate` seconds; their commit order, and so their delivery order, is then not ours
//! to decide. Such inserts are counted, so out-of-order deliveries can be told apart from them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use super::publisher::Plan;
use crate::clock;
use crate::db;
use crate::live::Live;
use crate::metrics::{self, Hist};

/// One row: the session (as text, cast in SQL), the event type, the stamp in `payload`.
pub const INSERT_ROW: &str = "insert into public.build_events (session_id, type, message, payload) \
     values ($1::text::uuid, $2::text, 'x', jsonb_build_object('t', $3::int8, 's', $4::int8))";

/// Longest one INSERT may take before it is given up (its commit then is unknown).
const INSERT_TIMEOUT: Duration = Duration::from_secs(10);

/// How far past `--duration` inserting may run (catching up) before it stops regardless.
const OVERRUN: Duration = Duration::from_secs(10);

/// How inserting went.
#[derive(Debug)]
pub struct Inserted {
    /// Rows whose INSERT was sent.
    pub sent: u64,
    /// Rows whose INSERT was acknowledged (committed), per session.
    pub committed: Vec<u64>,
    /// The same by row number: bit `i % 64` of word `i / 64`.
    pub committed_rows: Vec<u64>,
    /// Failed inserts by error kind.
    pub errors: BTreeMap<String, u64>,
    /// From just before an INSERT was sent to its reply, the commit included.
    pub commit: Hist,
    /// How late each INSERT was sent after its row was due.
    pub behind: Hist,
    /// Inserts sent while an earlier row of the same session was still in flight.
    pub overlapping: u64,
    /// When the first row was due.
    pub started: Instant,
    /// The same moment on [`clock`].
    pub started_ns: u64,
    /// From start to the last reply.
    pub elapsed: Duration,
    /// Why inserting stopped early, if it did.
    pub stopped: Option<String>,
}

impl Inserted {
    /// Rows committed in all.
    pub fn committed_total(&self) -> u64 {
        self.committed.iter().sum()
    }

    /// Whether row `i` of the plan was committed.
    pub fn row_committed(&self, i: u64) -> bool {
        self.committed_rows
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// What every inserting connection shares.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    /// Session ids, by topic number of the plan.
    sessions: Arc<Vec<String>>,
    event: String,
    started: Instant,
    /// The next row number to take.
    next: AtomicU64,
    /// Inserts in flight, per session.
    in_flight: Vec<AtomicU32>,
    /// Committed rows, per session.
    committed: Vec<AtomicU64>,
    /// Committed rows, one bit per row number.
    committed_rows: Vec<AtomicU64>,
    /// Set when inserting must end (could not keep up, or stopped).
    halt: AtomicBool,
    stop: CancellationToken,
    live: Arc<Live>,
}

/// One connection's figures.
#[derive(Debug)]
struct Part {
    sent: u64,
    errors: BTreeMap<String, u64>,
    commit: Hist,
    behind: Hist,
    overlapping: u64,
    last_ack: Instant,
    stopped: Option<String>,
}

/// Inserts `plan`'s rows (topic `k` of the plan is session `sessions[k]`) with type `event`,
/// one connection per client. The caller keeps the clients, so their backends outlive the
/// inserting (their CPU is read after the deliveries).
pub async fn insert(
    clients: &[Arc<Client>],
    plan: &Plan,
    sessions: Arc<Vec<String>>,
    event: &str,
    stop: &CancellationToken,
    live: &Arc<Live>,
) -> anyhow::Result<Inserted> {
    let mut prepared = Vec::with_capacity(clients.len());
    for client in clients {
        let stmt = client.prepare(INSERT_ROW).await?;
        prepared.push((client.clone(), stmt));
    }
    let started = Instant::now();
    let started_ns = clock::now_ns();
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        event: event.to_owned(),
        started,
        next: AtomicU64::new(0),
        in_flight: (0..sessions.len()).map(|_| AtomicU32::new(0)).collect(),
        committed: (0..sessions.len()).map(|_| AtomicU64::new(0)).collect(),
        committed_rows: (0..plan.total.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect(),
        sessions,
        halt: AtomicBool::new(false),
        stop: stop.clone(),
        live: live.clone(),
    });
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|(client, stmt)| tokio::spawn(connection(shared.clone(), client, stmt)))
        .collect();
    let mut out = Inserted {
        sent: 0,
        committed: Vec::new(),
        committed_rows: Vec::new(),
        errors: BTreeMap::new(),
        commit: metrics::hist()?,
        behind: metrics::hist()?,
        overlapping: 0,
        started,
        started_ns,
        elapsed: Duration::ZERO,
        stopped: None,
    };
    for task in tasks {
        // Every wait inside a task is bounded (by the plan, INSERT_TIMEOUT and OVERRUN).
        let part = task.await??;
        out.sent += part.sent;
        for (k, n) in part.errors {
            *out.errors.entry(k).or_default() += n;
        }
        out.commit.add(&part.commit)?;
        out.behind.add(&part.behind)?;
        out.overlapping += part.overlapping;
        out.elapsed = out
            .elapsed
            .max(part.last_ack.saturating_duration_since(started));
        if out.stopped.is_none() {
            out.stopped = part.stopped;
        }
    }
    out.committed = shared
        .committed
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    out.committed_rows = shared
        .committed_rows
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    Ok(out)
}

/// One inserting connection: take the next row, wait until it is due, insert it, repeat.
async fn connection(
    shared: Arc<Shared>,
    client: Arc<Client>,
    stmt: Statement,
) -> anyhow::Result<Part> {
    let s = &*shared;
    let mut part = Part {
        sent: 0,
        errors: BTreeMap::new(),
        commit: metrics::hist()?,
        behind: metrics::hist()?,
        overlapping: 0,
        last_ack: s.started,
        stopped: None,
    };
    let give_up = s.started + s.plan.duration + OVERRUN;
    while !s.halt.load(Ordering::Relaxed) {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= s.plan.total {
            break;
        }
        let due = s.started + s.plan.due_at(i);
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => {
                part.stopped = Some("stopped".into());
                break;
            }
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let now = Instant::now();
        if now > give_up {
            s.halt.store(true, Ordering::Relaxed);
            part.stopped = Some(format!(
                "could not keep up: row {i} of {} was due {:.1} s before",
                s.plan.total,
                now.saturating_duration_since(due).as_secs_f64()
            ));
            break;
        }
        metrics::record(&mut part.behind, now.saturating_duration_since(due));
        let (k, seq) = s.plan.slot(i);
        if s.in_flight[k].fetch_add(1, Ordering::Relaxed) > 0 {
            part.overlapping += 1;
        }
        // Both fit: nanoseconds since 1970 stay below i64::MAX until 2262.
        let (t, seq) = (clock::now_ns() as i64, seq as i64);
        let sent_at = Instant::now();
        let result = tokio::time::timeout(
            INSERT_TIMEOUT,
            client.execute(&stmt, &[&s.sessions[k], &s.event, &t, &seq]),
        )
        .await;
        let took = sent_at.elapsed();
        part.last_ack = Instant::now();
        part.sent += 1;
        s.in_flight[k].fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Ok(_)) => {
                metrics::record(&mut part.commit, took);
                s.committed[k].fetch_add(1, Ordering::Relaxed);
                s.committed_rows[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::Relaxed);
                Live::add(&s.live.sent, 1);
            }
            Ok(Err(e)) => {
                *part
                    .errors
                    .entry(format!("insert: {}", db::error_key(&e)))
                    .or_default() += 1;
                if client.is_closed() {
                    part.stopped = Some("an inserting database connection closed".into());
                    break;
                }
            }
            Err(_) => {
                *part
                    .errors
                    .entry("insert: no reply within 10 s (commit unknown)".into())
                    .or_default() += 1;
            }
        }
    }
    Ok(part)
}

/// Deliveries expected: each committed row of a session reaches every joined viewer of it.
pub fn expected_deliveries(committed: &[u64], viewers_joined: &[u64]) -> u64 {
    committed
        .iter()
        .zip(viewers_joined)
        .map(|(rows, viewers)| rows * viewers)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_insert_stamps_the_rows_payload() {
        assert!(INSERT_ROW.starts_with("insert into public.build_events"));
        assert!(INSERT_ROW.contains("jsonb_build_object('t', $3::int8, 's', $4::int8)"));
    }

    #[test]
    fn expectations_follow_commits_and_joins() {
        assert_eq!(
            expected_deliveries(&[10, 10, 9], &[10, 9, 10]),
            100 + 90 + 90
        );
        assert_eq!(expected_deliveries(&[], &[]), 0);
    }
}
