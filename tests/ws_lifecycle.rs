//! Connection lifecycle: slow readers are cut off without hurting other members, idle sockets
//! are closed, and shutdown closes every socket with 1001 within the drain timeout.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::{Frame, TestHub, Vsn, WsClient, anon, json_payload, wait_until};
use tokio::net::TcpSocket;

const TOPIC: &str = "realtime:life";

/// A slow reader, a good member and a publisher on [`TOPIC`], after a flood that overflowed
/// the slow reader's outbox (and only its).
struct Flooded {
    hub: TestHub,
    slow: WsClient,
    good: WsClient,
    publisher: WsClient,
    sent: u64,
}

/// Floods [`TOPIC`] until the slow reader (which never reads) overflows its 16-frame outbox,
/// checking that the good member gets every message in order meanwhile.
async fn flood_until_slow_close(tweak: impl FnOnce(&mut hub::Config)) -> Flooded {
    let hub = TestHub::spawn_with(|cfg| {
        cfg.outbox_messages = 16;
        // The publisher floods on purpose: this test is about the slow reader, not the sender.
        cfg.messages_per_sec = 0;
        cfg.user_messages_per_sec = 0;
        tweak(cfg);
    })
    .await;
    let stats = &hub.state.node.registry.stats;

    // The slow reader: a tiny receive buffer so the server's writes back up quickly.
    let sock = TcpSocket::new_v4().expect("a TCP socket");
    sock.set_recv_buffer_size(4096).expect("set SO_RCVBUF");
    let tcp = sock
        .connect(hub.addr)
        .await
        .expect("connect the slow reader");
    let mut slow = WsClient::connect_over(&hub, Vsn::V2, &anon(), tcp).await;
    slow.join_ok(TOPIC, json!({})).await;

    let mut good = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    good.join_ok(TOPIC, json!({})).await;
    let mut publisher = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    publisher.join_ok(TOPIC, json!({})).await;
    assert_eq!(hub.state.node.connections.len() as u64, 3);

    // Flood in batches, letting the good member read each batch before the next one, so only
    // the slow reader falls behind. Bounded: at most 400 batches of 8 × 16 KiB.
    let filler = "z".repeat(16 * 1024);
    let mut sent = 0u64;
    for _ in 0..400 {
        for _ in 0..8 {
            sent += 1;
            publisher
                .send_broadcast(
                    TOPIC,
                    "flood",
                    &json_payload(&json!({"i": sent, "f": filler})),
                )
                .await;
        }
        for _ in 0..8 {
            let b = good.next_broadcast("the good member's flood message").await;
            assert_eq!(b.offset(), b.json()["i"].as_u64().expect("numeric i"));
        }
        if stats.slow_closes.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    assert_eq!(
        stats.slow_closes.load(Ordering::Relaxed),
        1,
        "exactly one slow close after {sent} messages"
    );
    // The good member keeps receiving, in order, with no gap.
    for _ in 0..20 {
        sent += 1;
        publisher
            .send_broadcast(TOPIC, "after", &json_payload(&json!({"i": sent})))
            .await;
        let b = good.next_broadcast("a message after the slow close").await;
        assert_eq!((b.offset(), b.json()["i"].as_u64()), (sent, Some(sent)));
    }
    Flooded {
        hub,
        slow,
        good,
        publisher,
        sent,
    }
}

/// A slow reader that reads again gets what was already on the wire, a `system` error, and a
/// 4008 close; its membership is then gone and the others carry on.
#[tokio::test]
async fn slow_reader_gets_a_system_error_and_close_4008() {
    let Flooded {
        hub,
        mut slow,
        mut good,
        mut publisher,
        mut sent,
    } = flood_until_slow_close(|_| {}).await;
    let jr = slow.join_ref(TOPIC);
    let mut system = None;
    let (code, reason) = slow
        .expect_frame("the slow reader's close after its backlog", |f| match f {
            Frame::Close(code, reason) => Some((*code, reason.clone())),
            Frame::Text(v) => {
                if v[3] == "system" {
                    system = Some(v.clone());
                }
                None
            }
            Frame::Binary(_) => None,
        })
        .await;
    assert_eq!(code, 4008, "slow-reader close code ({reason})");
    assert!(!reason.is_empty());
    let system = system.expect("a system message before the close");
    assert_eq!((&system[0], &system[2]), (&json!(jr), &json!(TOPIC)));
    assert_eq!(system[4]["status"], "error");
    slow.finish_close().await;
    let topic = channels::TopicKey::new("life", false).unwrap();
    let registry = &hub.state.node.registry;
    wait_until("the slow reader's membership is removed", || {
        registry.member_count(&topic) == 2
    })
    .await;
    sent += 1;
    publisher
        .send_broadcast(TOPIC, "later", &json_payload(&json!({"i": sent})))
        .await;
    assert_eq!(
        good.next_broadcast("a message after the close")
            .await
            .offset(),
        sent
    );
}

/// A reader that stalls completely (reads nothing more, but still sends heartbeats like a live
/// client would) must be dropped by the server after its outbox overflowed: the overflow is
/// the server's signal that it will never catch up.
#[tokio::test]
async fn stalled_reader_is_dropped_without_its_cooperation() {
    let Flooded {
        hub,
        mut slow,
        mut good,
        mut publisher,
        ..
    } = flood_until_slow_close(|cfg| cfg.idle_timeout = Duration::from_secs(1)).await;
    let topic = channels::TopicKey::new("life", false).unwrap();
    let registry = &hub.state.node.registry;
    let connections = &hub.state.node.connections;
    // Everyone heartbeats so the (1 s) idle timeout cannot decide the question; the stalled
    // reader never reads its replies. Bounded: 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    while registry.member_count(&topic) != 2 || connections.len() != 2 {
        assert!(
            Instant::now() < deadline,
            "5 s after its outbox overflowed, the stalled reader is still connected and a \
             member: members={} (expected 2), connections={} (expected 2)",
            registry.member_count(&topic),
            connections.len()
        );
        slow.heartbeat().await;
        good.assert_alive("the good member, heartbeating").await;
        publisher.assert_alive("the publisher, heartbeating").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn idle_connection_is_closed_and_heartbeating_one_stays() {
    let hub = TestHub::spawn_with(|cfg| cfg.idle_timeout = Duration::from_secs(1)).await;
    let mut silent = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut active = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    silent.join_ok(TOPIC, json!({})).await;
    active.join_ok(TOPIC, json!({})).await;
    let started = Instant::now();

    let active_task = tokio::spawn(async move {
        // Heartbeat every 300 ms for 2.5 s: well inside the 1 s idle timeout each time.
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            tick.tick().await;
            active
                .assert_alive("a heartbeating client under a 1 s idle timeout")
                .await;
        }
        active
    });
    let (code, reason) = silent.expect_close("the idle timeout close").await;
    let idle_for = started.elapsed();
    assert_eq!((code, reason.as_str()), (1000, "idle timeout"));
    assert!(
        idle_for >= Duration::from_millis(900),
        "closed after {idle_for:?}, before the 1 s idle timeout"
    );
    let mut active = active_task.await.expect("heartbeating client task");
    active.assert_alive("still open after 2.5 s").await;
}

/// A joined member's view of shutdown: a `system` notice per channel, then the close frame.
async fn joined_close(c: &mut WsClient, who: &str) -> (u16, String) {
    let sys = c
        .next_msg(&format!("{who}'s system notice before shutdown"))
        .await;
    assert_eq!(sys.event, "system", "{who}: {sys:?}");
    assert_eq!(sys.payload["status"], "ok");
    assert_eq!(sys.payload["message"], "Server requested disconnect");
    assert_eq!(sys.payload["channel"], "life");
    c.expect_close(&format!("{who}'s shutdown close")).await
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001_within_the_drain_timeout() {
    let hub = TestHub::spawn_with(|cfg| cfg.drain_timeout = Duration::from_secs(3)).await;
    let addr = hub.addr;
    let mut a = WsClient::connect(&hub, Vsn::V1, &anon()).await;
    let mut b = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    let mut idle = WsClient::connect(&hub, Vsn::V2, &anon()).await;
    a.join_ok(TOPIC, json!({})).await;
    b.join_ok(TOPIC, json!({})).await;
    idle.assert_alive("a socket without channels").await;

    let (took, ca, cb, ci) = tokio::join!(
        hub.shutdown(),
        joined_close(&mut a, "V1 member"),
        joined_close(&mut b, "V2 member"),
        idle.expect_close("the channel-less socket's shutdown close"),
    );
    for (who, (code, _reason)) in [("V1", ca), ("V2", cb), ("no channels", ci)] {
        assert_eq!(code, 1001, "{who} close code");
    }
    assert!(
        took < Duration::from_secs(3),
        "serve returned after {took:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}
