//! Many connections at once: one task per connection, a semaphore bounding how many are
//! opening at the same time, and a collector turning their open/join reports into histograms.
//!
//! Each task reports exactly once (opened or failed) and then drops its sender, so the
//! collector ends when every task has reported; per-connection timeouts bound how long that
//! takes. After reporting, a joined task holds its connection until the run's stop token fires
//! (relayed to each task through its own oneshot channel, which is cheap to poll).
//!
//! What a task does with its connection is up to the caller of [`Crowd::spawn_with`]: the
//! WebSocket member here ([`Crowd::spawn`]), or an event-stream reader
//! ([`super::sse`]); the opening bound, the reports and the stop relay are shared.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Ctx;
use crate::live::Live;
use crate::metrics::{self, Hist};
use crate::phoenix;
use crate::session::{self, CLOSE_GRACE, End, OpenError, Opened, Receiver};

/// Capacity of the report channel; tasks that find it full simply wait their turn.
const REPORT_QUEUE: usize = 1024;

/// A connection task's single report.
#[derive(Debug)]
pub enum Outcome {
    /// Joined topic number `topic`.
    Opened { topic: usize, times: Opened },
    /// Failed, with the error's kind.
    Failed(String),
}

/// What a connection task hands back when it ends.
#[derive(Debug)]
pub struct Member<R> {
    /// The connection's index (its endpoint is `index % targets`).
    pub index: usize,
    /// The receiver, with whatever it counted.
    pub rx: R,
    /// Why holding ended; `None` if the connection never joined.
    pub end: Option<End>,
    /// Whether our close was answered by the server.
    pub closed_clean: bool,
}

/// What one connection task is handed: who it is, the shared opening gate, where to report,
/// when to stop, and its receiver.
#[derive(Debug)]
pub struct Slot<R> {
    /// The run.
    pub ctx: Arc<Ctx>,
    /// Connection number within the run (source address and endpoint round-robin).
    pub index: usize,
    /// Topic number this connection joins.
    pub topic: usize,
    /// Bounds how many connections open at the same time (`--concurrency`); hold a permit
    /// while opening.
    pub gate: Arc<Semaphore>,
    /// Where the single open report goes.
    pub reporter: Reporter,
    /// Completes when the run stops (its sender is dropped).
    pub stop: oneshot::Receiver<()>,
    /// What the connection hands its messages to.
    pub rx: R,
}

/// Sends a connection task's single report and keeps the live counters.
#[derive(Debug)]
pub struct Reporter {
    tx: mpsc::Sender<Outcome>,
    live: Arc<Live>,
}

impl Reporter {
    /// The connection opened and joined `topic`.
    pub async fn opened(self, topic: usize, times: Opened) {
        Live::add(&self.live.joined, 1);
        let _ = self.tx.send(Outcome::Opened { topic, times }).await;
    }

    /// The connection could not be opened; `kind` is its error-count key.
    pub async fn failed(self, kind: String) {
        Live::add(&self.live.failed, 1);
        let _ = self.tx.send(Outcome::Failed(kind)).await;
    }
}

/// The open/join figures of a crowd.
#[derive(Debug)]
pub struct OpenStats {
    /// TCP connect plus upgrade, per connection.
    pub connect: Hist,
    /// Join request to `ok` reply, per connection.
    pub join: Hist,
    /// Connections joined.
    pub joined: u64,
    /// Connections that failed, by kind.
    pub errors: BTreeMap<String, u64>,
    /// From spawning the crowd to the last successful join.
    pub elapsed: Duration,
    /// Joined members per topic.
    pub per_topic: Vec<u64>,
}

impl OpenStats {
    /// Joined connections per second over [`elapsed`](Self::elapsed).
    pub fn rate(&self) -> f64 {
        self.joined as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Adds another crowd's figures (opened one after the other, so elapsed times add up).
    pub fn absorb(&mut self, other: OpenStats) -> anyhow::Result<()> {
        self.connect.add(&other.connect)?;
        self.join.add(&other.join)?;
        self.joined += other.joined;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.elapsed += other.elapsed;
        for (mine, theirs) in self.per_topic.iter_mut().zip(other.per_topic) {
            *mine += theirs;
        }
        Ok(())
    }

    /// p99 of the join times in ms, when any connection joined.
    pub fn join_p99(&self) -> Option<f64> {
        (!self.join.is_empty()).then(|| metrics::Summary::of(&self.join).p99_ms)
    }

    /// Connections that failed.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A running crowd of connection tasks.
#[derive(Debug)]
pub struct Crowd<R> {
    handles: Vec<JoinHandle<Member<R>>>,
    reports: mpsc::Receiver<Outcome>,
    started: Instant,
    topics: usize,
}

impl<R: Receiver + Send + 'static> Crowd<R> {
    /// Spawns one WebSocket connection task per receiver: task `i` dials with index
    /// `first_index + i`, joins topic `(first_index + i) % topics.len()` and hands its
    /// broadcasts to `receivers[i]`.
    pub fn spawn(
        ctx: &Arc<Ctx>,
        first_index: usize,
        topics: Arc<Vec<String>>,
        read_buf: usize,
        receivers: Vec<R>,
    ) -> Self {
        Self::spawn_joining(ctx, first_index, topics, read_buf, receivers, phoenix::join)
    }

    /// [`Crowd::spawn`] with joins made by `join(join_ref, topic)` (presence enabled, for
    /// instance) instead of the default join.
    pub fn spawn_joining(
        ctx: &Arc<Ctx>,
        first_index: usize,
        topics: Arc<Vec<String>>,
        read_buf: usize,
        receivers: Vec<R>,
        join: fn(&str, &str) -> Vec<u8>,
    ) -> Self {
        let n = topics.len();
        Self::spawn_with(ctx, first_index, n, receivers, move |slot| {
            member(slot, topics.clone(), read_buf, join)
        })
    }
}

impl<R: Send + 'static> Crowd<R> {
    /// Spawns `task(slot)` for each receiver: slot `i` has index `first_index + i` and topic
    /// `(first_index + i) % topics`. Each task must report once through its slot's reporter
    /// (before holding), hold until its `stop` completes, and close.
    pub fn spawn_with<F, Fut>(
        ctx: &Arc<Ctx>,
        first_index: usize,
        topics: usize,
        receivers: Vec<R>,
        task: F,
    ) -> Self
    where
        F: Fn(Slot<R>) -> Fut,
        Fut: Future<Output = Member<R>> + Send + 'static,
    {
        let topics = topics.max(1);
        let (tx, reports) = mpsc::channel(REPORT_QUEUE);
        let gate = Arc::new(Semaphore::new(ctx.common.concurrency));
        let started = Instant::now();
        let mut stoppers = Vec::with_capacity(receivers.len());
        let handles = receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                let (stopper, stop) = oneshot::channel::<()>();
                stoppers.push(stopper);
                let index = first_index + i;
                tokio::spawn(task(Slot {
                    ctx: ctx.clone(),
                    index,
                    topic: index % topics,
                    gate: gate.clone(),
                    reporter: Reporter {
                        tx: tx.clone(),
                        live: ctx.live.clone(),
                    },
                    stop,
                    rx,
                }))
            })
            .collect();
        // Dropping the senders completes every member's `stop`: a per-task oneshot is cheap to
        // poll on every read, unlike the shared token it stands in for.
        let run_stop = ctx.stop.clone();
        tokio::spawn(async move {
            run_stop.cancelled().await;
            drop(stoppers);
        });
        Self {
            handles,
            reports,
            started,
            topics,
        }
    }

    /// Waits until every task reported (or `limit` passed) and summarises the reports.
    pub async fn opened(&mut self, limit: Duration) -> anyhow::Result<OpenStats> {
        let mut stats = OpenStats {
            connect: metrics::hist()?,
            join: metrics::hist()?,
            joined: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
            per_topic: vec![0; self.topics],
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut reported = 0;
        while reported < self.handles.len() {
            let next = tokio::time::timeout_at(deadline, self.reports.recv()).await;
            let Ok(Some(outcome)) = next else {
                break;
            };
            reported += 1;
            match outcome {
                Outcome::Opened { topic, times } => {
                    metrics::record(&mut stats.connect, times.connect);
                    metrics::record(&mut stats.join, times.join);
                    stats.joined += 1;
                    stats.per_topic[topic] += 1;
                    stats.elapsed = self.started.elapsed();
                }
                Outcome::Failed(kind) => *stats.errors.entry(kind).or_default() += 1,
            }
        }
        let missing = (self.handles.len() - reported) as u64;
        if missing > 0 {
            *stats
                .errors
                .entry("no report before the open deadline".into())
                .or_default() += missing;
        }
        Ok(stats)
    }

    /// After the stop token fired: waits for every task to close (bounded), aborting the rest.
    pub async fn finish(self) -> (Vec<Member<R>>, u64) {
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE + Duration::from_secs(5);
        let mut members = Vec::with_capacity(self.handles.len());
        let mut lost = 0;
        for h in self.handles {
            let abort = h.abort_handle();
            match tokio::time::timeout_at(deadline, h).await {
                Ok(Ok(m)) => members.push(m),
                Ok(Err(_)) => lost += 1,
                Err(_) => {
                    abort.abort();
                    lost += 1;
                }
            }
        }
        (members, lost)
    }
}

/// The longest the open phase of `n` connections can take: every wave of `--concurrency`
/// connections waits at most connect plus join timeouts.
pub fn open_limit(ctx: &Ctx, n: usize) -> Duration {
    let c = &ctx.common;
    let waves = n.div_ceil(c.concurrency).max(1) as u32;
    (c.connect_timeout + c.join_timeout) * waves + Duration::from_secs(5)
}

/// One WebSocket connection task: wait for a slot, open and join, report, hold until `stop`
/// completes (its sender is dropped), close.
async fn member<R: Receiver>(
    slot: Slot<R>,
    topics: Arc<Vec<String>>,
    read_buf: usize,
    join: fn(&str, &str) -> Vec<u8>,
) -> Member<R> {
    let Slot {
        ctx,
        index,
        topic,
        gate,
        reporter,
        mut stop,
        mut rx,
    } = slot;
    let opened = tokio::select! {
        biased;
        _ = &mut stop => Err(OpenError::Cancelled),
        r = async {
            // The semaphore is never closed, so acquiring only fails if it were.
            let _slot = gate.acquire().await.map_err(|_| OpenError::Cancelled)?;
            let dial = ctx.dial(index, read_buf);
            session::open_with(dial, &ctx.live, &[&topics[topic]], join).await
        } => r,
    };
    let (mut conn, times) = match opened {
        Ok(ok) => ok,
        Err(e) => {
            reporter.failed(e.to_string()).await;
            return Member {
                index,
                rx,
                end: None,
                closed_clean: false,
            };
        }
    };
    reporter.opened(topic, times).await;
    let end = session::hold(
        &mut conn,
        &mut stop,
        ctx.common.heartbeat,
        &ctx.live,
        &mut rx,
    )
    .await;
    let closed_clean = if end == End::Cancelled {
        conn.close(CLOSE_GRACE).await
    } else {
        Live::add(&ctx.live.dropped, 1);
        false
    };
    Member {
        index,
        rx,
        end: Some(end),
        closed_clean,
    }
}
