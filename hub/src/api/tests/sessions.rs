//! `POST /sessions` and `GET /sessions`.

use super::*;

#[tokio::test]
async fn creating_needs_a_valid_token() {
    let app = router(state_with(|c| c.simulate_builds = false));
    let r = send(&app, request("POST", "/sessions", None, Some(vibe("saas")))).await;
    assert_error(&r, 401, "AUTHENTICATION_REQUIRED");
    let r = send(
        &app,
        request("POST", "/sessions", Some("garbage"), Some(vibe("saas"))),
    )
    .await;
    assert_error(&r, 401, "INVALID_TOKEN");
    assert_eq!(
        r.body["error"]["message"],
        "The token provided is not a valid JWT"
    );
    let expired = token(json!({"role": "service_role", "exp": now_secs() - 10}));
    let r = send(
        &app,
        request("POST", "/sessions", Some(&expired), Some(vibe("saas"))),
    )
    .await;
    assert_error(&r, 401, "INVALID_TOKEN");
    // The apikey header works like Authorization.
    let req = Request::builder()
        .method("POST")
        .uri("/sessions")
        .header("apikey", service())
        .header("content-type", "application/json")
        .body(Body::from(vibe("saas").to_string()))
        .unwrap();
    assert_eq!(send(&app, req).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn creating_needs_a_uuid_sub_or_the_service_role() {
    let app = router(state_with(|c| c.simulate_builds = false));
    for t in [
        token(json!({"role": "authenticated", "sub": "user-1"})),
        token(json!({"role": "anon"})),
    ] {
        let r = send(
            &app,
            request("POST", "/sessions", Some(&t), Some(vibe("saas"))),
        )
        .await;
        assert_error(&r, 403, "FORBIDDEN");
    }
}

#[tokio::test]
async fn invalid_bodies_list_every_problem() {
    let app = router(state_with(|c| c.simulate_builds = false));
    let owner = user(Uuid::new_v4());
    let body = json!({"vibeText": "", "template": "blog", "options": {"environmentMode": 1}});
    let r = send(&app, request("POST", "/sessions", Some(&owner), Some(body))).await;
    assert_error(&r, 400, "VALIDATION_ERROR");
    let fields = &r.body["error"]["context"]["fields"];
    assert_eq!(fields["vibeText"], "must not be empty");
    assert_eq!(fields["template"], "must be \"marketplace\" or \"saas\"");
    assert_eq!(
        fields["options.environmentMode"],
        "must be \"branch\" or \"project\""
    );

    let raw = |ct: &str, body: &str| {
        Request::builder()
            .method("POST")
            .uri("/sessions")
            .header("authorization", format!("Bearer {owner}"))
            .header("content-type", ct)
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let r = send(&app, raw("application/json", "{\"vibeText\":")).await;
    assert_error(&r, 400, "VALIDATION_ERROR");
    assert!(r.body["error"]["context"]["reason"].is_string());
    let r = send(&app, raw("text/plain", "{}")).await;
    assert_error(&r, 415, "UNSUPPORTED_MEDIA_TYPE");
    let huge = json!({"vibeText": "x".repeat(70_000), "template": "saas"}).to_string();
    let r = send(&app, raw("application/json", &huge)).await;
    assert_error(&r, 413, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn the_owner_gets_the_session_with_its_share_token() {
    let app = router(state_with(|c| c.simulate_builds = false));
    let owner_id = Uuid::new_v4();
    let owner = user(owner_id);
    let r = send(
        &app,
        request(
            "POST",
            "/sessions",
            Some(&owner),
            Some(json!({
                "vibeText": "  synth market  ",
                "template": "marketplace",
                "options": {"enableAnalytics": true},
            })),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["sessionId"].as_str().unwrap().to_owned();
    let share = r.body["shareToken"].as_str().unwrap().to_owned();
    assert_eq!(r.headers["location"], format!("/sessions?id={id}").as_str());
    assert_eq!(r.body.as_object().unwrap().len(), 2);

    let r = send(&app, get(&format!("/sessions?id={id}"), Some(&owner))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let s = &r.body;
    assert_eq!(s["id"], id);
    assert_eq!(s["status"], "queued");
    assert_eq!(s["template"], "marketplace");
    assert_eq!(s["vibeText"], "synth market");
    assert_eq!(
        s["options"],
        json!({"enableAnalytics": true, "enableDriftSentinel": false, "environmentMode": "branch"})
    );
    assert_eq!(s["createdBy"], owner_id.to_string());
    assert_eq!(s["shareToken"], share);
    for key in ["plan", "environment", "outputs", "error"] {
        assert!(s[key].is_null(), "{key}: {s}");
    }
    assert!(s["createdAt"].is_string() && s["updatedAt"].is_string());
}

#[tokio::test]
async fn who_may_read_a_session() {
    let app = router(state_with(|c| c.simulate_builds = false));
    let owner = user(Uuid::new_v4());
    let (id, share) = create(&app, &owner, vibe("saas")).await;
    let uri = format!("/sessions?id={id}");

    // Service: yes, with the share token.
    let r = send(&app, get(&uri, Some(&service()))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["shareToken"], share.as_str());

    // Share token in the header or the query: yes, without the share token.
    let req = Request::builder()
        .uri(&uri)
        .header("x-share-token", &share)
        .body(Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body.get("shareToken").is_none());
    let r = send(&app, get(&format!("{uri}&share_token={share}"), None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.get("shareToken").is_none());

    // A stranger, a wrong share token, another session's share token: the same 404 as a
    // session that does not exist.
    let stranger = user(Uuid::new_v4());
    let (_, other_share) = create(&app, &stranger, vibe("saas")).await;
    for r in [
        send(&app, get(&uri, Some(&stranger))).await,
        send(&app, get(&format!("{uri}&share_token=wrong"), None)).await,
        send(&app, get(&format!("{uri}&share_token={other_share}"), None)).await,
        send(
            &app,
            get(&format!("/sessions?id={}", Uuid::new_v4()), Some(&owner)),
        )
        .await,
    ] {
        assert_error(&r, 404, "NOT_FOUND");
        assert_eq!(r.body["error"]["message"], "Session not found");
    }

    // Nothing at all: 401. A broken token is refused even with a share token.
    assert_error(
        &send(&app, get(&uri, None)).await,
        401,
        "AUTHENTICATION_REQUIRED",
    );
    let r = send(
        &app,
        get(&format!("{uri}&share_token={share}"), Some("bad")),
    )
    .await;
    assert_error(&r, 401, "INVALID_TOKEN");

    // Malformed ids are validation errors.
    let r = send(&app, get("/sessions?id=123", Some(&owner))).await;
    assert_error(&r, 400, "VALIDATION_ERROR");
    assert_eq!(r.body["error"]["context"]["fields"]["id"], "must be a UUID");
    let r = send(&app, get("/sessions", Some(&owner))).await;
    assert_eq!(r.body["error"]["context"]["fields"]["id"], "is required");
}

#[tokio::test]
async fn a_service_without_sub_creates_ownerless_sessions() {
    let app = router(state_with(|c| c.simulate_builds = false));
    let (id, _) = create(&app, &service(), vibe("marketplace")).await;
    let r = send(&app, get(&format!("/sessions?id={id}"), Some(&service()))).await;
    assert!(r.body["createdBy"].is_null());
    // No user owns it, so a user without a share token cannot read it.
    let r = send(
        &app,
        get(&format!("/sessions?id={id}"), Some(&user(Uuid::new_v4()))),
    )
    .await;
    assert_error(&r, 404, "NOT_FOUND");
}
