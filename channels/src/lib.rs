//! The pure core of the hub: topics, envelopes and cursors, the Phoenix codecs, presence, history,
//! the local fan-out registry and the per-connection session state machine.
//!
//! Run the unit tests with `cargo test -p channels`. Start reading at [`session`] (what a client
//! can do) and [`registry`] (how a message reaches members).
//!
//! # Layout
//! - [`topic`], [`cursor`], [`envelope`]: the message model (DESIGN §3, §4).
//! - [`codec`]: V1 and V2 JSON and binary frames (PROTOCOL §1.3); [`ws_frame`]: RFC 6455 framing.
//! - [`outbox`]: the bounded per-connection queue and its slow-reader rule.
//! - [`presence`], [`history`]: per-topic presence state and history ring, pure data.
//! - [`registry`]: local members of each topic; fan-out without awaiting.
//! - [`broker`]: the `Broker` trait and the in-memory default.
//! - [`auth`]: the verified identity and the token-verifier seam; [`kinds`]: who may read, write
//!   and track presence on each kind of topic.
//! - [`chat`]: chat streams (snapshots, mergeable deltas, compaction on `done`);
//!   [`terminal`]: terminal scrollback, driver policy and control messages.
//! - [`sessions`]: build sessions and timelines (seed 004) and their in-memory store.
//! - [`node`], [`session`]: shared node state and one connection's protocol state machine;
//!   [`connections`]: every open connection, so the node can close them all.
//!
//! This crate depends on no web framework, database or Redis client: transports live in `hub`,
//! backends in `store`.

#![warn(missing_docs)]

pub mod auth;
pub mod broker;
pub mod chat;
pub mod codec;
pub mod connections;
pub mod cursor;
pub mod envelope;
pub mod grants;
pub mod history;
pub mod kinds;
pub mod latency;
pub mod limits;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod registry;
pub mod session;
pub mod sessions;
pub mod terminal;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topic;
pub mod user_connections;
pub mod ws_frame;

pub use auth::{Principal, TokenError, TokenVerifier};
pub use broker::{Broker, BrokerError, MemoryBroker, Publication};
pub use codec::Format;
pub use cursor::{Cursor, Since};
pub use envelope::{Envelope, Payload};
pub use node::{Node, NodeConfig};
pub use outbox::{CloseReason, OutFrame, Outbox, OutboxLimits};
pub use registry::{ConnId, Registry};
pub use session::Session;
pub use topic::TopicKey;
