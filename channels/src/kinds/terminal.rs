//! `terminal:<id>`: a browser terminal (issue 6). The terminal's id is its workspace (build)
//! session's id, and the build kind's rules decide who may watch.
//!
//! Over the Phoenix protocol the public topic only carries the terminal's presence (host,
//! viewers, who drives), tracked by the hub: a reader of the session may join it to see who is
//! there; nobody broadcasts or tracks on it. The private topic of the same name is the nodes'
//! relay (it carries keystrokes) and only the service role may join it. The terminal itself is
//! served at `/v1/terminal/{id}` (`hub/src/transport/terminal.rs`).

use std::sync::Arc;

use async_trait::async_trait;

use super::{Access, ChannelKind, Denied};
use crate::auth::Principal;
use crate::topic::TopicKey;

/// The terminal kind: the build kind's read rule, on presence only.
#[derive(Debug)]
pub struct TerminalKind {
    build: Arc<dyn ChannelKind>,
}

impl TerminalKind {
    /// Authorises readers with `build` (the build kind) on `build:<id>`.
    pub fn new(build: Arc<dyn ChannelKind>) -> Self {
        Self { build }
    }
}

#[async_trait]
impl ChannelKind for TerminalKind {
    async fn authorize(
        &self,
        principal: &Principal,
        topic: &TopicKey,
        access: Access,
    ) -> Result<(), Denied> {
        if principal.is_service() {
            return Ok(());
        }
        if topic.is_private() {
            return Err(Denied(format!(
                "Unauthorized: {} is the hub's terminal relay",
                topic.name()
            )));
        }
        match access {
            Access::Read => {
                let id = topic.name().strip_prefix("terminal:").unwrap_or_default();
                let build = TopicKey::new(&format!("build:{id}"), false)
                    .map_err(|e| Denied(e.to_string()))?;
                self.build
                    .authorize(principal, &build, Access::Read)
                    .await
                    .map_err(|d| Denied(d.0.replace(&format!("build:{id}"), topic.name())))
            }
            Access::Write | Access::Presence => Err(Denied(format!(
                "Unauthorized: {} carries the terminal's presence, tracked by the hub; type at /v1/terminal/{{id}}",
                topic.name()
            ))),
        }
    }
}
