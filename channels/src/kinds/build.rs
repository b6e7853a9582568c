//! `build:<sessionId>`: a build's timeline and the architect's presence (seed 004 §5).
//!
//! - the service role may do anything;
//! - the session's owner (`created_by` = JWT `sub`) may read, broadcast and track presence;
//! - a holder of the session's share token reads with a short-lived token the hub issues in
//!   exchange (JWT claim `share_session` = the session id): read only;
//! - a token whose grants name the topic (`crate::grants`) may do what they name;
//! - everyone else is refused.
//!
//! Ownership lookups are cached for a short time (a reconnect storm must not query the store once
//! per client); a deleted session stops being readable once its entry expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Access, ChannelKind, Denied};
use crate::auth::Principal;
use crate::sessions::SessionStore;
use crate::topic::TopicKey;

/// Most cached ownership entries; the cache is cleared when full (simple and bounded).
const MAX_CACHED: usize = 100_000;

/// What a lookup found: `Some(owner)` when the session exists (the owner itself optional).
type Ownership = Option<Option<Uuid>>;

/// The build kind.
#[derive(Debug)]
pub struct BuildKind {
    sessions: Arc<dyn SessionStore>,
    ttl: Duration,
    /// session id → (looked up at, owner if the session exists).
    cache: Mutex<HashMap<Uuid, (Instant, Ownership)>>,
}

impl BuildKind {
    /// Authorises against `sessions`, caching ownership for `ttl`.
    pub fn new(sessions: Arc<dyn SessionStore>, ttl: Duration) -> Self {
        Self {
            sessions,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(owner)` when the session exists (owner itself optional), `None` when it does not.
    async fn owner(&self, id: Uuid) -> Result<Ownership, Denied> {
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, owner)) = cache.get(&id)
                && now.duration_since(*at) < self.ttl
            {
                return Ok(*owner);
            }
        }
        let owner = match self.sessions.get(id).await {
            Ok(s) => s.map(|s| s.created_by),
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "session lookup failed");
                return Err(Denied(
                    "UnableToConnectToProject: the session store is unavailable".into(),
                ));
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(id, (now, owner));
        Ok(owner)
    }

    /// Drops a cached entry (a session was deleted or changed hands).
    pub fn forget(&self, id: Uuid) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

#[async_trait]
impl ChannelKind for BuildKind {
    async fn authorize(
        &self,
        principal: &Principal,
        topic: &TopicKey,
        access: Access,
    ) -> Result<(), Denied> {
        if principal.is_service() || principal.granted(access, topic.name()) {
            return Ok(());
        }
        let denied = || Denied::unauthorized(access, topic);
        let id = topic
            .name()
            .strip_prefix("build:")
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(denied)?;
        let Some(owner) = self.owner(id).await? else {
            return Err(denied());
        };
        let sub = principal
            .sub
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok());
        if owner.is_some() && owner == sub {
            return Ok(());
        }
        if access == Access::Read && principal.share_session == Some(id) {
            return Ok(());
        }
        Err(denied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;
    use crate::registry::Registry;
    use crate::sessions::{MemorySessionStore, NewSession, build_topic};

    fn principal(role: &str, sub: Option<Uuid>, share: Option<Uuid>) -> Principal {
        Principal {
            role: role.into(),
            sub: sub.map(|u| u.to_string()),
            exp: u64::MAX,
            share_session: share,
            grants: None,
        }
    }

    #[tokio::test]
    async fn owner_share_holder_service_and_strangers() {
        let broker = Arc::new(MemoryBroker::new(Arc::new(Registry::new(10)), 10));
        let store = Arc::new(MemorySessionStore::new(broker));
        let owner = Uuid::new_v4();
        let s = store
            .create(NewSession {
                template: "saas".into(),
                vibe_text: "x".into(),
                options: serde_json::json!({}),
                created_by: Some(owner),
            })
            .await
            .unwrap();
        let kind = BuildKind::new(store.clone(), Duration::from_millis(0));
        let topic = build_topic(s.id);
        let all = [Access::Read, Access::Write, Access::Presence];
        for a in all {
            assert!(
                kind.authorize(&principal("authenticated", Some(owner), None), &topic, a)
                    .await
                    .is_ok()
            );
            assert!(
                kind.authorize(&principal("service_role", None, None), &topic, a)
                    .await
                    .is_ok()
            );
            assert!(
                kind.authorize(
                    &principal("authenticated", Some(Uuid::new_v4()), None),
                    &topic,
                    a
                )
                .await
                .is_err()
            );
        }
        let holder = principal("anon", None, Some(s.id));
        assert!(kind.authorize(&holder, &topic, Access::Read).await.is_ok());
        let err = kind
            .authorize(&holder, &topic, Access::Write)
            .await
            .unwrap_err();
        assert!(
            err.0
                .starts_with("Unauthorized: You do not have permissions to write")
        );
        // A share token for another session opens nothing here.
        let other = principal("anon", None, Some(Uuid::new_v4()));
        assert!(kind.authorize(&other, &topic, Access::Read).await.is_err());
        // Deleted sessions stop being readable (ttl 0: no cache).
        store.delete(s.id).await.unwrap();
        assert!(
            kind.authorize(
                &principal("authenticated", Some(owner), None),
                &topic,
                Access::Read
            )
            .await
            .is_err()
        );
        // Malformed ids are refused without a lookup.
        let bad = TopicKey::new("build:not-a-uuid", false).unwrap();
        assert_eq!(
            kind.authorize(&holder, &bad, Access::Read)
                .await
                .unwrap_err()
                .0,
            "Unauthorized: You do not have permissions to read from this Channel topic: build:not-a-uuid"
        );
    }
}
