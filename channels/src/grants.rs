//! Topic grants carried in the JWT: which topics a token may read, write and track presence on.
//!
//! The claim is `grants`: `{"read": [patterns], "write": [patterns], "presence": [patterns]}`,
//! each key optional. A pattern is a topic name where `*` stands for any run of characters
//! (`:` included), so `room:team-42:*` covers every room of team 42 and `*` covers everything.
//! There is no other wildcard and no escaping: topic names are the backend's own.
//!
//! The kinds apply them (DESIGN §3): on rooms and chat a token that carries grants reaches only
//! what they name (and, with `require_grants`, a token without them reaches no room at all); on
//! `build:` topics a grant adds to the owner and share-token rules. The grants are parsed once
//! when the token is verified, and the verified token is cached, so a join costs a match, not a
//! parse.

use crate::kinds::Access;

/// Most patterns per access; a token is signed by the backend, but the hub still bounds the work
/// one join can cost.
pub const MAX_PATTERNS: usize = 64;

/// Longest pattern, the same bound as a topic name.
pub const MAX_PATTERN_LEN: usize = crate::topic::MAX_WIRE_TOPIC_LEN;

/// A malformed `grants` claim; the token is refused rather than read as "no grants", which would
/// widen what it reaches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid grants claim: {0}")]
pub struct GrantsError(pub &'static str);

/// The topics one token was granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    read: Vec<Pattern>,
    write: Vec<Pattern>,
    presence: Vec<Pattern>,
}

impl Grants {
    /// Grants from the claim's JSON value.
    pub fn from_claim(value: &serde_json::Value) -> Result<Self, GrantsError> {
        let obj = value
            .as_object()
            .ok_or(GrantsError("expected an object {read, write, presence}"))?;
        let mut grants = Self::default();
        for (key, list) in obj {
            let slot = match key.as_str() {
                "read" => &mut grants.read,
                "write" => &mut grants.write,
                "presence" => &mut grants.presence,
                _ => return Err(GrantsError("keys must be read, write or presence")),
            };
            let list = list
                .as_array()
                .ok_or(GrantsError("each access takes an array of patterns"))?;
            if list.len() > MAX_PATTERNS {
                return Err(GrantsError("more than 64 patterns for one access"));
            }
            for p in list {
                let p = p.as_str().ok_or(GrantsError("patterns are strings"))?;
                slot.push(Pattern::new(p)?);
            }
        }
        Ok(grants)
    }

    /// Grants from patterns (tests and the hub's own tokens).
    pub fn new(read: &[&str], write: &[&str], presence: &[&str]) -> Result<Self, GrantsError> {
        let list = |ps: &[&str]| {
            ps.iter()
                .map(|p| Pattern::new(p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            read: list(read)?,
            write: list(write)?,
            presence: list(presence)?,
        })
    }

    /// Whether `access` on the topic named `name` is granted.
    pub fn allows(&self, access: Access, name: &str) -> bool {
        let list = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
            Access::Presence => &self.presence,
        };
        list.iter().any(|p| p.matches(name))
    }
}

/// One topic pattern: literal text with `*` wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(Box<str>);

impl Pattern {
    fn new(p: &str) -> Result<Self, GrantsError> {
        if p.is_empty() {
            return Err(GrantsError("empty pattern"));
        }
        if p.len() > MAX_PATTERN_LEN {
            return Err(GrantsError("pattern longer than a topic name"));
        }
        Ok(Self(p.into()))
    }

    /// Glob match where `*` matches any run of bytes. Greedy with one backtrack point (the last
    /// `*` seen), so it runs in O(pattern × name) at worst, both at most 255 bytes.
    fn matches(&self, name: &str) -> bool {
        let (p, n) = (self.0.as_bytes(), name.as_bytes());
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ni));
                pi += 1;
            } else if pi < p.len() && p[pi] == n[ni] {
                pi += 1;
                ni += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|b| *b == b'*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(p: &str, name: &str) -> bool {
        Pattern::new(p).unwrap().matches(name)
    }

    #[test]
    fn literal_and_wildcard_patterns() {
        assert!(m("room:lobby", "room:lobby"));
        assert!(!m("room:lobby", "room:lobby2"));
        assert!(!m("room:lobby", "room:lob"));
        assert!(m("room:team-42:*", "room:team-42:general"));
        assert!(m("room:team-42:*", "room:team-42:a:b"));
        assert!(m("room:team-42:*", "room:team-42:"));
        assert!(!m("room:team-42:*", "room:team-420:general"));
        assert!(!m("room:team-42:*", "room:team-4"));
        assert!(!m("room:team-42:*", "xroom:team-42:general"));
        assert!(m("*", "anything:at:all"));
        assert!(m("chat:*:user-7", "chat:s1:user-7"));
        assert!(!m("chat:*:user-7", "chat:s1:user-77"));
        assert!(m("a*b*c", "a__b__b__c"));
        assert!(!m("a*b*c", "a__b__b__"));
    }

    #[test]
    fn claims_parse_and_bad_claims_are_refused() {
        let g = Grants::from_claim(&json!({"read": ["room:a:*"], "presence": ["room:a:lobby"]}))
            .unwrap();
        assert!(g.allows(Access::Read, "room:a:x"));
        assert!(!g.allows(Access::Write, "room:a:x"));
        assert!(g.allows(Access::Presence, "room:a:lobby"));
        assert!(!g.allows(Access::Presence, "room:a:x"));
        for bad in [
            json!(["room:*"]),
            json!({"admin": ["*"]}),
            json!({"read": "room:*"}),
            json!({"read": [1]}),
            json!({"read": [""]}),
            json!({"read": vec!["x"; 65]}),
        ] {
            assert!(Grants::from_claim(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn many_stars_stay_cheap() {
        let p = "*a".repeat(127);
        let name = "a".repeat(254) + "b";
        assert!(!m(&p, &name));
    }
}
