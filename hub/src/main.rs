//! `hub`: the realtime hub binary. Run with `cargo run --release -p hub`; see README for flags and
//! `hub --help` for the subcommands (`simulate-build`, `token`).

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hub::cli::{Cli, Command, init_tracing};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        match cli.command {
            None => {
                init_tracing(cli.serve.log_format, "info,sqlx::postgres::notice=warn");
                hub::cli::serve::run(cli.serve).await
            }
            Some(Command::SimulateBuild(args)) => {
                init_tracing(cli.serve.log_format, "warn");
                hub::cli::simulate_build::run(args).await
            }
            Some(Command::Token(args)) => hub::cli::token::run(args),
        }
    });
    // Everything that matters was drained by the server's own shutdown; do not let a library's
    // leftover blocking work (seen: the Postgres client) hold the exit for seconds.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}
