//! `chat:<streamId>`: an LLM answer streamed by a backend (seed 003, DESIGN §3).
//!
//! - read and presence: as on rooms: any valid token without grants (unless grants are
//!   required), and a token with grants only where they name the stream;
//! - publish (`token`, `done`, `error`, anything): the service role, i.e. the backend worker, or
//!   a token whose write grants name the stream;
//! - user input travels as the `input` event, which the session admits for any reader under the
//!   per-user input rate limit (seed 003: 100 chat messages per hour), not through this rule.

use async_trait::async_trait;

use super::{Access, ChannelKind, Denied, Ungranted, granted_or};
use crate::auth::Principal;
use crate::topic::TopicKey;

/// The chat kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatKind {
    /// What a token without grants may do here.
    pub ungranted: Ungranted,
}

#[async_trait]
impl ChannelKind for ChatKind {
    async fn authorize(
        &self,
        principal: &Principal,
        topic: &TopicKey,
        access: Access,
    ) -> Result<(), Denied> {
        match access {
            Access::Read | Access::Presence => granted_or(self.ungranted, principal, topic, access),
            Access::Write if principal.is_service() || principal.granted(access, topic.name()) => {
                Ok(())
            }
            Access::Write => Err(Denied(format!(
                "Unauthorized: only the service role publishes on {}; send user input as the `input` event",
                topic.name()
            ))),
        }
    }
}
