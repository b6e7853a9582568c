//! The feed: one LISTEN connection per node, reading new outbox rows and delivering them to the
//! local registry.
//!
//! NOTIFY is only a wake-up. After every wake-up, every reconnect, and on a slow timer, the feed
//! reads the rows after the last id it has seen, in id order, in batches. The outbox (not the
//! notification) is the source of truth, so a dropped listener or a Postgres restart loses
//! nothing: the next read starts where the last one ended.
//!
//! **Late commits.** Ids come from a sequence when a row is inserted, but transactions commit in
//! any order, so a read can see id 7 while id 6 is still uncommitted. The feed remembers such
//! gaps and looks for them again on every read. A gap is given up only when every transaction
//! that could have allocated it has ended: right after seeing it, the feed takes a fresh
//! transaction id (larger than the id of any transaction already running), and once a later
//! snapshot's `xmin` reaches it, the allocating transaction has committed (and its row was read)
//! or rolled back (and the id never appears).
//! Delivering id 7 before a late id 6 never breaks a topic's order: messages of one topic are
//! numbered under a row lock held until commit (see the `hub_outbox` migration), so a late row
//! always belongs to another topic than any row already delivered after it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use channels::{Broker, Cursor, Envelope, Registry, TopicKey};
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgPool, Row};

use super::broker::payload_of;

/// Rows read per query.
const BATCH: i64 = 500;
/// How often to look for gaps (ids seen missing) while there are any: a rolled-back publisher
/// never notifies, so a timer resolves its gap.
const GAP_POLL: Duration = Duration::from_millis(50);
/// Safety read even without notifications (a wake-up lost while sqlx reconnects the listener
/// costs at most this much delay).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Most remembered gaps; beyond this the oldest are given up (logged).
const MAX_GAPS: usize = 100_000;
/// On start, ids this far below the newest are checked for uncommitted rows.
const START_LOOKBACK: i64 = 10_000;

/// `application_name` of the feed's LISTEN connection.
pub const LISTENER_NAME: &str = "hub-feed";

/// The topic kind whose history is the outbox itself (its rows are delivered straight from it).
const DURABLE_KIND: &str = "build";

/// The advisory lock key whose holder forwards `hub.publish()` rows of fast-broker topics when
/// nodes share Redis (see [`Feed::forward_to`]). Arbitrary, fixed: `'hub.forward'` as digits.
const FORWARD_LOCK: i64 = 0x0068_7562_2e66_7764;

/// How often a node that is not the forwarding leader tries to become it (so a leader that
/// died is replaced within about this long).
const LEAD_RETRY: Duration = Duration::from_secs(1);

/// Counters of the feed (exported as metrics by the hub).
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Rows delivered.
    pub rows: AtomicU64,
    /// Rows that committed after a later id had been read (delivered from the gap list).
    pub late_rows: AtomicU64,
    /// Gaps given up (rolled-back or never-inserted ids).
    pub gaps_closed: AtomicU64,
    /// Listener reconnects.
    pub reconnects: AtomicU64,
    /// Milliseconds between a row's commit-time `created_at` and its delivery, last row.
    pub lag_ms: AtomicU64,
}

/// The feed of one node.
#[derive(Debug)]
pub struct Feed {
    pool: PgPool,
    url: String,
    registry: Arc<Registry>,
    epoch: Arc<str>,
    node_id: Arc<str>,
    /// Counters.
    pub stats: Arc<FeedStats>,
    /// Where reading starts; taken before the node serves anyone (see [`Feed::prepare`]).
    start: Option<Position>,
    /// Rows of topics other than [`DURABLE_KIND`] were `hub.publish()`ed for a topic whose
    /// history lives in the fast broker: they are re-published through it, so the message gets
    /// that topic's cursor (see [`Feed::forward_to`]).
    forward_to: Option<Arc<dyn Broker>>,
    /// Whether `forward_to` reaches every node (Redis): then only the forwarding leader
    /// forwards; otherwise (a node-local memory broker) every node forwards every row to its
    /// own members.
    shared: bool,
    /// Whether this node holds the forwarding lock (only meaningful when `shared`).
    leading: AtomicBool,
}

/// The feed's position: everything up to `last` was read, except `gaps`: ids seen missing,
/// each with a transaction-id bound above every transaction that could have allocated it. A gap
/// is given up once a snapshot's `xmin` (the oldest transaction still running) reaches its
/// bound: its writer has then committed (and the row was read) or rolled back.
#[derive(Debug, Default)]
struct Position {
    last: i64,
    gaps: BTreeMap<i64, i64>,
}

impl Feed {
    /// A feed over `pool`, listening with its own connection to `url`.
    pub fn new(
        pool: PgPool,
        url: String,
        registry: Arc<Registry>,
        epoch: Arc<str>,
        node_id: Arc<str>,
    ) -> Self {
        Self {
            pool,
            url,
            registry,
            epoch,
            node_id,
            stats: Arc::new(FeedStats::default()),
            start: None,
            forward_to: None,
            shared: false,
            leading: AtomicBool::new(false),
        }
    }

    /// Re-publishes rows of topics whose history is not the outbox through `broker` (the
    /// node's router).
    ///
    /// With `shared` (the broker reaches every node: Redis) one node forwards: the holder of a
    /// session advisory lock on its LISTEN connection. One forwarder keeps a topic's messages
    /// in outbox order (two nodes forwarding alternate rows would interleave a chat's tokens).
    /// Each row is also claimed (`forwarded_by`) before it is published, so a leader that lost
    /// its connection mid-row and the next leader never both publish it; the next leader starts
    /// by forwarding every unclaimed row, so a leader's crash loses nothing.
    pub fn forward_to(mut self, broker: Arc<dyn Broker>, shared: bool) -> Self {
        self.forward_to = Some(broker);
        self.shared = shared;
        self
    }

    /// Reads the start position now. Called before the node accepts connections: a join that
    /// reads history before the feed knows where it starts could otherwise miss rows committed
    /// in between (neither in its history read nor delivered live).
    pub async fn prepare(&mut self) -> Result<(), sqlx::Error> {
        self.start = Some(self.start_position().await?);
        Ok(())
    }

    /// Runs until the task is dropped or aborted. Never returns an error: connection problems
    /// are retried with backoff, and the position survives them.
    pub async fn run(mut self) {
        let mut pos = match self.start.take() {
            Some(p) => p,
            None => loop {
                match self.start_position().await {
                    Ok(p) => break p,
                    Err(e) => {
                        tracing::warn!(error = %e, "feed: reading the start position failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            },
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut listener = match self.listen().await {
                Ok(l) => {
                    backoff = Duration::from_millis(100);
                    l
                }
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "feed: LISTEN failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // A new connection holds no lock.
            self.leading.store(false, Ordering::Relaxed);
            let mut lead_attempt: Option<tokio::time::Instant> = None;
            // Catch up on everything committed while we were not listening.
            self.read_all(&mut pos).await;
            loop {
                if self.shared
                    && !self.leading.load(Ordering::Relaxed)
                    && lead_attempt.is_none_or(|t| t.elapsed() >= LEAD_RETRY)
                {
                    lead_attempt = Some(tokio::time::Instant::now());
                    self.try_lead(&mut listener, pos.last).await;
                }
                let wait = if pos.gaps.is_empty() {
                    IDLE_POLL
                } else {
                    GAP_POLL
                };
                match tokio::time::timeout(wait, listener.try_recv()).await {
                    // Woken: one read covers every notification already queued behind this one.
                    Ok(Ok(Some(_))) => while listener.next_buffered().is_some() {},
                    // Timed out: read anyway (gaps, or a wake-up that never came).
                    Err(_) => {}
                    // The connection dropped; sqlx reconnects on the next call, and we catch up.
                    Ok(Ok(None)) => {
                        self.leading.store(false, Ordering::Relaxed);
                        lead_attempt = None;
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("feed: listener connection lost; reconnecting");
                        self.read_all(&mut pos).await;
                        continue;
                    }
                    Ok(Err(e)) => {
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "feed: listener failed; reconnecting");
                        break;
                    }
                }
                self.read_all(&mut pos).await;
            }
        }
    }

    /// Tries to become the forwarding leader; on success forwards every row no node has
    /// forwarded yet (up to `last`: later rows come through the normal read).
    async fn try_lead(&self, listener: &mut PgListener, last: i64) {
        let won: Result<bool, sqlx::Error> = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(FORWARD_LOCK)
            .fetch_one(&mut *listener)
            .await;
        match won {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "feed: trying the forwarding lock failed");
                return;
            }
        }
        tracing::info!(node = %self.node_id, "feed: this node forwards hub.publish() rows of fast-broker topics");
        self.leading.store(true, Ordering::Relaxed);
        let mut after = 0i64;
        loop {
            // Matches the partial index `outbox_unforwarded_idx`.
            let rows = sqlx::query(
                "select id, topic, private, seq, event, payload::text as payload, payload_bytes,
                        origin, (extract(epoch from created_at) * 1000)::int8 as ms
                 from hub.outbox
                 where forwarded_by is null and topic not like 'build:%' and id > $1 and id <= $2
                 order by id limit $3",
            )
            .bind(after)
            .bind(last)
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await;
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "feed: reading unforwarded rows failed");
                    return;
                }
            };
            for row in &rows {
                if let Ok(id) = row.try_get::<i64, _>("id") {
                    after = id;
                }
                if let Err(e) = self.deliver(row).await {
                    tracing::warn!(error = %e, "feed: forwarding an unforwarded row failed");
                }
            }
            if rows.len() < BATCH as usize {
                return;
            }
        }
    }

    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        // Named, so operators (and tests) can find the feed's connection in pg_stat_activity.
        let options: sqlx::postgres::PgConnectOptions = self.url.parse()?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options.application_name(LISTENER_NAME));
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen("hub_outbox").await?;
        Ok(listener)
    }

    /// Starts at the newest row; recent missing ids below it may still be uncommitted, so they
    /// start out as gaps.
    async fn start_position(&self) -> Result<Position, sqlx::Error> {
        let last: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from hub.outbox")
            .fetch_one(&self.pool)
            .await?;
        let present: Vec<i64> =
            sqlx::query_scalar("select id from hub.outbox where id > $1 order by id")
                .bind(last - START_LOOKBACK)
                .fetch_all(&self.pool)
                .await?;
        let bound = self.xid_bound().await?;
        let mut gaps = BTreeMap::new();
        let mut expected = (last - START_LOOKBACK).max(0) + 1;
        for id in present.into_iter().filter(|id| *id <= last) {
            while expected < id {
                gaps.insert(expected, bound);
                expected += 1;
            }
            expected = id + 1;
        }
        Ok(Position { last, gaps })
    }

    /// Reads until a batch comes back short. Errors are logged and retried on the next wake-up
    /// or timer; the position only moves past rows that were delivered.
    async fn read_all(&self, pos: &mut Position) {
        loop {
            match self.read_batch(pos).await {
                Ok(full) if full => continue,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "feed: reading the outbox failed");
                    return;
                }
            }
        }
    }

    /// One query: rows after `last` plus any gap that has since committed, in id order, with
    /// the snapshot's bounds. Returns whether the batch was full.
    async fn read_batch(&self, pos: &mut Position) -> Result<bool, sqlx::Error> {
        let gaps: Vec<i64> = pos.gaps.keys().copied().collect();
        // Two index range reads rather than one `id > $1 or id = any($2)`, which Postgres
        // answers by walking the whole primary-key index (cost growing with the outbox).
        let rows = sqlx::query(
            "with s as (select pg_current_snapshot() as snap)
             select o.id, o.topic, o.private, o.seq, o.event, o.payload::text as payload,
                    o.payload_bytes, o.origin,
                    (extract(epoch from o.created_at) * 1000)::int8 as ms,
                    pg_snapshot_xmin(s.snap)::text::int8 as xmin
             from s left join lateral (
               (select * from hub.outbox where id > $1 order by id limit $3)
               union all
               (select * from hub.outbox where id = any($2))
             ) o on true
             order by o.id",
        )
        .bind(pos.last)
        .bind(&gaps)
        .bind(BATCH)
        .fetch_all(&self.pool)
        .await?;
        let mut xmin = 0i64;
        let mut read = 0;
        let mut new_gaps = Vec::new();
        for row in &rows {
            xmin = row.try_get("xmin")?;
            let Some(id) = row.try_get::<Option<i64>, _>("id")? else {
                continue;
            };
            if pos.gaps.remove(&id).is_some() {
                self.stats.late_rows.fetch_add(1, Ordering::Relaxed);
            } else if id > pos.last {
                read += 1;
                new_gaps.extend(pos.last + 1..id);
                pos.last = id;
            } else {
                continue;
            }
            self.deliver(row).await?;
        }
        // Gaps whose possible writers have all ended will never fill (see `Position`).
        let before = pos.gaps.len();
        pos.gaps.retain(|_, bound| *bound > xmin);
        let closed = before - pos.gaps.len();
        if closed > 0 {
            self.stats
                .gaps_closed
                .fetch_add(closed as u64, Ordering::Relaxed);
        }
        if !new_gaps.is_empty() {
            let bound = self.xid_bound().await?;
            pos.gaps.extend(new_gaps.into_iter().map(|id| (id, bound)));
        }
        while pos.gaps.len() > MAX_GAPS {
            if let Some((id, _)) = pos.gaps.pop_first() {
                tracing::warn!(id, "feed: too many open gaps; giving up the oldest");
            }
        }
        Ok(read >= BATCH as usize)
    }

    /// A transaction id larger than that of every transaction that could have allocated an id
    /// we saw missing: a fresh one, assigned now. (A snapshot's `xmax` is not such a bound: it
    /// is "last completed + 1", and a transaction that already holds a larger id can still be
    /// running.) Costs one id, and only when a read finds new gaps.
    async fn xid_bound(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("select pg_current_xact_id()::text::int8")
            .fetch_one(&self.pool)
            .await
    }

    fn is_durable(&self, topic: &TopicKey) -> bool {
        self.forward_to.is_none() || topic.kind() == Some(DURABLE_KIND)
    }

    /// Claims and re-publishes a row of a topic whose history lives in another broker. The
    /// claim (an update only one node can win) makes it exactly once across nodes.
    async fn forward(&self, row: &PgRow, topic: TopicKey) -> Result<(), sqlx::Error> {
        let Some(broker) = &self.forward_to else {
            return Ok(());
        };
        if self.shared && !self.leading.load(Ordering::Relaxed) {
            return Ok(()); // the leader forwards it
        }
        let id: i64 = row.try_get("id")?;
        if self.shared {
            let claimed: Option<i64> = sqlx::query_scalar(
                "update hub.outbox set forwarded_by = $2 where id = $1 and forwarded_by is null \
                 returning id",
            )
            .bind(id)
            .bind(&*self.node_id)
            .fetch_optional(&self.pool)
            .await?;
            if claimed.is_none() {
                return Ok(()); // another node forwarded it
            }
        }
        let event: String = row.try_get("event")?;
        let json: Option<String> = row.try_get("payload")?;
        let bytes: Option<Vec<u8>> = row.try_get("payload_bytes")?;
        let publication = channels::Publication {
            topic,
            event: event.into(),
            payload: payload_of(json, bytes),
            origin: None,
        };
        if let Err(e) = broker.publish(publication).await {
            tracing::warn!(id, error = %e, "feed: forwarding an outbox row failed");
        }
        self.stats.rows.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn deliver(&self, row: &PgRow) -> Result<(), sqlx::Error> {
        let topic: String = row.try_get("topic")?;
        let private: bool = row.try_get("private")?;
        let Ok(topic) = TopicKey::new(&topic, private) else {
            tracing::warn!(topic, "feed: skipping a row whose topic cannot be joined");
            return Ok(());
        };
        if !self.is_durable(&topic) {
            return self.forward(row, topic).await;
        }
        let seq: i64 = row.try_get("seq")?;
        let event: String = row.try_get("event")?;
        let json: Option<String> = row.try_get("payload")?;
        let bytes: Option<Vec<u8>> = row.try_get("payload_bytes")?;
        let origin: Option<String> = row.try_get("origin")?;
        let ms: i64 = row.try_get("ms")?;
        let origin = origin.and_then(|o| {
            let (node, conn) = o.rsplit_once(':')?;
            (node == &*self.node_id)
                .then(|| conn.parse().ok())
                .flatten()
        });
        let env = Arc::new(Envelope {
            topic,
            event: event.into(),
            payload: payload_of(json, bytes),
            cursor: Some(Cursor::new(self.epoch.clone(), seq.max(0) as u64)),
            time_ms: ms.max(0) as u64,
        });
        self.registry.deliver(&env, origin);
        self.stats.rows.fetch_add(1, Ordering::Relaxed);
        let lag = channels::envelope::now_ms().saturating_sub(env.time_ms);
        self.stats.lag_ms.store(lag, Ordering::Relaxed);
        Ok(())
    }
}
