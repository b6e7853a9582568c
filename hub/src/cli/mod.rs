//! The command line: `hub` serves (the flags of [`Config`]); subcommands are small clients and
//! helpers built on the same library.
//!
//! - `hub [flags]`: run the hub ([`serve`]).
//! - `hub simulate-build`: create a session on a running hub and follow its build ([`simulate_build`]).
//! - `hub token --role …`: print a JWT signed with `HUB_JWT_SECRET` ([`token`]).
//! - `hub terminal-agent --id … -- <command>`: host a command's PTY on a hub ([`terminal_agent`]).

pub mod http;
pub mod serve;
pub mod simulate_build;
pub mod terminal_agent;
pub mod token;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

/// `hub` and its subcommands.
#[derive(Debug, Parser)]
#[command(
    name = "hub",
    version,
    about = "Self-hosted realtime hub (Supabase Realtime compatible)",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Server flags (used when no subcommand is given).
    #[command(flatten)]
    pub serve: Config,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a build session on a running hub, print its share token and a share JWT, and
    /// follow its timeline until it succeeds or fails.
    SimulateBuild(simulate_build::Args),
    /// Print a JWT signed with HUB_JWT_SECRET (for clients, scripts and curl).
    Token(token::Args),
    /// Run a command (default: $SHELL) in a PTY and host it on a hub as terminal <id>,
    /// reconnecting while the command runs; exits with the command's exit code.
    TerminalAgent(terminal_agent::Args),
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `default_filter`).
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn no_subcommand_serves_and_subcommands_parse() {
        let cli = Cli::try_parse_from(["hub", "--addr", "127.0.0.1:0"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.addr.port(), 0);
        let cli =
            Cli::try_parse_from(["hub", "token", "--role", "anon", "--jwt-secret", "s"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Token(_))));
        let cli = Cli::try_parse_from([
            "hub",
            "simulate-build",
            "--url",
            "http://127.0.0.1:1",
            "--template",
            "saas",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::SimulateBuild(_))));
        let cli = Cli::try_parse_from([
            "hub",
            "terminal-agent",
            "--hub",
            "ws://127.0.0.1:1",
            "--id",
            "t1",
            "--token",
            "tok",
            "--",
            "sh",
            "-c",
            "echo --id",
        ])
        .unwrap();
        let Some(Command::TerminalAgent(args)) = cli.command else {
            panic!("expected terminal-agent, got {:?}", cli.command);
        };
        assert_eq!((args.id.as_str(), args.token.as_str()), ("t1", "tok"));
        assert_eq!(args.command, ["sh", "-c", "echo --id"]);
        let cli =
            Cli::try_parse_from(["hub", "terminal-agent", "--id", "t1", "--token", "x"]).unwrap();
        assert!(matches!(cli.command, Some(Command::TerminalAgent(ref a)) if a.command.is_empty()));
        Cli::command().debug_assert();
    }
}
