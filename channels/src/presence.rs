//! Presence state of one topic, as Phoenix.Presence keeps it (PROTOCOL §4).
//!
//! State is `key → metas`. Each member (one joined channel) holds at most one meta; its key comes
//! from `config.presence.key` or a server-assigned UUID. A track produces a diff: a join, or for a
//! changed payload one diff holding the new meta (with `phx_ref_prev`) in `joins` and the old one in
//! `leaves`; an identical re-track produces nothing. Pure data, no I/O: the registry calls it under
//! the topic's lock and fans the rendered diff out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

/// Identifies the member (one joined channel of one connection) that owns a meta.
pub type MemberId = u64;

/// A tracked payload: the JSON object the client passed to `track()`.
pub type PresencePayload = Map<String, Value>;

#[derive(Debug, Clone)]
struct Meta {
    member: MemberId,
    phx_ref: Arc<str>,
    phx_ref_prev: Option<Arc<str>>,
    payload: PresencePayload,
}

impl Meta {
    fn to_value(&self, with_prev: bool) -> Value {
        let mut m = self.payload.clone();
        m.insert("phx_ref".into(), Value::String(self.phx_ref.to_string()));
        if with_prev && let Some(prev) = &self.phx_ref_prev {
            m.insert("phx_ref_prev".into(), Value::String(prev.to_string()));
        }
        Value::Object(m)
    }
}

/// Presence of one topic.
#[derive(Debug, Default)]
pub struct PresenceState {
    keys: BTreeMap<String, Vec<Meta>>,
    by_member: HashMap<MemberId, String>,
}

/// A `presence_diff` payload: metas that joined and left, by key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    joins: BTreeMap<String, Vec<Value>>,
    leaves: BTreeMap<String, Vec<Value>>,
}

impl Diff {
    /// Whether nothing joined or left.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The payload JSON: `{"joins":{key:{"metas":[…]}},"leaves":{…}}`.
    pub fn to_json(&self) -> String {
        let side = |m: &BTreeMap<String, Vec<Value>>| -> Value {
            Value::Object(
                m.iter()
                    .map(|(k, metas)| (k.clone(), serde_json::json!({ "metas": metas })))
                    .collect(),
            )
        };
        serde_json::json!({ "joins": side(&self.joins), "leaves": side(&self.leaves) }).to_string()
    }

    /// Merges `other` into this diff (a leave and a join from one operation go out together).
    pub fn merge(&mut self, other: Diff) {
        for (k, mut v) in other.joins {
            self.joins.entry(k).or_default().append(&mut v);
        }
        for (k, mut v) in other.leaves {
            self.leaves.entry(k).or_default().append(&mut v);
        }
    }
}

impl PresenceState {
    /// Tracks `payload` under `key` for `member`. Returns `None` when it changes nothing.
    pub fn track(
        &mut self,
        member: MemberId,
        key: &str,
        payload: PresencePayload,
        phx_ref: Arc<str>,
    ) -> Option<Diff> {
        let mut diff = Diff::default();
        let mut prev_ref = None;
        if let Some(old_key) = self.by_member.get(&member).cloned() {
            if old_key == key
                && let Some(old) = self.meta_of(&old_key, member)
            {
                if old.payload == payload {
                    return None;
                }
                prev_ref = Some(old.phx_ref.clone());
            }
            diff.merge(self.untrack(member).unwrap_or_default());
        }
        let meta = Meta {
            member,
            phx_ref,
            phx_ref_prev: prev_ref,
            payload,
        };
        diff.joins
            .entry(key.to_owned())
            .or_default()
            .push(meta.to_value(true));
        self.keys.entry(key.to_owned()).or_default().push(meta);
        self.by_member.insert(member, key.to_owned());
        Some(diff)
    }

    /// Removes `member`'s meta. Returns `None` when it had none.
    pub fn untrack(&mut self, member: MemberId) -> Option<Diff> {
        let key = self.by_member.remove(&member)?;
        let metas = self.keys.get_mut(&key)?;
        let idx = metas.iter().position(|m| m.member == member)?;
        let meta = metas.remove(idx);
        if metas.is_empty() {
            self.keys.remove(&key);
        }
        let mut diff = Diff::default();
        diff.leaves.insert(key, vec![meta.to_value(false)]);
        Some(diff)
    }

    fn meta_of(&self, key: &str, member: MemberId) -> Option<&Meta> {
        self.keys.get(key)?.iter().find(|m| m.member == member)
    }

    /// Whether `member` has a meta.
    pub fn is_tracked(&self, member: MemberId) -> bool {
        self.by_member.contains_key(&member)
    }

    /// Number of metas.
    pub fn len(&self) -> usize {
        self.by_member.len()
    }

    /// Whether nobody is present.
    pub fn is_empty(&self) -> bool {
        self.by_member.is_empty()
    }

    /// The `presence_state` payload: `{key: {"metas": […]}}`.
    pub fn state_json(&self) -> String {
        let v: Map<String, Value> = self
            .keys
            .iter()
            .map(|(k, metas)| {
                let metas: Vec<Value> = metas.iter().map(|m| m.to_value(true)).collect();
                (k.clone(), serde_json::json!({ "metas": metas }))
            })
            .collect();
        Value::Object(v).to_string()
    }
}

/// Makes unique `phx_ref`s: a per-process random prefix and a counter, so refs from different
/// processes (later: nodes) never collide.
#[derive(Debug)]
pub struct RefGen {
    prefix: String,
    next: AtomicU64,
}

impl Default for RefGen {
    fn default() -> Self {
        Self {
            prefix: format!("F{:08x}", rand::random::<u32>()),
            next: AtomicU64::new(1),
        }
    }
}

impl RefGen {
    /// The next unique ref.
    pub fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.prefix).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> PresencePayload {
        v.as_object().cloned().unwrap()
    }

    fn diff_value(d: &Diff) -> Value {
        serde_json::from_str(&d.to_json()).unwrap()
    }

    #[test]
    fn first_track_is_a_join() {
        let mut p = PresenceState::default();
        let d = p
            .track(1, "alice", payload(json!({"step": 1})), "r1".into())
            .unwrap();
        assert_eq!(
            diff_value(&d),
            json!({"joins": {"alice": {"metas": [{"step": 1, "phx_ref": "r1"}]}}, "leaves": {}})
        );
        let state: Value = serde_json::from_str(&p.state_json()).unwrap();
        assert_eq!(
            state,
            json!({"alice": {"metas": [{"step": 1, "phx_ref": "r1"}]}})
        );
    }

    #[test]
    fn identical_retrack_is_a_noop() {
        let mut p = PresenceState::default();
        p.track(1, "k", payload(json!({"a": 1})), "r1".into());
        assert!(
            p.track(1, "k", payload(json!({"a": 1})), "r2".into())
                .is_none()
        );
    }

    #[test]
    fn update_is_one_diff_with_join_and_leave() {
        let mut p = PresenceState::default();
        p.track(1, "k", payload(json!({"a": 1})), "r1".into());
        let d = p
            .track(1, "k", payload(json!({"a": 2})), "r2".into())
            .unwrap();
        assert_eq!(
            diff_value(&d),
            json!({
                "joins": {"k": {"metas": [{"a": 2, "phx_ref": "r2", "phx_ref_prev": "r1"}]}},
                "leaves": {"k": {"metas": [{"a": 1, "phx_ref": "r1"}]}}
            })
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn several_members_share_a_key_and_leave_separately() {
        let mut p = PresenceState::default();
        p.track(1, "k", payload(json!({"tab": 1})), "r1".into());
        p.track(2, "k", payload(json!({"tab": 2})), "r2".into());
        let d = p.untrack(1).unwrap();
        assert_eq!(
            diff_value(&d),
            json!({"joins": {}, "leaves": {"k": {"metas": [{"tab": 1, "phx_ref": "r1"}]}}})
        );
        let state: Value = serde_json::from_str(&p.state_json()).unwrap();
        assert_eq!(
            state,
            json!({"k": {"metas": [{"tab": 2, "phx_ref": "r2"}]}})
        );
        assert!(p.untrack(1).is_none(), "second untrack changes nothing");
        p.untrack(2);
        assert_eq!(p.state_json(), "{}");
        assert!(p.is_empty());
    }

    #[test]
    fn user_supplied_phx_ref_is_overridden() {
        let mut p = PresenceState::default();
        let d = p
            .track(1, "k", payload(json!({"phx_ref": "mine"})), "r1".into())
            .unwrap();
        assert_eq!(diff_value(&d)["joins"]["k"]["metas"][0]["phx_ref"], "r1");
    }

    #[test]
    fn refs_are_unique() {
        let g = RefGen::default();
        assert_ne!(g.next(), g.next());
    }
}
