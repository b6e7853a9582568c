//! Topic names.
//!
//! realtime-js joins `realtime:<name>`; inside the hub a topic is the `<name>` part plus the
//! channel's private flag, because a public and a private channel of one name are different
//! topics (PROTOCOL §2.1): a member of one never sees the other's messages.

use std::fmt;
use std::sync::Arc;

/// The prefix realtime-js puts in front of every channel name.
pub const WIRE_PREFIX: &str = "realtime:";

/// Longest accepted wire topic (`realtime:` included), in bytes. Binary broadcast frames carry the
/// topic behind a one-byte length, so nothing longer could ever be delivered to a V2 member.
pub const MAX_WIRE_TOPIC_LEN: usize = 255;

/// A topic: channel name and private flag. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicKey {
    name: Arc<str>,
    private: bool,
}

/// Why a topic string cannot be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// `realtime:` with nothing after it.
    #[error("TopicNameRequired: You must provide a topic name")]
    NameRequired,
    /// Anything not starting with `realtime:`.
    #[error("UnknownTopic: Topics must start with `realtime:`")]
    NotRealtime,
    /// Longer than [`MAX_WIRE_TOPIC_LEN`].
    #[error("TopicTooLong: Topic names are limited to {MAX_WIRE_TOPIC_LEN} bytes")]
    TooLong,
}

impl TopicKey {
    /// A topic from its channel name (without `realtime:`), as REST broadcasts name it.
    pub fn new(name: &str, private: bool) -> Result<Self, TopicError> {
        if name.is_empty() {
            return Err(TopicError::NameRequired);
        }
        if name.len() + WIRE_PREFIX.len() > MAX_WIRE_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        Ok(Self {
            name: name.into(),
            private,
        })
    }

    /// A topic from the wire form `realtime:<name>` used in `phx_join`.
    pub fn from_wire(topic: &str, private: bool) -> Result<Self, TopicError> {
        let name = topic
            .strip_prefix(WIRE_PREFIX)
            .ok_or(TopicError::NotRealtime)?;
        Self::new(name, private)
    }

    /// The channel name without `realtime:`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is the private side of the name.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// The kind prefix (`build` for `build:abc`), or `None` for an unprefixed name.
    pub fn kind(&self) -> Option<&str> {
        self.name.split_once(':').map(|(k, _)| k)
    }

    /// The topic as members see it on the wire: `realtime:<name>`.
    pub fn wire(&self) -> String {
        format!("{WIRE_PREFIX}{}", self.name)
    }
}

impl fmt::Debug for TopicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for TopicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.private {
            write!(f, "private:{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_topics_parse_and_validate() {
        let t = TopicKey::from_wire("realtime:build:42", false).unwrap();
        assert_eq!(t.name(), "build:42");
        assert_eq!(t.kind(), Some("build"));
        assert_eq!(t.wire(), "realtime:build:42");
        assert_eq!(
            TopicKey::from_wire("realtime:", false),
            Err(TopicError::NameRequired)
        );
        assert_eq!(
            TopicKey::from_wire("room", false),
            Err(TopicError::NotRealtime)
        );
        let long = format!("realtime:{}", "x".repeat(247));
        assert_eq!(TopicKey::from_wire(&long, false), Err(TopicError::TooLong));
        let max = format!("realtime:{}", "x".repeat(246));
        assert!(TopicKey::from_wire(&max, false).is_ok());
    }

    #[test]
    fn public_and_private_of_one_name_differ() {
        let a = TopicKey::new("room", false).unwrap();
        let b = TopicKey::new("room", true).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.wire(), b.wire());
    }
}
