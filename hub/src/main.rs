//! `hub`: the realtime hub binary. Run with `cargo run --release -p hub`; see README for flags and
//! `hub --help` for the subcommands (`simulate-build`, `token`, `terminal-agent`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hub::cli::{Cli, Command, init_tracing};

/// mimalloc instead of the system allocator: the fan-out allocates and frees small objects on
/// every message from both worker threads, and glibc's malloc spent a quarter of the hub's CPU
/// there (arena locking, `malloc_consolidate`) under the 100k events/s SSE load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        match cli.command {
            None => {
                init_tracing(cli.serve.log_format, "info,sqlx::postgres::notice=warn");
                hub::cli::serve::run(cli.serve)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Some(Command::SimulateBuild(args)) => {
                init_tracing(cli.serve.log_format, "warn");
                hub::cli::simulate_build::run(args)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Some(Command::Token(args)) => hub::cli::token::run(args).map(|()| ExitCode::SUCCESS),
            Some(Command::TerminalAgent(args)) => {
                init_tracing(cli.serve.log_format, "info");
                // The command's own exit code (0..=255, or 128 + signal).
                hub::cli::terminal_agent::run(args)
                    .await
                    .map(|code| ExitCode::from(u8::try_from(code).unwrap_or(1)))
            }
        }
    });
    // Everything that matters was drained by the server's own shutdown; do not let a library's
    // leftover blocking work (seen: the Postgres client) hold the exit for seconds.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}
