//! The real PTY host (issue 6): `hub terminal-agent` as a child process running `/bin/sh` on an
//! in-process hub (memory), with viewers on `/v1/terminal/{id}`. Typing reaches the shell and
//! every viewer sees its output, the driver's resize reaches the PTY (`stty size`), a viewer
//! reconnecting with its cursor gets what it missed once and then the live output, a share-token
//! viewer watches but its keystrokes never reach the shell, two drivers hand the keyboard over,
//! and an agent that dies is announced and, once restarted, continues the same terminal.
//!
//! Runs the hub binary (`tests::nodes::hub_bin()`): `scripts/test` builds it; with plain
//! `cargo test`, run `cargo build -p hub` first.
//!
//! Commands print with shell arithmetic (`echo one-$((0+1))` prints `one-1`) so the terminal's
//! echo of the typed line never matches the output waited for.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tests::terminal::{Agent, Term, count};
use tests::{TestHub, http_client, token};

/// A service-role token naming `sub` (drives and watches any terminal).
fn service(sub: &str) -> String {
    token("service_role", sub, 3600)
}

/// A user's token; `sub` is the session owner's id.
fn user(sub: &str) -> String {
    token("authenticated", sub, 3600)
}

/// A build session owned by a new user: (session id, owner id, share token).
async fn owned_session(hub: &TestHub) -> (String, String, String) {
    let owner = uuid::Uuid::new_v4().to_string();
    let res = http_client()
        .post(hub.http("/sessions"))
        .bearer_auth(user(&owner))
        .json(&json!({"vibeText": "a terminal agent test", "template": "saas", "options": {}}))
        .send()
        .await
        .expect("POST /sessions");
    assert_eq!(res.status(), 201, "creating a session");
    let body: Value = res.json().await.expect("session JSON");
    (
        body["sessionId"].as_str().expect("sessionId").to_owned(),
        owner,
        body["shareToken"].as_str().expect("shareToken").to_owned(),
    )
}

/// The read-only JWT `POST /sessions/token` gives for a share token.
async fn share_jwt(hub: &TestHub, share_token: &str) -> String {
    let res = http_client()
        .post(hub.http("/sessions/token"))
        .json(&json!({ "shareToken": share_token }))
        .send()
        .await
        .expect("POST /sessions/token");
    assert_eq!(res.status(), 200, "exchanging the share token");
    let body: Value = res.json().await.expect("token JSON");
    body["accessToken"]
        .as_str()
        .expect("accessToken")
        .to_owned()
}

/// The agent hosting `/bin/sh` as terminal `id`.
fn shell_agent(addr: SocketAddr, id: &str) -> Agent {
    Agent::start(addr, id, &service("terminal-agent"), &["/bin/sh"])
}

/// A viewer of `id` with `token` that waits until the host is connected.
async fn viewer(addr: SocketAddr, id: &str, token: &str, name: &str) -> Term {
    let mut v = Term::connect(addr, id, &format!("access_token={token}"), name).await;
    v.expect_host(&format!("{name}: the agent connecting as the host"))
        .await;
    v
}

/// Types `echo <tag>-$((<n>+1))` on `v`; returns what it prints (`<tag>-<n+1>` and the line end).
async fn type_echo(v: &mut Term, tag: &str, n: u32) -> Vec<u8> {
    v.send_bytes(format!("echo {tag}-$(({n}+1))\r").as_bytes())
        .await;
    format!("{tag}-{}\r\n", n + 1).into_bytes()
}

/// The longest common prefix of two viewers' streams must be the same bytes at the same
/// offsets, and cover at least `at_least` bytes past `from`.
#[track_caller]
fn same_stream(a: &Term, b: &Term, at_least: u64) {
    let from = a.base.max(b.base);
    let to = a.offset().min(b.offset());
    assert!(
        to >= at_least,
        "{} and {} have only {to} bytes in common (expected {at_least})",
        a.name,
        b.name
    );
    let slice = |t: &Term| t.out[(from - t.base) as usize..(to - t.base) as usize].to_vec();
    assert_eq!(
        tests::terminal::show(&slice(a)),
        tests::terminal::show(&slice(b)),
        "{} and {} saw different bytes at offsets {from}..{to}",
        a.name,
        b.name
    );
}

/// A path under /tmp no other test (or run) uses.
fn unique_path(what: &str) -> String {
    format!("/tmp/hub-terminal-{what}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn typing_reaches_the_shell_every_viewer_sees_it_and_resize_reaches_the_pty() {
    let hub = TestHub::spawn().await;
    let (id, owner, _) = owned_session(&hub).await;
    let _agent = shell_agent(hub.addr, &id);
    let mut a = viewer(hub.addr, &id, &user(&owner), "owner").await;
    let mut b = viewer(hub.addr, &id, &service("watcher"), "second viewer").await;

    a.send_bytes(b"echo hi\r").await;
    // The shell's output line, not the terminal's echo of `echo hi` (preceded by the prompt).
    let end = a.expect_output(b"\nhi\r\n", "hi from the shell").await;
    a.expect_driver(Some(&owner), "the owner drives by typing")
        .await;
    b.expect_output(b"\nhi\r\n", "the same output on the second viewer")
        .await;
    b.expect_driver(Some(&owner), "the second viewer told who drives")
        .await;

    // The driver's size reaches the PTY; the other viewer is told the new size.
    a.send_json(json!({"type": "resize", "cols": 100, "rows": 30}))
        .await;
    b.expect_text("the new size (resize 100x30) on the second viewer", |m| {
        *m == json!({"type": "resize", "cols": 100, "rows": 30})
    })
    .await;
    a.send_bytes(b"stty size\r").await;
    a.expect_output(b"\n30 100\r\n", "`stty size` after the resize")
        .await;
    b.expect_output(b"\n30 100\r\n", "`stty size` on the second viewer")
        .await;
    assert!(
        !a.has_text("error") && !b.has_text("error"),
        "no refusals: {:?} / {:?}",
        a.all_texts,
        b.all_texts
    );
    same_stream(&a, &b, end as u64);
}

#[tokio::test]
async fn a_reconnecting_viewer_gets_what_it_missed_once_then_live_output() {
    let hub = TestHub::spawn().await;
    let id = format!("agent-resume-{}", uuid::Uuid::new_v4().simple());
    let _agent = shell_agent(hub.addr, &id);
    let mut driver = viewer(hub.addr, &id, &service("driver"), "driver").await;
    let mut watcher = viewer(hub.addr, &id, &service("watcher"), "watcher").await;
    let mut away = viewer(hub.addr, &id, &service("away"), "viewer going away").await;

    let one = type_echo(&mut driver, "one", 0).await;
    away.expect_output(&one, "the first output before going away")
        .await;
    let cursor = away.offset();
    away.close().await;

    let two = type_echo(&mut driver, "two", 1).await;
    watcher
        .expect_output(&two, "output while the viewer is away")
        .await;
    let three = type_echo(&mut driver, "three", 2).await;
    watcher
        .expect_output(&three, "more output while the viewer is away")
        .await;

    let mut back = Term::connect(
        hub.addr,
        &id,
        &format!("cursor={cursor}&access_token={}", service("away")),
        "returning viewer",
    )
    .await;
    assert_eq!(
        back.connected["continuous"], true,
        "the scrollback still holds cursor {cursor}: {}",
        back.connected
    );
    let resumed_at = back.connected["cursor"].as_u64().expect("connected.cursor");
    assert!(
        resumed_at > cursor,
        "connected.cursor {resumed_at} is past the old cursor {cursor}"
    );
    back.expect_output(&three, "the missed output").await;
    let four = type_echo(&mut driver, "four", 3).await;
    back.expect_output(&four, "live output after the catch-up")
        .await;
    watcher
        .expect_output(&four, "live output on the watcher")
        .await;
    assert!(
        back.offset() >= resumed_at,
        "the catch-up ({} bytes from {cursor}) ends at connected.cursor {resumed_at}",
        back.out.len()
    );

    // Exactly the watcher's bytes from the old cursor on: nothing missing, nothing twice.
    same_stream(&back, &watcher, back.offset().min(watcher.offset()));
    for (what, line) in [("two", &two), ("three", &three), ("four", &four)] {
        assert_eq!(
            count(&back.out, line),
            1,
            "{what} once in the resumed stream: \"{}\"",
            tests::terminal::show(&back.out)
        );
    }
    assert_eq!(
        count(&back.out, &one),
        0,
        "output before the cursor is not sent again"
    );
}

#[tokio::test]
async fn a_share_token_viewer_watches_but_its_keystrokes_never_reach_the_shell() {
    let hub = TestHub::spawn().await;
    let (id, owner, share) = owned_session(&hub).await;
    let guest_token = share_jwt(&hub, &share).await;
    let _agent = shell_agent(hub.addr, &id);
    let mut owner_v = viewer(hub.addr, &id, &user(&owner), "owner").await;
    let mut guest = viewer(hub.addr, &id, &guest_token, "share-token viewer").await;
    let planted = unique_path("guest");

    guest
        .send_bytes(format!("touch {planted}\r").as_bytes())
        .await;
    guest
        .expect_error(
            "only the terminal's owner or the service role may type",
            "the refusal of the guest's input",
        )
        .await;
    guest.send_json(json!({"type": "take_control"})).await;
    guest
        .expect_error("only the terminal's owner", "the refusal of take_control")
        .await;
    guest
        .send_json(json!({"type": "resize", "cols": 50, "rows": 10}))
        .await;
    guest
        .expect_error("only the terminal's owner", "the refusal of a resize")
        .await;

    // A later command from the owner has completed, so anything typed before it would have run.
    let done = type_echo(&mut owner_v, "sentinel", 41).await;
    owner_v
        .expect_output(&done, "the owner's sentinel command")
        .await;
    guest
        .expect_output(&done, "the sentinel's output on the share-token viewer")
        .await;
    owner_v
        .send_bytes(
            format!("test -e {planted} && echo planted-$((1+1)) || echo absent-$((1+1))\r")
                .as_bytes(),
        )
        .await;
    owner_v
        .expect_output(
            b"absent-2\r\n",
            "the shell saying the guest's file does not exist",
        )
        .await;
    assert!(
        !std::path::Path::new(&planted).exists(),
        "the share-token viewer's `touch {planted}` ran"
    );
    assert_eq!(
        count(&owner_v.out, b"touch"),
        0,
        "the guest's keystrokes never reached the PTY (not even its echo): \"{}\"",
        tests::terminal::show(&owner_v.out)
    );
    assert_eq!(
        guest.connected["driver"],
        Value::Null,
        "nobody drove when the guest connected"
    );
}

#[tokio::test]
async fn two_drivers_hand_the_keyboard_over() {
    let hub = TestHub::spawn().await;
    let (id, owner, _) = owned_session(&hub).await;
    let _agent = shell_agent(hub.addr, &id);
    let mut human = viewer(hub.addr, &id, &user(&owner), "owner").await;
    let mut bot = viewer(hub.addr, &id, &service("agent-bot"), "service viewer").await;
    let refused = unique_path("not-driver");

    let out = type_echo(&mut human, "human", 0).await;
    human.expect_output(&out, "the owner's command").await;
    human.expect_driver(Some(&owner), "the owner drives").await;
    bot.expect_driver(Some(&owner), "the bot told the owner drives")
        .await;

    bot.send_bytes(format!("touch {refused}\r").as_bytes())
        .await;
    bot.expect_error(
        "another viewer is driving",
        "the bot's input while the owner drives",
    )
    .await;
    bot.send_json(json!({"type": "release"})).await;
    bot.expect_error(
        "you are not driving",
        "release by a viewer that does not drive",
    )
    .await;

    bot.send_json(json!({"type": "take_control"})).await;
    bot.expect_driver(Some("agent-bot"), "the bot took control")
        .await;
    human
        .expect_driver(Some("agent-bot"), "the owner told the bot drives")
        .await;
    human.send_bytes(b"echo nope\r").await;
    human
        .expect_error(
            "another viewer is driving",
            "the owner's input after the handoff",
        )
        .await;
    let out = type_echo(&mut bot, "bot", 1).await;
    bot.expect_output(&out, "the bot's command").await;
    human
        .expect_output(&out, "the bot's command on the owner's screen")
        .await;

    // And back: the owner takes control again, the bot releases nothing it does not hold.
    human.send_json(json!({"type": "take_control"})).await;
    human
        .expect_driver(Some(&owner), "the owner took control back")
        .await;
    bot.expect_driver(Some(&owner), "the bot told the owner drives again")
        .await;
    let out = type_echo(&mut human, "back", 2).await;
    human.expect_output(&out, "the owner typing again").await;
    human.send_json(json!({"type": "release"})).await;
    human.expect_driver(None, "the owner released").await;
    bot.expect_driver(None, "the bot told nobody drives").await;
    let out = type_echo(&mut bot, "free", 3).await;
    bot.expect_output(&out, "the bot typing once nobody drives")
        .await;
    bot.expect_driver(Some("agent-bot"), "the bot drives by typing")
        .await;

    assert_eq!(
        count(&human.out, b"nope"),
        0,
        "refused input was never echoed"
    );
    assert_eq!(
        count(&human.out, b"touch"),
        0,
        "refused input was never echoed"
    );
    assert!(
        !std::path::Path::new(&refused).exists(),
        "refused input ran"
    );
}

#[tokio::test]
async fn the_agent_dies_and_comes_back_on_the_same_terminal() {
    let hub = TestHub::spawn().await;
    let (id, owner, _) = owned_session(&hub).await;
    let mut agent = shell_agent(hub.addr, &id);
    let mut v = viewer(hub.addr, &id, &user(&owner), "owner").await;
    let before = type_echo(&mut v, "before", 2).await;
    v.expect_output(&before, "output from the first agent")
        .await;

    agent.kill().await;
    v.expect_type("host_disconnected", "the agent's death announced")
        .await;
    v.send_bytes(b"echo lost\r").await;
    v.expect_error(
        "Unavailable: the terminal's host is not connected",
        "input while the agent is gone",
    )
    .await;
    v.send_json(json!({"type": "take_control"})).await;
    v.expect_error(
        "host is not connected",
        "take_control while the agent is gone",
    )
    .await;
    let gone_at = v.offset();

    let _agent = shell_agent(hub.addr, &id);
    v.expect_type("host_connected", "the restarted agent announced")
        .await;
    let after = type_echo(&mut v, "after", 4).await;
    v.expect_output(&after, "output from the restarted agent")
        .await;
    assert!(v.offset() > gone_at);

    // A viewer arriving now gets the old scrollback and the new output, at the same offsets.
    let mut late = viewer(hub.addr, &id, &service("late"), "late viewer").await;
    late.expect_output(&before, "the first agent's output in the scrollback")
        .await;
    late.expect_output(&after, "the second agent's output in the scrollback")
        .await;
    same_stream(&late, &v, v.offset().min(late.offset()));
    assert_eq!(count(&v.out, b"lost"), 0, "refused input was never echoed");
    assert!(
        late.connected["cursor"].as_u64() >= Some(gone_at),
        "offsets continue across agents: {}",
        late.connected
    );
}
