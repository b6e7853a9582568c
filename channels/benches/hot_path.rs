//! Micro-benchmarks of the hot paths, so a regression in them shows before a load test would:
//! decoding what clients send (V1/V2 text, kind-3 binary), encoding a broadcast once per wire
//! format, and the registry fanning one message out to a topic's members (encode once, push
//! the shared bytes into every outbox).
//!
//! `cargo bench -p channels`; `cargo bench -p channels -- fanout` for one group. The figures of
//! record are in bench/README.md.

// A benchmark's inputs are fixed and valid; failing to decode one is a broken benchmark, and
// panicking says so at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use channels::codec::{self, Format, Ref, binary};
use channels::outbox::OutFrame;
use channels::registry::Member;
use channels::{Cursor, Envelope, Outbox, OutboxLimits, Payload, Registry, TopicKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A 100-byte JSON payload, the load tests' default size.
fn payload() -> Bytes {
    let pad = "x".repeat(100 - r#"{"t":1700000000000000,"s":12345,"p":""}"#.len());
    Bytes::from(format!(r#"{{"t":1700000000000000,"s":12345,"p":"{pad}"}}"#))
}

fn decode(c: &mut Criterion) {
    let body = String::from_utf8(payload().to_vec()).unwrap();
    let v2 = format!(
        r#"["3","7","realtime:room-1","broadcast",{{"type":"broadcast","event":"lt","payload":{body}}}]"#
    );
    let v1 = format!(
        r#"{{"join_ref":"3","ref":"7","topic":"realtime:room-1","event":"broadcast","payload":{{"type":"broadcast","event":"lt","payload":{body}}}}}"#
    );
    let bin = binary::encode_user_broadcast_push(
        "3",
        "7",
        "realtime:room-1",
        "lt",
        &Payload::Json(payload()),
    )
    .unwrap();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("v2_text_broadcast", |b| {
        b.iter(|| codec::decode_text(Format::V2, black_box(v2.as_bytes())).unwrap())
    });
    g.bench_function("v1_text_broadcast", |b| {
        b.iter(|| codec::decode_text(Format::V1, black_box(v1.as_bytes())).unwrap())
    });
    g.bench_function("v2_binary_push", |b| {
        b.iter(|| codec::decode_binary(Format::V2, black_box(&bin)).unwrap())
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let p = Payload::Json(payload());
    let cursor = Cursor::new("k3f9".into(), 123_456);
    let mut g = c.benchmark_group("encode_broadcast");
    g.throughput(Throughput::Elements(1));
    for (name, format) in [
        ("v2_binary", Format::V2),
        ("v1_text", Format::V1),
        ("sse", Format::Sse),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                codec::encode_broadcast(
                    format,
                    black_box("realtime:room-1"),
                    "lt",
                    black_box(&p),
                    Some(&cursor),
                    false,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

/// Deliveries timed between two emptyings of the outboxes: half the default outbox (1,024
/// frames), so the outbox's slow-reader rule never fires.
const ROUND: u64 = 512;

/// One message to a topic of `n` V2 members: what `Registry::deliver` costs per member once
/// the encoding is shared. Outboxes are emptied between rounds (not timed) so none overflows.
fn fanout(c: &mut Criterion) {
    let topic = TopicKey::new("room-1", false).unwrap();
    let mut g = c.benchmark_group("fanout");
    for n in [1usize, 100, 1000, 10_000] {
        let registry = Registry::new(1024);
        let outboxes: Vec<Outbox> = (0..n)
            .map(|i| {
                let outbox = Outbox::new(OutboxLimits::default());
                let member = Member {
                    conn: i as u64,
                    outbox: outbox.clone(),
                    format: Format::V2,
                    join_ref: Some(Ref::from_plain("1")),
                    broadcast_self: false,
                    presence_enabled: false,
                };
                registry.join(
                    &topic,
                    member,
                    OutFrame::Text(Bytes::from_static(b"ok")),
                    false,
                );
                outbox
            })
            .collect();
        let mut offset = 0u64;
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("deliver_to_{n}"), |b| {
            // Timed in rounds of at most half an outbox, with the outboxes emptied between
            // rounds outside the clock, so every push is a real queueing (none overflows).
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = left.min(ROUND);
                    left -= round;
                    let envs: Vec<Arc<Envelope>> = (0..round)
                        .map(|_| {
                            offset += 1;
                            Arc::new(Envelope {
                                topic: topic.clone(),
                                event: "lt".into(),
                                payload: Payload::Json(payload()),
                                cursor: Some(Cursor::new("k3f9".into(), offset)),
                                time_ms: 0,
                            })
                        })
                        .collect();
                    let start = Instant::now();
                    for env in &envs {
                        registry.deliver(env, None);
                    }
                    total += start.elapsed();
                    let mut sink = Vec::new();
                    for o in &outboxes {
                        o.drain(&mut sink);
                        sink.clear();
                    }
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode, fanout);
criterion_main!(benches);
