//! Channel kinds: who may read, write and track presence on a topic, decided by its prefix
//! (DESIGN §3). One file per kind; [`Kinds`] maps a topic to its kind.
//!
//! Every transport asks here (joins, broadcasts, presence, REST broadcasts, later SSE and
//! terminals), so authorisation lives in one place per kind.

mod build;
mod chat;
mod room;
mod terminal;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

pub use build::BuildKind;
pub use chat::ChatKind;
pub use room::RoomKind;
pub use terminal::TerminalKind;

use crate::auth::Principal;
use crate::topic::TopicKey;

/// What a principal wants to do on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Join and receive.
    Read,
    /// Broadcast.
    Write,
    /// Track presence.
    Presence,
}

/// A refusal, with the reason the client sees (`Unauthorized: …`, Supabase's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl Denied {
    /// The standard refusal for `access` on `topic`.
    pub fn unauthorized(access: Access, topic: &TopicKey) -> Self {
        let what = match access {
            Access::Read => "read from",
            Access::Write => "write to",
            Access::Presence => "track presence on",
        };
        Self(format!(
            "Unauthorized: You do not have permissions to {what} this Channel topic: {}",
            topic.name()
        ))
    }
}

/// What a token without a `grants` claim may do on rooms and chat streams (`--require-topic-grants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ungranted {
    /// Any valid token reaches them: Supabase's public channels, and the default.
    #[default]
    Open,
    /// Only tokens whose grants name the topic (and the service role) reach them.
    Closed,
}

/// The rule shared by rooms and chat reads: the service role may; a token with grants may do
/// what they name and nothing else; a token without grants may when `ungranted` is open.
pub fn granted_or(
    ungranted: Ungranted,
    principal: &Principal,
    topic: &TopicKey,
    access: Access,
) -> Result<(), Denied> {
    let ok = principal.is_service()
        || match &principal.grants {
            Some(g) => g.allows(access, topic.name()),
            None => ungranted == Ungranted::Open,
        };
    if ok {
        Ok(())
    } else {
        Err(Denied::unauthorized(access, topic))
    }
}

/// The rules of one kind of topic.
#[async_trait]
pub trait ChannelKind: Send + Sync + fmt::Debug + 'static {
    /// Whether `principal` may do `access` on `topic`.
    async fn authorize(
        &self,
        principal: &Principal,
        topic: &TopicKey,
        access: Access,
    ) -> Result<(), Denied>;
}

/// Kinds by topic prefix, with a default for unprefixed or unknown prefixes.
#[derive(Debug, Clone)]
pub struct Kinds {
    by_prefix: HashMap<String, Arc<dyn ChannelKind>>,
    default: Arc<dyn ChannelKind>,
}

impl Default for Kinds {
    fn default() -> Self {
        Self::new(Ungranted::Open)
    }
}

impl Kinds {
    /// Rooms (the default kind) and chat streams, with `ungranted` deciding what a token without
    /// grants reaches there; other kinds are added with [`Kinds::with`].
    pub fn new(ungranted: Ungranted) -> Self {
        let mut by_prefix: HashMap<String, Arc<dyn ChannelKind>> = HashMap::new();
        by_prefix.insert(
            crate::chat::KIND.to_owned(),
            Arc::new(ChatKind { ungranted }),
        );
        Self {
            by_prefix,
            default: Arc::new(RoomKind { ungranted }),
        }
    }

    /// Registers `kind` for topics `<prefix>:…`.
    pub fn with(mut self, prefix: &str, kind: Arc<dyn ChannelKind>) -> Self {
        self.by_prefix.insert(prefix.to_owned(), kind);
        self
    }

    /// The kind of `topic`.
    pub fn of(&self, topic: &TopicKey) -> &Arc<dyn ChannelKind> {
        topic
            .kind()
            .and_then(|k| self.by_prefix.get(k))
            .unwrap_or(&self.default)
    }

    /// Whether `principal` may do `access` on `topic`.
    pub async fn authorize(
        &self,
        principal: &Principal,
        topic: &TopicKey,
        access: Access,
    ) -> Result<(), Denied> {
        self.of(topic).authorize(principal, topic, access).await
    }
}
