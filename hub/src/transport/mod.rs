//! Transports: adapters from a wire to the channel [`channels::Session`]. One file per protocol.

pub mod conn;
pub mod origin;
pub mod query;
pub mod sse;
pub mod terminal;
pub mod ws;
