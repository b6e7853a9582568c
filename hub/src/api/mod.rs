//! REST handlers.
//!
//! - Supabase-compatible (`{"message": …}` errors, [`error`]): [`broadcast`], [`health`].
//! - The hub's own API (seed-000 errors, [`app_error`]): [`sessions`], [`events`], [`share`],
//!   with their pieces: [`credentials`], [`access`], [`json_body`], [`new_session`].
//! - Every request: [`request_id`] (ids, error reporting); every REST call: [`rate_limit`].

pub mod access;
pub mod app_error;
pub mod broadcast;
pub mod credentials;
pub mod error;
pub mod events;
pub mod health;
pub mod json_body;
pub mod metrics;
pub mod new_session;
pub mod rate_limit;
pub mod request_id;
pub mod sessions;
pub mod share;

#[cfg(test)]
mod tests;
