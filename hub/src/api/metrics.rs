//! `GET /metrics`: the node's counters in the Prometheus/OpenMetrics text format
//! (`prometheus-client`).
//!
//! Nothing is counted twice: the counters live where the work happens (the registry, the
//! session, the verifier, the backends) as plain atomics, and a collector reads them at scrape
//! time. Every node exports its own; a `hub_info` series names its version and commit, and
//! Prometheus's `instance` label tells nodes apart.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::state::AppState;

/// The OpenMetrics text format, which Prometheus scrapes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics, encoded.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector { state }));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed",
        )
            .into_response(),
    }
}

/// Reads every counter of one node at scrape time.
#[derive(Debug)]
struct NodeCollector {
    state: AppState,
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.state;
        let node = &s.node;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);

        let info = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("HUB_GIT_COMMIT")),
        ];
        let mut m = enc.encode_descriptor("hub", "The hub build", None, MetricType::Info)?;
        m.encode_info(&info)?;

        gauge(
            &mut enc,
            "hub_connections",
            "Open connections (WebSocket, SSE, terminal)",
            as_i64(node.connections.len()),
        )?;
        gauge(
            &mut enc,
            "hub_topics",
            "Topics with members on this node",
            as_i64(node.registry.topic_count()),
        )?;
        gauge(
            &mut enc,
            "hub_uptime_seconds",
            "Seconds since the process started",
            i64::try_from(s.started.elapsed().as_secs()).unwrap_or(i64::MAX),
        )?;
        if let Some(rss) = crate::api::health::rss_bytes() {
            gauge(
                &mut enc,
                "hub_resident_memory_bytes",
                "Resident memory of the process",
                i64::try_from(rss).unwrap_or(i64::MAX),
            )?;
        }
        counter(
            &mut enc,
            "hub_joins",
            "Channel joins accepted",
            load(&node.stats.joins),
        )?;
        counter(
            &mut enc,
            "hub_messages_in",
            "Messages received from clients",
            load(&node.stats.messages_in),
        )?;
        counter(
            &mut enc,
            "hub_deliveries",
            "Frames queued to members by fan-out (messages out)",
            load(&node.registry.stats.deliveries),
        )?;
        counter(
            &mut enc,
            "hub_slow_reader_closes",
            "Connections closed because their queue overflowed",
            load(&node.registry.stats.slow_closes),
        )?;
        counter(
            &mut enc,
            "hub_merged_deltas",
            "Chat token deltas merged into a queued one for a slow reader",
            load(&channels::outbox::MERGED_DELTAS),
        )?;
        counter(
            &mut enc,
            "hub_rate_limited",
            "Connections, joins and messages refused by a rate limit",
            load(&node.stats.rate_limited),
        )?;
        counter(
            &mut enc,
            "hub_auth_failures",
            "Tokens refused (every transport)",
            s.verifier.failures(),
        )?;
        let lat = node.registry.stats.latency.snapshot();
        let mut m = enc.encode_descriptor(
            "hub_publish_deliver_seconds",
            "Publish time to fan-out on this node, per message",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            lat.sum_s,
            lat.count,
            &lat.buckets,
            None,
        )?;
        if let Some(pg) = &s.backends.postgres {
            counter(
                &mut enc,
                "hub_pg_feed_rows",
                "Rows delivered by the Postgres feed",
                load(&pg.feed.rows),
            )?;
            gauge(
                &mut enc,
                "hub_pg_feed_lag_milliseconds",
                "Commit to delivery of the feed's last row",
                i64::try_from(load(&pg.feed.lag_ms)).unwrap_or(i64::MAX),
            )?;
            counter(
                &mut enc,
                "hub_pg_feed_reconnects",
                "Postgres listener reconnects",
                load(&pg.feed.reconnects),
            )?;
        }
        if let Some(r) = &s.backends.redis {
            counter(
                &mut enc,
                "hub_redis_reconnects",
                "Redis pub/sub reconnects",
                load(&r.stats.reconnects),
            )?;
            counter(
                &mut enc,
                "hub_redis_gap_fills",
                "Messages fetched from Redis history to fill a gap in the live stream",
                load(&r.stats.gap_fills),
            )?;
        }
        Ok(())
    }
}
