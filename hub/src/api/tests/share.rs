//! `POST /sessions/token`.

use channels::TokenVerifier as _;
use channels::kinds::Access;
use channels::sessions::build_topic;

use super::*;
use crate::auth::JwtVerifier;

#[tokio::test]
async fn a_share_token_becomes_a_read_only_jwt_for_that_session() {
    let st = state_with(|c| {
        c.simulate_builds = false;
        c.share_token_ttl = Duration::from_secs(600);
    });
    let app = router(st.clone());
    let owner = user(Uuid::new_v4());
    let (id, share) = create(&app, &owner, vibe("marketplace")).await;

    let before = now_secs();
    let r = send(
        &app,
        request(
            "POST",
            "/sessions/token",
            None,
            Some(json!({"shareToken": share})),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["sessionId"], id.to_string());
    let exp = r.body["expiresAt"].as_u64().unwrap();
    assert!((before + 600..=now_secs() + 600).contains(&exp), "{exp}");
    let jwt = r.body["accessToken"].as_str().unwrap().to_owned();

    // The JWT verifies with the hub's secret and names the session.
    let p = JwtVerifier::hs256(SECRET.as_bytes()).verify(&jwt).unwrap();
    assert_eq!(p.role, "anon");
    assert_eq!(p.share_session, Some(id));
    assert_eq!(p.exp, exp);

    // It reads the session (without its share token) and the timeline, and `build:<id>` …
    let r = send(&app, get(&format!("/sessions?id={id}"), Some(&jwt))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body.get("shareToken").is_none());
    let r = send(&app, get(&format!("/events?session_id={id}"), Some(&jwt))).await;
    assert_eq!(r.status, StatusCode::OK);
    let topic = build_topic(id);
    assert!(
        st.node
            .kinds
            .authorize(&p, &topic, Access::Read)
            .await
            .is_ok()
    );
    assert!(
        st.node
            .kinds
            .authorize(&p, &topic, Access::Write)
            .await
            .is_err()
    );
    // … but nothing else.
    let (other, _) = create(&app, &owner, vibe("saas")).await;
    let r = send(&app, get(&format!("/sessions?id={other}"), Some(&jwt))).await;
    assert_error(&r, 404, "NOT_FOUND");
    let r = send(
        &app,
        request("POST", "/sessions", Some(&jwt), Some(vibe("saas"))),
    )
    .await;
    assert_error(&r, 403, "FORBIDDEN");
}

#[tokio::test]
async fn unknown_and_malformed_share_tokens() {
    let app = router(state_with(|c| c.simulate_builds = false));
    for bad in ["not-a-token", "with spaces", "x".repeat(300).as_str()] {
        let r = send(
            &app,
            request(
                "POST",
                "/sessions/token",
                None,
                Some(json!({"shareToken": bad})),
            ),
        )
        .await;
        assert_error(&r, 401, "INVALID_TOKEN");
    }
    let r = send(
        &app,
        request("POST", "/sessions/token", None, Some(json!({}))),
    )
    .await;
    assert_error(&r, 400, "VALIDATION_ERROR");
    assert_eq!(
        r.body["error"]["context"]["fields"]["shareToken"],
        "is required"
    );
}
