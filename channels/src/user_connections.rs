//! Concurrent connections per user (JWT `sub`), so one account cannot hold a node's sockets.
//!
//! A connection takes a [`UserClaim`] when it opens and gives it back by dropping it (the claim
//! lives in its session), so every way a connection can end releases its slot. Tokens without a
//! `sub` (a project's shared anon key) and the service role are not counted: the per-address
//! connection rate covers them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::Principal;

/// Open connections per user, against a limit.
#[derive(Debug)]
pub struct UserConnections {
    limit: u32,
    open: Mutex<HashMap<String, u32>>,
}

/// One counted connection of a user; releases its slot when dropped.
#[derive(Debug)]
pub struct UserClaim {
    owner: Arc<UserConnections>,
    user: String,
}

/// Refused: the user already has `limit` connections open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Too many connections for this user (limit {limit})")]
pub struct TooManyConnections {
    /// The limit.
    pub limit: u32,
}

impl UserConnections {
    /// At most `limit` connections per user; 0 disables the limit.
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        // Increment/decrement only: nothing is left half-done by a panic.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection of `principal`: `Ok(None)` when it is not counted (no limit, no
    /// `sub`, the service role), `Ok(Some(claim))` to keep for the connection's life.
    pub fn claim(
        self: &Arc<Self>,
        principal: &Principal,
    ) -> Result<Option<UserClaim>, TooManyConnections> {
        let Some(user) = principal.sub.as_ref().filter(|_| self.limit > 0) else {
            return Ok(None);
        };
        if principal.is_service() {
            return Ok(None);
        }
        let mut open = self.lock();
        let n = open.entry(user.clone()).or_insert(0);
        if *n >= self.limit {
            return Err(TooManyConnections { limit: self.limit });
        }
        *n += 1;
        Ok(Some(UserClaim {
            owner: self.clone(),
            user: user.clone(),
        }))
    }

    /// Connections `user` has open.
    pub fn count(&self, user: &str) -> u32 {
        self.lock().get(user).copied().unwrap_or(0)
    }
}

impl Drop for UserClaim {
    fn drop(&mut self) {
        let mut open = self.owner.lock();
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(sub: Option<&str>, role: &str) -> Principal {
        Principal {
            role: role.into(),
            sub: sub.map(str::to_owned),
            exp: u64::MAX,
            share_session: None,
            grants: None,
        }
    }

    #[test]
    fn claims_count_up_to_the_limit_and_drop_releases() {
        let u = UserConnections::new(2);
        let alice = user(Some("alice"), "authenticated");
        let a = u.claim(&alice).unwrap().expect("counted");
        let b = u.claim(&alice).unwrap().expect("counted");
        assert_eq!(
            u.claim(&alice).unwrap_err(),
            TooManyConnections { limit: 2 }
        );
        assert!(
            u.claim(&user(Some("bob"), "authenticated"))
                .unwrap()
                .is_some()
        );
        drop(a);
        assert_eq!(u.count("alice"), 1);
        let _c = u.claim(&alice).unwrap().expect("a slot was freed");
        drop(b);
        assert_eq!(u.count("alice"), 1);
    }

    #[test]
    fn the_service_role_tokens_without_sub_and_limit_zero_are_not_counted() {
        let u = UserConnections::new(1);
        for _ in 0..3 {
            assert!(
                u.claim(&user(Some("svc"), "service_role"))
                    .unwrap()
                    .is_none()
            );
            assert!(u.claim(&user(None, "anon")).unwrap().is_none());
        }
        let off = UserConnections::new(0);
        assert!(off.claim(&user(Some("x"), "anon")).unwrap().is_none());
    }
}
