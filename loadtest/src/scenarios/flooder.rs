//! One abusive client inside a `fanout` run (`--flood-joins`, `--flood-messages`): it joins new
//! topics and broadcasts far above the hub's per-connection limits for the whole publishing
//! window, reconnecting whenever the hub closes it, so the run shows what the limits cost the
//! well-behaved subscribers (their publish→receive p99 with and without it) and that the flooder
//! is the one refused.
//!
//! The flooder has its own `sub` (its token is minted apart from the crowd's, which carries
//! none), so the per-user limits apply to it too. It floods its own topics, not the subscribers':
//! what it gets through within its limits would otherwise be fanned out to them as load the
//! limits allow by design.
//!
//! Its sends are paced in 10 ms ticks; between ticks it reads and classifies what the hub says.
//! Every wait is bounded by the tick or the connect timeout, and the loop ends with the run's stop
//! signal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use channels::codec::{Body, Outbound, Ref, v2};
use channels::ws_frame::Opcode;

use super::Ctx;
use crate::client::WsConn;
use crate::phoenix;
use crate::target::Target;

/// Sends are grouped per tick.
const TICK: Duration = Duration::from_millis(10);

/// Read buffer: the flooder reads replies and errors only.
const READ_BUF: usize = 16 * 1024;

/// What the flooder did and what the hub answered.
#[derive(Debug, Default, Clone, Copy)]
pub struct FloodStats {
    /// Connections opened (the first and every reconnect).
    pub connects: u64,
    /// Connections the hub refused (HTTP 429 on too many connections, or another upgrade error).
    pub connects_refused: u64,
    /// Joins sent.
    pub joins_sent: u64,
    /// Joins answered `ok`.
    pub joins_ok: u64,
    /// Joins refused with `ClientJoinRateLimitReached`.
    pub joins_rate_limited: u64,
    /// Joins refused for another reason (`ChannelRateLimitReached`: too many channels).
    pub joins_refused_other: u64,
    /// Broadcasts sent.
    pub messages_sent: u64,
    /// "Too many messages per second" notices (`system` then `phx_close` of the channel).
    pub messages_limited: u64,
    /// Times the hub closed the socket.
    pub closed_by_hub: u64,
}

/// What to flood, where and until when.
#[derive(Debug)]
pub struct FloodPlan {
    /// The endpoint, with the flooder's own token.
    pub target: Target,
    /// Connection index (source address and masking seed).
    pub index: usize,
    /// Topic prefix of the run; the flooder's topics are `<prefix>-flood…`.
    pub prefix: String,
    /// Joins per second, each on a new topic.
    pub joins: u64,
    /// Broadcasts per second on the flood topic.
    pub messages: u64,
    /// When to stop.
    pub until: Instant,
}

/// Floods until `ctx.stop` fires or `plan.until` passes.
pub async fn run(ctx: Arc<Ctx>, plan: FloodPlan) -> FloodStats {
    let FloodPlan {
        target,
        index,
        prefix,
        joins,
        messages,
        until,
    } = plan;
    let mut st = FloodStats::default();
    let flood_topic = format!("realtime:{prefix}-flood");
    let payload = br#"{"type":"broadcast","event":"flood","payload":{"p":"xxxxxxxxxxxxxxxx"}}"#;
    let mut topic_n = 0u64;
    let mut msg_ref = 10_000_000u64;
    // Fractional sends carried over between ticks, so low rates are honoured too.
    let (mut join_due, mut msg_due) = (0f64, 0f64);
    while !ctx.stop.is_cancelled() && Instant::now() < until {
        let dial = ctx.dial(index, READ_BUF);
        st.connects += 1;
        let mut conn = match WsConn::connect(
            &target,
            dial.src,
            dial.connect_timeout,
            READ_BUF,
            dial.seed ^ st.connects,
        )
        .await
        {
            Ok(c) => c,
            Err(_) => {
                st.connects_refused += 1;
                // The hub said "too many connections": try again next tick, not in a busy loop.
                if !ctx.sleep(TICK).await {
                    break;
                }
                continue;
            }
        };
        // The channel the broadcasts go to; rejoined after the hub closes it.
        let flood_join = "1";
        conn.queue(Opcode::Text, &phoenix::join(flood_join, &flood_topic));
        st.joins_sent += 1;
        let mut next_tick = Instant::now();
        'conn: loop {
            if ctx.stop.is_cancelled() || Instant::now() >= until {
                break;
            }
            join_due += joins as f64 * TICK.as_secs_f64();
            msg_due += messages as f64 * TICK.as_secs_f64();
            while join_due >= 1.0 {
                join_due -= 1.0;
                topic_n += 1;
                let jr = format!("j{topic_n}");
                let topic = format!("realtime:{prefix}-flood-{index}-{topic_n}");
                conn.queue(Opcode::Text, &phoenix::join(&jr, &topic));
                st.joins_sent += 1;
            }
            let jr = Ref::from_plain(flood_join);
            while msg_due >= 1.0 {
                msg_due -= 1.0;
                msg_ref += 1;
                let r = Ref::from_plain(&msg_ref.to_string());
                let frame = v2::encode(Outbound {
                    join_ref: Some(&jr),
                    msg_ref: Some(&r),
                    topic: &flood_topic,
                    event: "broadcast",
                    payload: std::str::from_utf8(payload).unwrap_or("{}"),
                });
                conn.queue(Opcode::Text, &frame);
                st.messages_sent += 1;
            }
            if tokio::time::timeout(TICK, conn.flush()).await.is_err() {
                // The hub stopped reading us: that is the limit working; start over.
                break;
            }
            next_tick += TICK;
            // Read what the hub says until the next tick.
            loop {
                loop {
                    match conn.next_frame() {
                        Ok(Some((Opcode::Text, text))) => {
                            if classify(text, &flood_topic, &mut st) {
                                // The broadcast channel was closed: join it again.
                                conn.queue(Opcode::Text, &phoenix::join(flood_join, &flood_topic));
                                st.joins_sent += 1;
                            }
                        }
                        Ok(Some((Opcode::Close, _))) => {
                            st.closed_by_hub += 1;
                            break 'conn;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'conn,
                    }
                }
                let now = Instant::now();
                if now >= next_tick {
                    break;
                }
                match tokio::time::timeout(next_tick - now, conn.read_some()).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        st.closed_by_hub += 1;
                        break 'conn;
                    }
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
        }
        drop(conn);
    }
    st
}

/// Counts one text frame; true when the flood channel was closed by the message limit.
fn classify(text: &[u8], flood_topic: &str, st: &mut FloodStats) -> bool {
    let Ok(msg) = v2::decode(text) else {
        return false;
    };
    let Body::Json(raw) = &msg.body else {
        return false;
    };
    let body = raw.get();
    match msg.event.as_str() {
        "phx_reply" => {
            let is_join = msg.msg_ref.as_ref().is_some_and(|r| {
                let r = r.json();
                r.starts_with("\"j") || r == "\"1\""
            });
            if !is_join {
                return false;
            }
            if body.contains(r#""status":"ok""#) {
                st.joins_ok += 1;
            } else if body.contains("ClientJoinRateLimitReached") {
                st.joins_rate_limited += 1;
            } else {
                st.joins_refused_other += 1;
            }
            false
        }
        "system" if body.contains("Too many messages") => {
            st.messages_limited += 1;
            false
        }
        "phx_close" => msg.topic == flood_topic,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hubs_refusals_are_counted() {
        let t = "realtime:lt-flood";
        let mut st = FloodStats::default();
        let frames: [&[u8]; 6] = [
            br#"["1","1","realtime:lt-flood","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]"#,
            br#"["j2","j2","realtime:lt-flood-0-2","phx_reply",{"status":"error","response":{"reason":"ClientJoinRateLimitReached: Too many joins per second"}}]"#,
            br#"["j3","j3","realtime:lt-flood-0-3","phx_reply",{"status":"error","response":{"reason":"ChannelRateLimitReached: Too many channels"}}]"#,
            br#"["1",null,"realtime:lt-flood","system",{"extension":"system","status":"error","message":"Too many messages per second","channel":"lt-flood"}]"#,
            br#"[null,"10000001","realtime:lt-flood","phx_reply",{"status":"error","response":{"reason":"x"}}]"#,
            br#"["1","1","realtime:lt-flood-0-9","phx_close",{}]"#,
        ];
        let closed: Vec<bool> = frames.iter().map(|f| classify(f, t, &mut st)).collect();
        assert_eq!(
            closed, [false; 6],
            "only the flood topic's close asks for a rejoin"
        );
        assert!(classify(
            br#"["1","1","realtime:lt-flood","phx_close",{}]"#,
            t,
            &mut st
        ));
        assert_eq!(
            (st.joins_ok, st.joins_rate_limited, st.joins_refused_other),
            (1, 1, 1)
        );
        assert_eq!(st.messages_limited, 1);
    }
}
