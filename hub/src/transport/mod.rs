//! Transports: adapters from a wire to the channel [`channels::Session`]. One file per protocol.

pub mod ws;
pub mod ws_conn;
