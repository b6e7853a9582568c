//! The REST broadcast endpoints check the topic's kind, keeping Supabase's `{"message"}` errors.

use super::*;

fn single(topic: &str, bearer: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(format!("/api/broadcast/{topic}/events/note"))
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"hello\":1}"))
        .unwrap()
}

#[tokio::test]
async fn build_topics_are_written_by_their_owner_and_services_only() {
    let app = router(state_with(|c| c.simulate_builds = false));
    let owner = user(Uuid::new_v4());
    let (id, _) = create(&app, &owner, vibe("saas")).await;
    let topic = format!("build:{id}");

    let r = send(&app, single(&topic, &user(Uuid::new_v4()))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let msg = r.body["message"].as_str().expect("Supabase shape");
    assert!(
        msg.starts_with("Unauthorized: You do not have permissions to write"),
        "{msg}"
    );
    assert!(r.body.get("error").is_none());
    assert!(r.headers.contains_key("x-request-id"));

    assert_eq!(
        send(&app, single(&topic, &owner)).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(&app, single(&topic, &service())).await.status,
        StatusCode::ACCEPTED
    );
    let anon = token(json!({"role": "anon"}));
    assert_eq!(
        send(&app, single("room1", &anon)).await.status,
        StatusCode::ACCEPTED
    );

    // A batch is refused whole when one message is not allowed.
    let batch = json!({"messages": [
        {"topic": "room1", "event": "e", "payload": {}},
        {"topic": topic, "event": "e", "payload": {}},
    ]});
    let r = send(
        &app,
        request(
            "POST",
            "/realtime/v1/api/broadcast",
            Some(&anon),
            Some(batch),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert!(r.body["message"].is_string());
}
