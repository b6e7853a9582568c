//! Rooms: any topic without a kind of its own. Open to every valid token for now; topic grants
//! carried in the JWT will restrict them (security issue).

use async_trait::async_trait;

use super::{Access, ChannelKind, Denied};
use crate::auth::Principal;
use crate::topic::TopicKey;

/// An open room.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoomKind;

#[async_trait]
impl ChannelKind for RoomKind {
    async fn authorize(&self, _: &Principal, _: &TopicKey, _: Access) -> Result<(), Denied> {
        Ok(())
    }
}
