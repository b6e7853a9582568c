//! Redis: how several hub nodes share one set of channels, and how backend services publish
//! high-rate streams.
//!
//! - Publishing runs `publish.lua` (shipped in the repo and documented in README): it numbers the
//!   message in its topic, appends it to the topic's capped history stream, and `PUBLISH`es the
//!   envelope, atomically. Every node receives every message of the topics it has members of,
//!   in offset order, on its one pub/sub connection ([`subscriber`]).
//! - History (resume, replay) is read from the stream, so a client resumes with the same cursor
//!   on any node.
//! - A plain `PUBLISH hub:msg:t:<topic> <envelope>` without an offset also fans out, without
//!   history.
//!
//! Key layout (braces are cluster hash tags, so one topic's keys share a slot):
//! `hub:{<tid>}:seq`, `hub:{<tid>}:epoch`, `hub:{<tid>}:hist`, channel `hub:msg:<tid>`, where
//! `<tid>` is `t:<topic>` for public and `p:<topic>` for private topics; presence in
//! `hub:{<tid>}:presence` ([`presence`]).

mod broker;
mod envelope;
mod presence;
mod subscriber;

pub use broker::{RedisBroker, RedisConfig, RedisStats};
pub use envelope::{WireEnvelope, channel_of, topic_of_channel};

/// The publish script's source, as shipped (`store/src/redis/publish.lua`).
pub const PUBLISH_SCRIPT: &str = include_str!("publish.lua");
