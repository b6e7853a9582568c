//! Who may read a build session and its timeline over REST: the same people who may read
//! `build:<id>` (see `channels::kinds::BuildKind`), plus holders of the raw share token.
//!
//! - the service role;
//! - the owner: JWT `sub` (a UUID) equal to `created_by`;
//! - a share JWT from `POST /sessions/token` (claim `share_session` = the session id);
//! - a token whose read grants name `build:<id>` (`channels::grants`): read only;
//! - a caller presenting the session's share token.
//!
//! Anyone else is answered 404 exactly as for a session that does not exist, so ids cannot be
//! probed for existence.

use channels::Principal;
use channels::kinds::Access;
use channels::sessions::BuildSession;
use uuid::Uuid;

/// How a caller may see a session; decides whether the share token is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// The service role.
    Service,
    /// The session's creator.
    Owner,
    /// Someone the owner shared it with (share token or share JWT): read only, no share token.
    ShareHolder,
}

impl Viewer {
    /// Whether the response may include the share token (it is the owner's to hand out).
    pub fn sees_share_token(self) -> bool {
        matches!(self, Self::Service | Self::Owner)
    }
}

/// The owner a principal's `sub` names, when it is a UUID.
pub fn owner_id(principal: &Principal) -> Option<Uuid> {
    principal
        .sub
        .as_deref()
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// How `principal` and/or `share_token` may see `session`, or `None` when they may not.
pub fn viewer(
    session: &BuildSession,
    principal: Option<&Principal>,
    share_token: Option<&str>,
) -> Option<Viewer> {
    if let Some(p) = principal {
        if p.is_service() {
            return Some(Viewer::Service);
        }
        if session.created_by.is_some() && owner_id(p) == session.created_by {
            return Some(Viewer::Owner);
        }
        if p.share_session == Some(session.id)
            || p.granted(
                Access::Read,
                channels::sessions::build_topic(session.id).name(),
            )
        {
            return Some(Viewer::ShareHolder);
        }
    }
    share_token
        .filter(|t| constant_time_eq(t.as_bytes(), session.share_token.as_bytes()))
        .map(|_| Viewer::ShareHolder)
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use channels::sessions::SessionStatus;

    fn session(owner: Option<Uuid>) -> BuildSession {
        let now = chrono::Utc::now();
        BuildSession {
            id: Uuid::new_v4(),
            status: SessionStatus::Queued,
            template: "saas".into(),
            vibe_text: "x".into(),
            options: serde_json::json!({}),
            plan: None,
            environment: None,
            outputs: None,
            error: None,
            created_by: owner,
            created_at: now,
            updated_at: now,
            share_token: "secret-share".into(),
        }
    }

    fn p(role: &str, sub: Option<String>, share: Option<Uuid>) -> Principal {
        Principal {
            role: role.into(),
            sub,
            exp: u64::MAX,
            share_session: share,
            grants: None,
        }
    }

    #[test]
    fn rules() {
        let owner = Uuid::new_v4();
        let s = session(Some(owner));
        let as_owner = p("authenticated", Some(owner.to_string()), None);
        assert_eq!(viewer(&s, Some(&as_owner), None), Some(Viewer::Owner));
        let service = p("service_role", None, None);
        assert_eq!(viewer(&s, Some(&service), None), Some(Viewer::Service));
        let stranger = p("authenticated", Some(Uuid::new_v4().to_string()), None);
        assert_eq!(viewer(&s, Some(&stranger), None), None);
        assert_eq!(viewer(&s, Some(&stranger), Some("wrong")), None);
        assert_eq!(
            viewer(&s, Some(&stranger), Some("secret-share")),
            Some(Viewer::ShareHolder)
        );
        assert_eq!(
            viewer(&s, None, Some("secret-share")),
            Some(Viewer::ShareHolder)
        );
        let share_jwt = p("anon", None, Some(s.id));
        assert_eq!(
            viewer(&s, Some(&share_jwt), None),
            Some(Viewer::ShareHolder)
        );
        let other_share = p("anon", None, Some(Uuid::new_v4()));
        assert_eq!(viewer(&s, Some(&other_share), None), None);
        assert!(Viewer::Owner.sees_share_token() && !Viewer::ShareHolder.sees_share_token());
        // An ownerless session (created by a service) has no owner to match a sub-less token.
        let ownerless = session(None);
        let anon = p("anon", None, None);
        assert_eq!(viewer(&ownerless, Some(&anon), None), None);
    }
}
