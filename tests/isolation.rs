//! Isolation, as a property: generated worlds of users, build sessions, share tokens and topic
//! grants, driven through every transport with real clients, and checked against a model of who
//! may do what that is written here, independently of the hub's code.
//!
//! Each case spawns a hub (alternately with and without `--require-topic-grants`) and builds a
//! world from a seed: users (some with a `grants` claim of random read/write/presence patterns,
//! including patterns that must not match, such as `room:t1` for `room:t1:a` or `room:t1:*` for
//! `room:t10:a`), the build sessions they own (created over REST), holders of share JWTs for
//! some of them, and an anonymous caller. Then every identity, over every transport:
//!
//! - WebSocket (V1 or V2): joins every topic (ok exactly when the model says it may read),
//!   broadcasts on every joined one (ok exactly when it may write) and tracks presence (ok exactly
//!   when it may track);
//! - SSE: opens every topic's stream (200 exactly when it may read);
//! - REST: broadcasts on every topic (202 exactly when it may write, 403 otherwise) and reads every
//!   build session and its timeline (200 exactly when it may read, 404 otherwise);
//!
//! and the service role publishes on every topic, then a fence on every topic. Every frame and
//! event any connection receives is checked as it arrives: only topics the connection joined,
//! each marked message on the topic it was published to, presence entries only from identities
//! that may track there. Once a connection has seen the fence of each topic it reads, it must
//! have received exactly the accepted publications of those topics: nothing missing, nothing
//! extra (the memory broker fans out before the publish call returns, so anything published
//! before a fence is queued before it).
//!
//! `ISOLATION_CASES` sets the number of cases (default 12); the test prints the counts it checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use tests::sse::{SseClient, SseOptions, query_value, sse_path};
use tests::{Bcast, BcastPayload, Frame, Msg, TestHub, Vsn, WsClient, http_client, now_secs};

/// How long a connection may take to deliver what it is owed.
const DELIVERY: Duration = Duration::from_secs(10);

/// splitmix64: a small deterministic generator, so a failing case is reproduced by its number.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Presence,
}

/// The model's glob: `*` matches any run of characters. Recursive, unlike the hub's matcher.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[derive(Debug, Clone, Default)]
struct GrantsModel {
    read: Vec<String>,
    write: Vec<String>,
    presence: Vec<String>,
}

impl GrantsModel {
    fn allows(&self, access: Access, topic: &str) -> bool {
        let list = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
            Access::Presence => &self.presence,
        };
        list.iter().any(|p| glob(p.as_bytes(), topic.as_bytes()))
    }
    fn claim(&self) -> Value {
        json!({"read": self.read, "write": self.write, "presence": self.presence})
    }
}

#[derive(Debug)]
struct Identity {
    name: String,
    token: String,
    /// The UUID `sub` of a user (session owner).
    sub: Option<String>,
    /// The session a share JWT reads.
    share: Option<String>,
    grants: Option<GrantsModel>,
}

/// Who owns what, and what tokens without grants reach.
struct World {
    /// session id → owner sub.
    sessions: BTreeMap<String, String>,
    open_rooms: bool,
}

impl World {
    /// The model of DESIGN §3 and the grants claim: what `who` may do on `topic`.
    fn may(&self, who: &Identity, access: Access, topic: &str) -> bool {
        let granted = who.grants.as_ref().is_some_and(|g| g.allows(access, topic));
        if let Some(id) = topic.strip_prefix("build:") {
            let owner = self.sessions.get(id);
            return granted
                || (owner.is_some() && owner == who.sub.as_ref())
                || (access == Access::Read && who.share.as_deref() == Some(id));
        }
        let ungranted = who.grants.is_none() && self.open_rooms;
        if topic.starts_with("chat:") && access == Access::Write {
            return granted;
        }
        granted || ungranted
    }
}

const ROOMS: &[&str] = &[
    "room:t0:a",
    "room:t0:b",
    "room:t1:a",
    "room:t1:b",
    "room:t10:a",
];
const CHATS: &[&str] = &["chat:t0:s1", "chat:t1:s1"];
const PATTERNS: &[&str] = &[
    "room:t0:*",
    "room:t1:*",
    "room:t1:a",
    "room:t1*",
    "room:t1",
    "room:*:a",
    "room:*",
    "room:t0:b*",
    "chat:t0:*",
    "chat:*",
    "*:s1",
    "*",
];

fn user_token(sub: &str, grants: Option<&GrantsModel>) -> String {
    let mut claims = json!({"role": "authenticated", "sub": sub, "exp": now_secs() + 3600});
    if let Some(g) = grants {
        claims["grants"] = g.claim();
    }
    tests::token_claims(&claims)
}

fn service_token() -> String {
    tests::token("service_role", "isolation-backend", 3600)
}

fn random_grants(g: &mut Gen, builds: &[String]) -> GrantsModel {
    let list = |g: &mut Gen| {
        let n = g.below(4);
        (0..n)
            .map(|_| {
                if !builds.is_empty() && g.chance(10) {
                    // A grant on someone's build session (or, rarely, on all of them).
                    if g.chance(20) {
                        "build:*".to_owned()
                    } else {
                        format!("build:{}", g.pick(builds))
                    }
                } else {
                    (*g.pick(PATTERNS)).to_owned()
                }
            })
            .collect::<Vec<_>>()
    };
    GrantsModel {
        read: list(g),
        write: list(g),
        presence: list(g),
    }
}

/// Counts of what the run checked.
#[derive(Debug, Default)]
struct Counts {
    cases: usize,
    identities: usize,
    topics: usize,
    joins: usize,
    joins_refused: usize,
    ws_broadcasts: usize,
    tracks: usize,
    sse_opens: usize,
    sse_refused: usize,
    rest_broadcasts: usize,
    rest_reads: usize,
    frames_checked: usize,
    deliveries: usize,
}

/// One identity's WebSocket, with what it joined and what it received.
struct Conn {
    who: usize,
    ws: WsClient,
    /// Topic names whose join was accepted.
    joined: BTreeSet<String>,
    /// topic → markers received.
    got: BTreeMap<String, Vec<String>>,
    fences: BTreeSet<String>,
}

/// Checks one frame against the model and records what it carried.
fn observe(
    world: &World,
    ids: &[Identity],
    conn: &mut Conn,
    vsn: Vsn,
    f: &Frame,
    counts: &mut Counts,
) {
    counts.frames_checked += 1;
    let name = &ids[conn.who].name;
    if let Frame::Close(code, reason) = f {
        panic!("{name}'s connection was closed ({code} {reason:?})");
    }
    if let Some(b) = Bcast::from_frame(vsn, f) {
        let topic = b
            .topic
            .strip_prefix("realtime:")
            .unwrap_or(&b.topic)
            .to_owned();
        assert!(
            conn.joined.contains(&topic),
            "LEAK: {name} received a broadcast on {topic}, which it did not join: {b:?}"
        );
        let BcastPayload::Json(v) = &b.payload else {
            panic!("{name} received a binary payload on {topic}: {b:?}");
        };
        if let Some(t) = v["t"].as_str() {
            assert_eq!(
                t, topic,
                "LEAK: {name} received on {topic} a message published to {t}"
            );
            if v["fence"] == json!(true) {
                conn.fences.insert(topic);
            } else if let Some(m) = v["m"].as_str() {
                conn.got.entry(topic).or_default().push(m.to_owned());
            }
        }
        return;
    }
    let Frame::Text(v) = f else {
        panic!("{name} received a binary frame that is not a broadcast: {f:?}");
    };
    let msg = Msg::parse(vsn, v).unwrap_or_else(|| panic!("{name}: not a message: {v}"));
    if msg.topic == "phoenix" {
        return;
    }
    let topic = msg.topic.strip_prefix("realtime:").unwrap_or(&msg.topic);
    assert!(
        conn.joined.contains(topic),
        "LEAK: {name} received {} on {topic}, which it did not join: {v}",
        msg.event
    );
    let keys: Vec<&String> = match msg.event.as_str() {
        "presence_state" => msg.payload.as_object().map(|o| o.keys().collect()),
        "presence_diff" => msg.payload["joins"].as_object().map(|o| o.keys().collect()),
        _ => None,
    }
    .unwrap_or_default();
    for key in keys {
        let tracker = ids
            .iter()
            .find(|i| &i.name == key)
            .unwrap_or_else(|| panic!("{name} saw presence key {key} on {topic}, nobody's"));
        assert!(
            world.may(tracker, Access::Presence, topic),
            "LEAK: {name} saw {key}'s presence on {topic}, where {key} may not track"
        );
    }
}

/// Reads frames (checking each) until the reply to `msg_ref` on `topic`.
async fn reply(
    world: &World,
    ids: &[Identity],
    conn: &mut Conn,
    topic: &str,
    msg_ref: &str,
    counts: &mut Counts,
) -> Msg {
    let vsn = conn.ws.vsn;
    let wire = format!("realtime:{topic}");
    loop {
        let f = conn
            .ws
            .next_frame(&format!("the reply to ref {msg_ref} on {topic}"))
            .await;
        if let Frame::Text(v) = &f
            && let Some(m) = Msg::parse(vsn, v)
            && m.topic == wire
            && m.event == "phx_reply"
            && m.msg_ref.as_deref() == Some(msg_ref)
        {
            return m;
        }
        observe(world, ids, conn, vsn, &f, counts);
    }
}

async fn rest_broadcast(
    hub: &TestHub,
    token: &str,
    topic: &str,
    event: &str,
    payload: Value,
) -> u16 {
    http_client()
        .post(hub.http("/api/broadcast"))
        .bearer_auth(token)
        .json(&json!({"messages": [{"topic": topic, "event": event, "payload": payload}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /api/broadcast on {topic}: {e}"))
        .status()
        .as_u16()
}

async fn run_case(case: u64, counts: &mut Counts) {
    let mut g = Gen(case.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x1234_5678);
    let open_rooms = case % 2 == 1;
    let hub = TestHub::spawn_with(|c| {
        c.require_topic_grants = !open_rooms;
        c.simulate_builds = false;
        c.joins_per_sec = 100_000;
        c.join_burst = 100_000;
        c.rest_requests_per_hour = 1_000_000;
        c.connections_per_sec_per_ip = 1_000_000;
    })
    .await;
    let http = http_client();

    // Users and the sessions they own (created with a plain token first: ids feed the grants).
    let n_users = 3 + g.below(3);
    let subs: Vec<String> = (0..n_users)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let mut world = World {
        sessions: BTreeMap::new(),
        open_rooms,
    };
    let mut share_tokens = Vec::new();
    for sub in &subs {
        for _ in 0..g.below(3) {
            let res = http
                .post(hub.http("/sessions"))
                .bearer_auth(user_token(sub, None))
                .json(&json!({"vibeText": "isolation", "template": "saas", "options": {}}))
                .send()
                .await
                .expect("POST /sessions");
            assert_eq!(res.status(), 201, "creating a session for {sub}");
            let body: Value = res.json().await.expect("session JSON");
            let id = body["sessionId"].as_str().expect("sessionId").to_owned();
            share_tokens.push((
                id.clone(),
                body["shareToken"].as_str().expect("token").to_owned(),
            ));
            world.sessions.insert(id, sub.clone());
        }
    }
    let builds: Vec<String> = world.sessions.keys().cloned().collect();
    let mut ids = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        let grants = g.chance(75).then(|| random_grants(&mut g, &builds));
        ids.push(Identity {
            name: format!("user{i}"),
            token: user_token(sub, grants.as_ref()),
            sub: Some(sub.clone()),
            share: None,
            grants,
        });
    }
    for _ in 0..2 {
        if share_tokens.is_empty() {
            break;
        }
        let (id, share) = g.pick(&share_tokens).clone();
        let res = http
            .post(hub.http("/sessions/token"))
            .json(&json!({ "shareToken": share }))
            .send()
            .await
            .expect("POST /sessions/token");
        assert_eq!(res.status(), 200, "exchanging a share token");
        let body: Value = res.json().await.expect("token JSON");
        ids.push(Identity {
            name: format!("share{}", ids.len()),
            token: body["accessToken"]
                .as_str()
                .expect("accessToken")
                .to_owned(),
            sub: None,
            share: Some(id),
            grants: None,
        });
    }
    ids.push(Identity {
        name: "anon".into(),
        token: tests::token_claims(&json!({"role": "anon", "exp": now_secs() + 3600})),
        sub: None,
        share: None,
        grants: None,
    });
    let topics: Vec<String> = ROOMS
        .iter()
        .chain(CHATS)
        .map(|s| (*s).to_owned())
        .chain(builds.iter().map(|b| format!("build:{b}")))
        .collect();
    counts.cases += 1;
    counts.identities += ids.len();
    counts.topics += topics.len();

    // WebSocket: every identity joins every topic.
    let mut conns = Vec::new();
    for (who, id) in ids.iter().enumerate() {
        let vsn = if g.chance(50) { Vsn::V2 } else { Vsn::V1 };
        let ws = WsClient::connect(&hub, vsn, &id.token).await;
        let mut conn = Conn {
            who,
            ws,
            joined: BTreeSet::new(),
            got: BTreeMap::new(),
            fences: BTreeSet::new(),
        };
        for topic in &topics {
            let r = conn.ws.next_ref();
            conn.ws.set_join_ref(&format!("realtime:{topic}"), &r);
            let config = json!({"config": {
                "broadcast": {"ack": true, "self": false},
                "presence": {"key": id.name},
            }});
            conn.ws
                .send_msg(
                    Some(&r),
                    Some(&r),
                    &format!("realtime:{topic}"),
                    "phx_join",
                    config,
                )
                .await;
            let m = reply(&world, &ids, &mut conn, topic, &r, counts).await;
            let may = world.may(id, Access::Read, topic);
            assert_eq!(
                m.status() == "ok",
                may,
                "case {case}: {} joining {topic}: the model says {may}, the hub said {m:?}",
                id.name
            );
            counts.joins += 1;
            if may {
                conn.joined.insert(topic.clone());
            } else {
                counts.joins_refused += 1;
            }
        }
        conns.push(conn);
    }

    // SSE: every identity opens every topic's stream.
    let mut streams: Vec<(usize, String, SseClient)> = Vec::new();
    for (who, id) in ids.iter().enumerate() {
        for topic in &topics {
            let path = sse_path(topic, &format!("access_token={}", query_value(&id.token)));
            let res = SseClient::request(&hub, &path, &[], SseOptions::default()).await;
            let may = world.may(id, Access::Read, topic);
            counts.sse_opens += 1;
            match res {
                Ok(s) => {
                    assert!(
                        may,
                        "case {case}: LEAK: {} opened the stream of {topic}",
                        id.name
                    );
                    streams.push((who, topic.clone(), s));
                }
                Err(r) => {
                    assert!(
                        !may,
                        "case {case}: {} refused the stream of {topic}: {} {}",
                        id.name, r.status, r.body
                    );
                    assert!(
                        [401, 403, 404].contains(&r.status),
                        "case {case}: refusal status {} for {topic}",
                        r.status
                    );
                    counts.sse_refused += 1;
                }
            }
        }
    }

    // REST reads of every build session and its timeline.
    for id in &ids {
        for b in &builds {
            let may = world.may(id, Access::Read, &format!("build:{b}"));
            for path in [
                format!("/sessions?id={b}"),
                format!("/events?session_id={b}"),
            ] {
                let status = http
                    .get(hub.http(&path))
                    .bearer_auth(&id.token)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
                    .status()
                    .as_u16();
                let want = if may { 200 } else { 404 };
                assert_eq!(
                    status, want,
                    "case {case}: {} GET {path} (may read: {may})",
                    id.name
                );
                counts.rest_reads += 1;
            }
        }
    }

    // Publications: accepted markers per topic, and who sent each over WebSocket.
    let mut accepted: HashMap<String, Vec<(String, Option<usize>)>> = HashMap::new();
    let service = service_token();
    for topic in &topics {
        let m = format!("svc:{topic}");
        let st = rest_broadcast(&hub, &service, topic, "msg", json!({"t": topic, "m": m})).await;
        assert_eq!(st, 202, "the service role publishing on {topic}");
        accepted.entry(topic.clone()).or_default().push((m, None));
    }
    for conn in &mut conns {
        let who = conn.who;
        let joined: Vec<String> = conn.joined.iter().cloned().collect();
        for topic in joined {
            let id = &ids[who];
            let m = format!("ws:{}:{topic}", id.name);
            let r = conn
                .ws
                .broadcast_json(
                    &format!("realtime:{topic}"),
                    "msg",
                    json!({"t": topic, "m": m}),
                )
                .await;
            let rep = reply(&world, &ids, conn, &topic, &r, counts).await;
            let may = world.may(id, Access::Write, &topic);
            assert_eq!(
                rep.status() == "ok",
                may,
                "case {case}: {} broadcasting on {topic}: {rep:?}",
                id.name
            );
            counts.ws_broadcasts += 1;
            if may {
                accepted
                    .entry(topic.clone())
                    .or_default()
                    .push((m, Some(who)));
            }
            let r = conn
                .ws
                .push(
                    &format!("realtime:{topic}"),
                    "presence",
                    json!({"type": "presence", "event": "track", "payload": {"who": id.name}}),
                )
                .await;
            let rep = reply(&world, &ids, conn, &topic, &r, counts).await;
            let may = world.may(id, Access::Presence, &topic);
            assert_eq!(
                rep.status() == "ok",
                may,
                "case {case}: {} tracking on {topic}: {rep:?}",
                id.name
            );
            counts.tracks += 1;
        }
    }
    for id in &ids {
        for topic in &topics {
            let m = format!("rest:{}:{topic}", id.name);
            let st =
                rest_broadcast(&hub, &id.token, topic, "msg", json!({"t": topic, "m": m})).await;
            let may = world.may(id, Access::Write, topic);
            assert_eq!(
                st,
                if may { 202 } else { 403 },
                "case {case}: {} REST broadcast on {topic}",
                id.name
            );
            counts.rest_broadcasts += 1;
            if may {
                accepted.entry(topic.clone()).or_default().push((m, None));
            }
        }
    }
    for topic in &topics {
        let st = rest_broadcast(
            &hub,
            &service,
            topic,
            "fence",
            json!({"t": topic, "fence": true}),
        )
        .await;
        assert_eq!(st, 202, "the fence on {topic}");
    }

    // Every connection drains to its fences; then what it got is exactly what it was owed.
    for conn in &mut conns {
        let vsn = conn.ws.vsn;
        let name = ids[conn.who].name.clone();
        let deadline = tokio::time::Instant::now() + DELIVERY;
        while conn.fences != conn.joined {
            assert!(
                tokio::time::Instant::now() < deadline,
                "case {case}: {name} has fences for {:?} of {:?} after {DELIVERY:?}",
                conn.fences,
                conn.joined
            );
            let f = conn.ws.next_frame(&format!("{name}'s fences")).await;
            observe(&world, &ids, conn, vsn, &f, counts);
        }
        for topic in &conn.joined {
            let mut want: Vec<String> = accepted[topic]
                .iter()
                .filter(|(_, from)| *from != Some(conn.who))
                .map(|(m, _)| m.clone())
                .collect();
            let mut got = conn.got.remove(topic).unwrap_or_default();
            want.sort();
            got.sort();
            assert_eq!(got, want, "case {case}: what {name} received on {topic}");
            counts.deliveries += got.len();
        }
    }
    for (who, topic, sse) in &mut streams {
        let name = &ids[*who].name;
        let mut got = Vec::new();
        loop {
            let ev = sse
                .expect_event_within(&format!("{name}'s stream of {topic}"), DELIVERY)
                .await;
            let v = ev.json();
            assert_eq!(
                v["t"].as_str(),
                Some(topic.as_str()),
                "case {case}: LEAK: {name}'s stream of {topic} carried {ev:?}"
            );
            if v["fence"] == json!(true) {
                break;
            }
            got.push(v["m"].as_str().unwrap_or_default().to_owned());
        }
        let mut want: Vec<String> = accepted[topic.as_str()]
            .iter()
            .map(|(m, _)| m.clone())
            .collect();
        want.sort();
        got.sort();
        assert_eq!(
            got, want,
            "case {case}: what {name}'s stream of {topic} carried"
        );
        counts.deliveries += got.len();
    }
    for conn in conns {
        conn.ws.close().await;
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_presence_or_history_reaches_a_connection_not_entitled_to_it() {
    let cases: u64 = std::env::var("ISOLATION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut counts = Counts::default();
    for case in 0..cases {
        run_case(case, &mut counts).await;
    }
    eprintln!("isolation: {counts:?}");
    // The generator must produce both outcomes, or the test proves nothing.
    assert!(counts.joins_refused > 0 && counts.joins_refused < counts.joins);
    assert!(counts.sse_refused > 0 && counts.sse_refused < counts.sse_opens);
    assert!(counts.deliveries > 0);
}
