//! REST requests per hour per user (seed 003: 1,000), answered as seed 000/003 say: 429 with
//! `Retry-After`, `RateLimit-*` headers and
//! `{"error":{"code":"RATE_LIMITED","message","context":{"limit","remaining","reset","retryAfter"}},"requestId"}`.
//!
//! The user is the JWT's `sub`; the service role (a backend) and callers without a `sub` (the
//! shared anon key, share tokens) are not counted here; the connection limits cover them. Every
//! counted response carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//! (seconds), so a client can slow down before it is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use channels::TokenVerifier;
use serde_json::json;

use crate::api::app_error::{AppError, ErrorCode};
use crate::api::credentials;
use crate::state::AppState;

/// Keys kept before expired windows are swept out: the map follows the users active in the
/// last window, not every user ever seen.
const SWEEP_AT: usize = 10_000;

/// A fixed window per key: `limit` requests, then refusals until the window (started by the
/// key's first request) ends. Fixed rather than sliding so `reset` is one exact moment a client
/// can be told.
#[derive(Debug)]
pub struct Quota {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    used: u32,
}

/// What one request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether it may proceed.
    pub allowed: bool,
    /// The quota.
    pub limit: u32,
    /// Requests left in this window after this one.
    pub remaining: u32,
    /// Until the window ends.
    pub reset_in: Duration,
}

impl Quota {
    /// `limit` requests per `window` per key; a `limit` of 0 disables it.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `key` at `now`; `None` when the quota is disabled.
    pub fn take(&self, key: &str, now: Instant) -> Option<Decision> {
        if self.limit == 0 {
            return None;
        }
        // One lookup or insert (and a rare sweep) per request: never held across an await.
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            let window = self.window;
            map.retain(|_, w| now.saturating_duration_since(w.start) < window);
        }
        let w = map.entry(key.to_owned()).or_insert(Window {
            start: now,
            used: 0,
        });
        if now.saturating_duration_since(w.start) >= self.window {
            *w = Window {
                start: now,
                used: 0,
            };
        }
        let allowed = w.used < self.limit;
        if allowed {
            w.used += 1;
        }
        Some(Decision {
            allowed,
            limit: self.limit,
            remaining: self.limit - w.used,
            reset_in: self
                .window
                .saturating_sub(now.saturating_duration_since(w.start)),
        })
    }
}

/// Counts the request against its user's quota: refuses it with 429 when spent, and adds the
/// `RateLimit-*` headers to every counted response.
pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let user = credentials::jwt(req.headers())
        .and_then(|t| state.verifier.verify(t).ok())
        .filter(|p| !p.is_service())
        .and_then(|p| p.sub);
    let Some(decision) = user.and_then(|u| state.rest_quota.take(&u, Instant::now())) else {
        return next.run(req).await;
    };
    let mut resp = if decision.allowed {
        next.run(req).await
    } else {
        refusal(decision).into_response()
    };
    let headers = resp.headers_mut();
    let reset = decision.reset_in.as_secs().max(1);
    for (name, value) in [
        ("ratelimit-limit", u64::from(decision.limit)),
        ("ratelimit-remaining", u64::from(decision.remaining)),
        ("ratelimit-reset", reset),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    resp
}

fn refusal(d: Decision) -> AppError {
    let retry_after = d.reset_in.as_secs().max(1);
    let reset_at = SystemTime::now() + Duration::from_secs(retry_after);
    AppError::new(
        ErrorCode::RateLimited,
        format!("Rate limit exceeded: {} requests per hour", d.limit),
    )
    .with_context(json!({
        "limit": d.limit,
        "remaining": 0,
        "reset": humantime::format_rfc3339_seconds(reset_at).to_string(),
        "retryAfter": retry_after,
    }))
    .with_retry_after(Duration::from_secs(retry_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_allows_its_limit_then_refuses_until_it_ends() {
        let q = Quota::new(3, Duration::from_secs(3600));
        let t0 = Instant::now();
        let got: Vec<(bool, u32)> = (0..4)
            .map(|_| q.take("u", t0).map(|d| (d.allowed, d.remaining)).unwrap())
            .collect();
        assert_eq!(got, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        let later = t0 + Duration::from_secs(1800);
        let d = q.take("u", later).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reset_in, Duration::from_secs(1800));
        assert!(q.take("other", later).unwrap().allowed, "keys are separate");
        let next = t0 + Duration::from_secs(3600);
        assert_eq!(
            q.take("u", next).map(|d| (d.allowed, d.remaining)),
            Some((true, 2))
        );
        assert_eq!(Quota::new(0, Duration::from_secs(1)).take("u", t0), None);
    }

    #[test]
    fn expired_windows_are_swept_when_the_map_is_large() {
        let q = Quota::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            q.take(&format!("u{i}"), t0);
        }
        q.take("late", t0 + Duration::from_secs(11));
        assert_eq!(q.windows.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_refusal_has_the_seed_shape() {
        let e = refusal(Decision {
            allowed: false,
            limit: 1000,
            remaining: 0,
            reset_in: Duration::from_secs(120),
        });
        assert_eq!(e.status().as_u16(), 429);
        assert_eq!(e.retry_after, Some(Duration::from_secs(120)));
        let body = e.body(Some("req_1"));
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
        assert_eq!(body["error"]["context"]["limit"], 1000);
        assert_eq!(body["error"]["context"]["remaining"], 0);
        assert_eq!(body["error"]["context"]["retryAfter"], 120);
        assert!(
            body["error"]["context"]["reset"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert_eq!(body["requestId"], "req_1");
    }
}
