//! `hub`: the realtime hub binary. Run with `cargo run --release -p hub`; see README for flags and
//! `hub --help` for the subcommands (`simulate-build`, `token`).

use clap::Parser;
use hub::cli::{Cli, Command, init_tracing};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
}
