//! REST handlers: health and the Supabase-compatible broadcast endpoints.

pub mod broadcast;
pub mod error;
pub mod health;
