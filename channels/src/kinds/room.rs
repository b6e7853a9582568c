//! Rooms: any topic without a kind of its own. Open to every valid token without grants (as
//! Supabase's public channels are) unless the hub requires grants; a token that carries grants
//! reaches only the rooms they name (`crate::grants`).

use async_trait::async_trait;

use super::{Access, ChannelKind, Denied, Ungranted, granted_or};
use crate::auth::Principal;
use crate::topic::TopicKey;

/// A room.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoomKind {
    /// What a token without grants may do here.
    pub ungranted: Ungranted,
}

#[async_trait]
impl ChannelKind for RoomKind {
    async fn authorize(
        &self,
        principal: &Principal,
        topic: &TopicKey,
        access: Access,
    ) -> Result<(), Denied> {
        granted_or(self.ungranted, principal, topic, access)
    }
}
