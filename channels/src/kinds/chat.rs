//! `chat:<streamId>`: an LLM answer streamed by a backend (seed 003, DESIGN §3).
//!
//! - read and presence: any valid token (topic grants in the JWT will narrow this);
//! - publish (`token`, `done`, `error`, anything): the service role, i.e. the backend worker;
//! - user input travels as the `input` event, which the session admits for any reader under the
//!   per-user input rate limit (seed 003: 100 chat messages per hour), not through this rule.

use async_trait::async_trait;

use super::{Access, ChannelKind, Denied};
use crate::auth::Principal;
use crate::topic::TopicKey;

/// The chat kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatKind;

#[async_trait]
impl ChannelKind for ChatKind {
    async fn authorize(
        &self,
        principal: &Principal,
        topic: &TopicKey,
        access: Access,
    ) -> Result<(), Denied> {
        match access {
            Access::Read | Access::Presence => Ok(()),
            Access::Write if principal.is_service() => Ok(()),
            Access::Write => Err(Denied(format!(
                "Unauthorized: only the service role publishes on {}; send user input as the `input` event",
                topic.name()
            ))),
        }
    }
}
