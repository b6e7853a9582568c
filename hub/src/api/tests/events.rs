//! `GET /events`.

use channels::sessions::NewEvent;

use super::*;

#[tokio::test]
async fn the_timeline_follows_the_session_access_rule_in_order() {
    let st = state_with(|c| c.simulate_builds = false);
    let app = router(st.clone());
    let owner = user(Uuid::new_v4());
    let (id, share) = create(&app, &owner, vibe("saas")).await;
    for kind in ["plan_created", "environment_created", "migration_started"] {
        st.sessions
            .append_event(NewEvent {
                session_id: id,
                kind: kind.into(),
                message: kind.into(),
                payload: json!({"k": kind}),
            })
            .await
            .unwrap();
    }
    let uri = format!("/events?session_id={id}");
    let r = send(&app, get(&uri, Some(&owner))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let events = r.body.as_array().unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["plan_created", "environment_created", "migration_started"]
    );
    let e = &events[0];
    assert_eq!(e["session_id"], id.to_string());
    assert_eq!(e["payload"], json!({"k": "plan_created"}));
    assert!(e["id"].is_string() && e["ts"].is_string() && e["message"].is_string());
    let ts: Vec<_> = events.iter().map(|e| e["ts"].as_str().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");

    assert_eq!(
        send(&app, get(&uri, Some(&service()))).await.status,
        StatusCode::OK
    );
    let r = send(&app, get(&format!("{uri}&share_token={share}"), None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_array().unwrap().len(), 3);
    assert_error(
        &send(&app, get(&uri, Some(&user(Uuid::new_v4())))).await,
        404,
        "NOT_FOUND",
    );
    assert_error(
        &send(&app, get(&uri, None)).await,
        401,
        "AUTHENTICATION_REQUIRED",
    );
    let r = send(&app, get("/events?session_id=x", Some(&owner))).await;
    assert_eq!(
        r.body["error"]["context"]["fields"]["session_id"],
        "must be a UUID"
    );
    let r = send(
        &app,
        get(
            &format!("/events?session_id={}", Uuid::new_v4()),
            Some(&owner),
        ),
    )
    .await;
    assert_error(&r, 404, "NOT_FOUND");
}

#[tokio::test]
async fn a_new_session_has_an_empty_timeline() {
    let app = router(state_with(|c| c.simulate_builds = false));
    let owner = user(Uuid::new_v4());
    let (id, _) = create(&app, &owner, vibe("saas")).await;
    let r = send(&app, get(&format!("/events?session_id={id}"), Some(&owner))).await;
    assert_eq!(r.body, json!([]));
}
