//! REST requests per hour per user: `RateLimit-*` headers on every counted answer, then 429
//! with `Retry-After` and the seed's body; other users and the service role are not affected.

use super::*;

#[tokio::test]
async fn a_users_hourly_quota_is_counted_refused_and_separate() {
    let app = router(state_with(|c| c.rest_requests_per_hour = 3));
    let alice = user(Uuid::new_v4());
    let uri = format!("/sessions?id={}", Uuid::new_v4());
    for left in [2, 1, 0] {
        let r = send(&app, get(&uri, Some(&alice))).await;
        assert_eq!(r.status.as_u16(), 404, "an unknown session, not a refusal");
        assert_eq!(r.headers["ratelimit-limit"], "3");
        assert_eq!(r.headers["ratelimit-remaining"], left.to_string().as_str());
        let reset: u64 = r.headers["ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3590..=3600).contains(&reset), "reset {reset}");
    }
    // The fourth, on any REST endpoint, is refused.
    let r = send(
        &app,
        request("POST", "/sessions", Some(&alice), Some(vibe("saas"))),
    )
    .await;
    assert_error(&r, 429, "RATE_LIMITED");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&retry), "Retry-After {retry}");
    let ctx = &r.body["error"]["context"];
    assert_eq!(
        (ctx["limit"].as_u64(), ctx["remaining"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(ctx["retryAfter"].as_u64(), Some(retry));
    assert!(
        ctx["reset"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{ctx}"
    );
    assert_eq!(r.headers["ratelimit-remaining"], "0");

    // Another user, the service role, and the health check are not counted against alice.
    let bob = user(Uuid::new_v4());
    assert_eq!(send(&app, get(&uri, Some(&bob))).await.status.as_u16(), 404);
    for _ in 0..5 {
        let r = send(&app, get(&uri, Some(&service()))).await;
        assert_eq!(r.status.as_u16(), 404);
        assert!(r.headers.get("ratelimit-limit").is_none());
    }
    assert_eq!(send(&app, get("/health", None)).await.status.as_u16(), 200);
}
