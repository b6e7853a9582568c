//! `hub terminal-agent --hub ws://127.0.0.1:4000 --id <terminal> --token <service token>
//! [-- <command> <args>…]`: runs the command (default: `$SHELL`, else `/bin/sh`) in a PTY and
//! hosts it on the hub as terminal `<id>`; see [`crate::terminal_agent`]. Exits with the
//! command's exit code.
//!
//! ```sh
//! HUB_JWT_SECRET=dev cargo run -p hub &
//! TOKEN=$(HUB_JWT_SECRET=dev cargo run -q -p hub -- token --role service_role)
//! cargo run -p hub -- terminal-agent --id t1 --token "$TOKEN" -- bash -l
//! ```

use std::ffi::OsString;

use crate::terminal_agent::{self, AgentConfig};

/// Flags of `hub terminal-agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The hub's base URL (ws:// or http://; the agent dials <hub>/v1/terminal/<id>?role=host).
    #[arg(long, env = "HUB_URL", default_value = "ws://127.0.0.1:4000")]
    pub hub: String,
    /// The terminal's id.
    #[arg(long)]
    pub id: String,
    /// A service-role JWT (sent as `Authorization: Bearer`).
    #[arg(long, env = "HUB_TOKEN", hide_env_values = true)]
    pub token: String,
    /// TERM for the command (viewers are xterm-compatible).
    #[arg(long, default_value = "xterm-256color")]
    pub term: String,
    /// The command and its arguments (after `--`); default: $SHELL, else /bin/sh.
    #[arg(last = true)]
    pub command: Vec<OsString>,
}

/// Runs the agent; returns the command's exit code.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let mut command = args.command.into_iter();
    let program = command.next().unwrap_or_else(default_shell);
    terminal_agent::run(AgentConfig {
        hub: args.hub,
        id: args.id,
        token: args.token,
        program,
        args: command.collect(),
        term: args.term,
    })
    .await
}

/// The user's shell, as a terminal would start it.
fn default_shell() -> OsString {
    std::env::var_os("SHELL")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into())
}
