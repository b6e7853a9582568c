//! The resume cursor `<epoch>:<offset>` (DESIGN §4).
//!
//! `offset` grows by one per message of a topic, starting at 1. `epoch` names one history of the
//! topic: when that history is lost (a restart of the in-memory default, Redis restarted empty) the
//! epoch changes, so a cursor from before can be recognised as unrecoverable instead of silently
//! pointing into a different history.

use std::fmt;
use std::sync::Arc;

/// A position in one topic's history.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Names the history the offset belongs to. Never contains `:`.
    pub epoch: Arc<str>,
    /// 1 for the first message of the epoch.
    pub offset: u64,
}

/// Where a reader wants to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// From the start of whatever history is retained (`"0"`).
    Beginning,
    /// After this cursor.
    After(Cursor),
}

/// A cursor string that is neither `"0"` nor `<epoch>:<offset>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {0:?}: expected \"0\" or \"<epoch>:<offset>\"")]
pub struct CursorError(pub String);

impl Cursor {
    /// A cursor in `epoch` at `offset`.
    pub fn new(epoch: Arc<str>, offset: u64) -> Self {
        Self { epoch, offset }
    }
}

impl Since {
    /// Parses `"0"` or `"<epoch>:<offset>"`.
    pub fn parse(s: &str) -> Result<Self, CursorError> {
        if s == "0" {
            return Ok(Self::Beginning);
        }
        let err = || CursorError(s.chars().take(64).collect());
        let (epoch, offset) = s.rsplit_once(':').ok_or_else(err)?;
        if epoch.is_empty() || epoch.contains(':') || epoch.len() > 64 {
            return Err(err());
        }
        let offset = offset.parse::<u64>().map_err(|_| err())?;
        Ok(Self::After(Cursor::new(epoch.into(), offset)))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_zero_and_cursors() {
        assert_eq!(Since::parse("0"), Ok(Since::Beginning));
        assert_eq!(
            Since::parse("abc:17"),
            Ok(Since::After(Cursor::new("abc".into(), 17)))
        );
        for bad in ["", "17", ":17", "a:b", "a:-1", "a:b:1", "abc:"] {
            assert!(Since::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Cursor::new("e1".into(), 5).to_string(), "e1:5");
    }
}
