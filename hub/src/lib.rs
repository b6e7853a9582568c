//! The `hub` binary's library: configuration, the HTTP/WebSocket server, transports, JWT auth and
//! the REST API. `main.rs` only wires these together, so tests run the same server in-process on
//! an ephemeral port (`hub::serve(listener, state, shutdown)`).
//!
//! # Layout
//! - [`config`]: flags and `HUB_…` variables; [`state`]: what routes share.
//! - [`server`]: accept loop, HTTP/1.1 with upgrades, graceful shutdown.
//! - [`routes`]: the router; [`api`]: REST handlers (Supabase broadcast, build sessions);
//!   [`transport`]: WebSocket transport.
//! - [`auth`]: JWT verification, development and share tokens.
//! - [`simulate`]: the simulated build orchestrator.
//! - [`cli`]: the subcommands (`hub`, `hub simulate-build`, `hub token`, `hub terminal-agent`).
//! - [`terminal_agent`]: the PTY host behind `hub terminal-agent`.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod jwks;
pub mod routes;
pub mod server;
pub mod simulate;
pub mod state;
pub mod terminal_agent;
pub mod transport;

pub use config::Config;
pub use server::serve;
pub use state::AppState;
