//! Terminal relay (issue 6) through a real hub with WebSocket clients: a host that echoes raw
//! bytes, viewers that type and watch. Bytes round-trip exactly (all 256 values), a second viewer
//! sees the same output, a reconnecting viewer resumes from its byte cursor with nothing
//! duplicated, only the driver's input reaches the host, handoff, host drop and return, the
//! per-user terminal limit, and authorisation. The real PTY host (`hub terminal-agent`) is
//! tested in `terminal_agent.rs`.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tests::{TestHub, WAIT, http_client, token};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn service() -> String {
    token("service_role", "worker", 3600)
}

async fn connect(hub: &TestHub, id: &str, query: &str) -> Ws {
    let url = format!("ws://{}/v1/terminal/{id}?{query}", hub.addr);
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .unwrap_or_else(|_| panic!("timed out connecting {url}"))
        .unwrap_or_else(|e| panic!("connecting {url}: {e}"));
    ws
}

/// The HTTP status of a refused upgrade.
async fn refused(hub: &TestHub, id: &str, query: &str) -> (u16, String) {
    let url = format!("ws://{}/v1/terminal/{id}?{query}", hub.addr);
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str())).await {
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Ok(Ok(_)) => panic!("{url}: the upgrade was accepted, expected a refusal"),
        Ok(Err(e)) => panic!("{url}: {e}"),
        Err(_) => panic!("timed out waiting for the refusal of {url}"),
    }
}

/// Next text frame as JSON (skipping binary frames when `skip_binary`).
async fn next_json(ws: &mut Ws, what: &str) -> Value {
    loop {
        match next(ws, what).await {
            Message::Text(t) => {
                return serde_json::from_str(&t).unwrap_or_else(|e| panic!("{what}: {e}: {t}"));
            }
            Message::Binary(b) => panic!("{what}: expected a control message, got bytes {b:?}"),
            _ => continue,
        }
    }
}

async fn next(ws: &mut Ws, what: &str) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
            .unwrap_or_else(|| panic!("connection ended while waiting for {what}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if matches!(m, Message::Ping(_) | Message::Pong(_)) {
            continue;
        }
        return m;
    }
}

/// Reads binary frames until `n` bytes arrived (text frames are returned separately).
async fn read_bytes(ws: &mut Ws, n: usize, what: &str) -> (Vec<u8>, Vec<Value>) {
    let mut got = Vec::new();
    let mut texts = Vec::new();
    while got.len() < n {
        match next(ws, what).await {
            Message::Binary(b) => got.extend_from_slice(&b),
            Message::Text(t) => texts.push(serde_json::from_str(&t).unwrap_or(json!(t.as_str()))),
            other => panic!("{what}: unexpected {other:?}"),
        }
    }
    assert_eq!(got.len(), n, "{what}: more bytes than expected: {got:?}");
    (got, texts)
}

async fn send_bytes(ws: &mut Ws, b: &[u8]) {
    ws.send(Message::Binary(b.to_vec().into()))
        .await
        .expect("send bytes");
}

async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send a control message");
}

/// A host that echoes every input byte back as output, until its connection ends.
fn echo_host(mut host: Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(m)) = host.next().await {
            if let Message::Binary(b) = m
                && host.send(Message::Binary(b)).await.is_err()
            {
                return;
            }
        }
    })
}

async fn owned_session(hub: &TestHub, owner: &str) -> String {
    let res = http_client()
        .post(hub.http("/sessions"))
        .bearer_auth(token("authenticated", owner, 3600))
        .json(&json!({"vibeText": "a terminal test", "template": "saas", "options": {}}))
        .send()
        .await
        .expect("POST /sessions");
    assert_eq!(res.status(), 201, "creating a session");
    let body: Value = res.json().await.expect("session JSON");
    body["sessionId"].as_str().expect("sessionId").to_owned()
}

#[tokio::test]
async fn bytes_round_trip_and_every_viewer_sees_the_output() {
    let hub = TestHub::spawn().await;
    let mut host = connect(
        &hub,
        "t-echo",
        &format!("role=host&access_token={}", service()),
    )
    .await;
    let hello = next_json(&mut host, "the host's connected message").await;
    assert_eq!(hello["type"], "connected");
    let echo = echo_host(host);

    let mut a = connect(&hub, "t-echo", &format!("access_token={}", service())).await;
    let mut b = connect(
        &hub,
        "t-echo",
        &format!("role=viewer&access_token={}", service()),
    )
    .await;
    for (v, name) in [(&mut a, "a"), (&mut b, "b")] {
        let c = next_json(v, &format!("viewer {name}'s connected message")).await;
        assert_eq!(
            (c["type"].as_str(), c["host"].as_bool()),
            (Some("connected"), Some(true))
        );
        assert_eq!(c["cursor"], 0);
    }
    let all: Vec<u8> = (0..=255u8).collect();
    send_bytes(&mut a, &all).await;
    let (got_a, texts) = read_bytes(&mut a, 256, "the echo of all byte values on a").await;
    assert_eq!(got_a, all, "every byte value round-trips unchanged");
    assert_eq!(
        texts[0]["type"], "control",
        "a became the driver by typing: {texts:?}"
    );
    let (got_b, _) = read_bytes(&mut b, 256, "the same output on b").await;
    assert_eq!(got_b, all);

    // b does not drive: its input never reaches the host.
    send_bytes(&mut b, b"rm -rf /\r").await;
    let e = next_json(&mut b, "b's refusal").await;
    assert_eq!(e["type"], "error");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("another viewer is driving"),
        "{e}"
    );
    send_bytes(&mut a, b"ok").await;
    let (got, _) = read_bytes(&mut a, 2, "a's next echo").await;
    assert_eq!(got, b"ok", "only a's input was echoed");

    // Handoff: b takes control, a is refused, b types.
    send_json(&mut b, json!({"type": "take_control"})).await;
    let (_, texts) = read_bytes(&mut b, 2, "the echo of ok on b").await;
    assert!(texts.is_empty());
    let c = next_json(&mut b, "the control change on b").await;
    assert_eq!(
        (c["type"].as_str(), c["driver"].as_str()),
        (Some("control"), Some("worker"))
    );
    send_bytes(&mut b, b"b!").await;
    let (got, _) = read_bytes(&mut b, 2, "b's echo").await;
    assert_eq!(got, b"b!");
    echo.abort();
}

#[tokio::test]
async fn a_reconnecting_viewer_resumes_from_its_cursor_without_duplicates() {
    let hub = TestHub::spawn().await;
    let mut host = connect(
        &hub,
        "t-scroll",
        &format!("role=host&access_token={}", service()),
    )
    .await;
    next_json(&mut host, "host connected").await;
    let mut v = connect(&hub, "t-scroll", &format!("access_token={}", service())).await;
    next_json(&mut v, "viewer connected").await;
    // A watcher that stays: seeing output on it means the hub has taken it in.
    let mut watcher = connect(&hub, "t-scroll", &format!("access_token={}", service())).await;
    next_json(&mut watcher, "watcher connected").await;
    host.send(Message::Binary(b"first ".to_vec().into()))
        .await
        .expect("output");
    let (got, _) = read_bytes(&mut v, 6, "the first output").await;
    assert_eq!(got, b"first ");
    drop(v);
    // Output while the viewer is away.
    host.send(Message::Binary(b"second ".to_vec().into()))
        .await
        .expect("output");
    let (got, _) = read_bytes(&mut watcher, 13, "both outputs on the watcher").await;
    assert_eq!(got, b"first second ");
    let mut late = connect(&hub, "t-scroll", &format!("access_token={}", service())).await;
    let c = next_json(&mut late, "a fresh viewer's connected").await;
    assert_eq!(c["cursor"], 13);
    let (window, _) = read_bytes(&mut late, 13, "the scrollback for a fresh viewer").await;
    assert_eq!(window, b"first second ");
    let mut back = connect(
        &hub,
        "t-scroll",
        &format!("cursor=6&access_token={}", service()),
    )
    .await;
    let c = next_json(&mut back, "the returning viewer's connected").await;
    assert_eq!(
        (c["cursor"].as_u64(), c["continuous"].as_bool()),
        (Some(13), Some(true))
    );
    host.send(Message::Binary(b"third".to_vec().into()))
        .await
        .expect("output");
    let (got, _) = read_bytes(&mut back, 12, "what the returning viewer missed, then live").await;
    assert_eq!(got, b"second third", "missed output once, then the tail");
    let (got, _) = read_bytes(&mut late, 5, "live output on the fresh viewer").await;
    assert_eq!(got, b"third");
}

#[tokio::test]
async fn host_drop_and_return() {
    let hub = TestHub::spawn().await;
    let q = format!("role=host&access_token={}", service());
    let mut host = connect(&hub, "t-host", &q).await;
    next_json(&mut host, "host connected").await;
    let mut v = connect(&hub, "t-host", &format!("access_token={}", service())).await;
    next_json(&mut v, "viewer connected").await;
    drop(host);
    let m = next_json(&mut v, "host_disconnected").await;
    assert_eq!(m["type"], "host_disconnected");
    send_bytes(&mut v, b"x").await;
    let e = next_json(&mut v, "the refusal without a host").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("host is not connected"),
        "{e}"
    );
    let host = connect(&hub, "t-host", &q).await;
    let m = next_json(&mut v, "host_connected").await;
    assert_eq!(m["type"], "host_connected");
    let echo = echo_host(host);
    send_bytes(&mut v, b"back").await;
    let (got, _) = read_bytes(&mut v, 4, "the echo through the returned host").await;
    assert_eq!(got, b"back");
    echo.abort();
}

#[tokio::test]
async fn authorisation_and_the_per_user_limit() {
    let hub = TestHub::spawn_with(|c| c.terminals_per_user = 2).await;
    let owner = uuid::Uuid::new_v4().to_string();
    let s1 = owned_session(&hub, &owner).await;
    let s2 = owned_session(&hub, &owner).await;
    let s3 = owned_session(&hub, &owner).await;
    let mine = token("authenticated", &owner, 3600);
    let stranger = token("authenticated", &uuid::Uuid::new_v4().to_string(), 3600);

    let (status, body) = refused(&hub, &s1, "").await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = refused(&hub, &s1, "access_token=garbage").await;
    assert_eq!(status, 401, "bad token: {body}");
    let (status, body) = refused(&hub, &s1, &format!("role=host&access_token={mine}")).await;
    assert_eq!(status, 403, "a user cannot host: {body}");
    let (status, body) = refused(&hub, &s1, &format!("access_token={stranger}")).await;
    assert_eq!(status, 403, "another user's terminal: {body}");
    let (status, _) = refused(&hub, &s1, &format!("role=boss&access_token={mine}")).await;
    assert_eq!(status, 400);

    let mut t1 = connect(&hub, &s1, &format!("access_token={mine}")).await;
    next_json(&mut t1, "the owner's first terminal").await;
    let mut t2 = connect(&hub, &s2, &format!("access_token={mine}")).await;
    next_json(&mut t2, "the owner's second terminal").await;
    let mut t3 = connect(&hub, &s3, &format!("access_token={mine}")).await;
    let e = next_json(&mut t3, "the refusal of a third terminal").await;
    assert_eq!(e["type"], "error");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("TooManyTerminals"),
        "{e}"
    );
    match next(&mut t3, "the close after the refusal").await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4029),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // Once the first is closed a third may open: wait until the hub has let go of it and the
    // refused one (the detach runs when a connection ends), then open the third.
    drop(t1);
    drop(t3);
    let connections = || hub.state.node.connections.len();
    tests::pg::wait_for(
        "the hub to end the closed terminal connections (only the second left)",
        WAIT,
        || async { connections() == 1 },
    )
    .await;
    let mut t = connect(&hub, &s3, &format!("access_token={mine}")).await;
    let m = next_json(&mut t, "the third terminal after closing one").await;
    assert_eq!(m["type"], "connected", "a slot was freed: {m}");
}
