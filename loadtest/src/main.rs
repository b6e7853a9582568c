//! `loadtest`: load generator for the hub's Supabase Realtime (Phoenix V2) WebSocket endpoint,
//! its server-sent event streams and its terminals.
//!
//! Run `cargo build --release -p loadtest`, start the hub, then for example
//!
//! ```text
//! HUB_JWT_SECRET=<secret> target/release/loadtest idle --conns 10000 --topics 100 \
//!     --src-ips 127.0.0.1-127.0.0.20 --server-pid <hub pid> --duration 30s \
//!     --expect-rss-per-conn 4096 --expect-rate 10000 --json idle.json
//! HUB_JWT_SECRET=<secret> target/release/loadtest fanout --conns 1000 --rate 1000 --size 100 \
//!     --duration 10s --src-ips 127.0.0.1-127.0.0.20 --server-pid <hub pid> \
//!     --expect-p99 50 --expect-delivered 1 --expect-per-cpu 1000000 --json fanout.json
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/hub HUB_JWT_SECRET=<secret> \
//!     target/release/loadtest pg-feed --sessions 100 --viewers 10 --rate 1000 --duration 10s \
//!     --server-pid <hub pid> --expect-p99 3 --expect-delivered 1 --expect-duplicates 0
//! HUB_JWT_SECRET=<secret> target/release/loadtest sse --mode idle --conns 5000 \
//!     --src-ips 127.0.0.1-127.0.0.20 --server-pid <hub pid> --duration 30s \
//!     --expect-rss-per-conn 4096 --expect-delivered 1 --json sse-idle.json
//! HUB_JWT_SECRET=<secret> target/release/loadtest sse --mode fanout --conns 1000 --rate 50 \
//!     --duration 20s --src-ips 127.0.0.1-127.0.0.20 --server-pid <hub pid> \
//!     --expect-p99 5 --expect-delivered 1 --expect-duplicates 0 --expect-in-order
//! HUB_JWT_SECRET=<secret> target/release/loadtest sse --mode topics --conns 5000 --rate 20 \
//!     --duration 30s --src-ips 127.0.0.1-127.0.0.20 --server-pid <hub pid> \
//!     --expect-p99 20 --expect-delivered 1 --expect-in-order --json sse-topics.json
//! HUB_JWT_SECRET=<secret> target/release/loadtest terminal --mode echo --interval 0ms \
//!     --count 5000 --agent target/release/hub --server-pid <hub pid> --expect-p99 0.5
//! HUB_JWT_SECRET=<secret> target/release/loadtest terminal --mode echo --interval 30ms \
//!     --count 1000 --agent target/release/hub --server-pid <hub pid> --expect-p99 2
//! HUB_JWT_SECRET=<secret> target/release/loadtest terminal --mode output --viewers 10 \
//!     --chunk 16384 --duration 10s --server-pid <hub pid> --expect-mbps 60 --expect-delivered 1
//! ```
//!
//! pg-feed needs the hub serving from `DATABASE_URL` (it inserts rows there and the hub's
//! triggers publish them); it creates its build sessions and deletes them at the end.
//!
//! sse reads `GET /v1/sse/{topic}` on the host and port of `--url`, as an ordinary user, and
//! publishes through service-role WebSocket connections (one per 100 topics, the hub's channel
//! limit per connection); `--kind chat` (default) streams `token` deltas with the send stamp in
//! the text, `--kind room` fanout payloads. It runs in one process (no `--publishers 0` split).
//!
//! terminal talks to `GET /v1/terminal/{id}` on the host and port of `--url` with a
//! service-role token. `--mode echo` types into `hub terminal-agent` running a raw-mode `cat`
//! (started with `--agent`, or already hosting `--id`); back to back it types faster than the
//! hub's default input limit (`HUB_TERMINAL_INPUT_PER_SEC=1000`), so refused keys are counted,
//! not timed: start the hub with a higher limit (or 0) to time them all. `--mode output` hosts
//! the terminal itself and checks that every viewer gets every byte in order.
//!
//! The other scenarios (`rooms`, `churn`, `presence`, `multinode`, `mixed`, `flood`) and the
//! exact command lines of the benchmark record are in `bench/README.md`; `bench/record` runs
//! them all against fresh hubs.
//!
//! `--help` on each scenario lists every flag. A run larger than one process's open-file limit
//! is split: start each share with its own `--conns` (and `--publishers 0` for fanout's
//! subscriber-only shares, same `--rate`/`--duration`/`--topics`/`--topic-prefix`), the process
//! with the publisher last; `--url` takes a comma list to spread connections over several hubs.
//!
//! Start reading at [`scenarios`]; [`client`] is the WebSocket client, [`session`] one
//! connection's life, [`sse`] the event-stream reader, [`report`] the output.
//!
//! Exit codes: 0 done and every `--expect-*` met, 1 the run could not be done, 2 bad usage,
//! 3 an `--expect-*` threshold was missed, 130 interrupted by Ctrl-C (partial figures).

mod agent;
mod args;
mod client;
mod clock;
mod db;
mod live;
mod metrics;
mod payload;
mod phoenix;
mod proc;
mod progress;
mod report;
mod scenarios;
mod session;
mod sse;
mod target;
mod terminal;
mod token;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

/// mimalloc, as in the hub: the load generator shares the machine's cores with the hub it
/// measures, so every cycle it spends in glibc's malloc is taken from the hub's figures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    if let Err(e) = args::validate(&cli.scenario) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match run(cli.scenario) {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(3),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// How a completed run ended.
enum Outcome {
    /// Every `--expect-*` threshold was met.
    Passed,
    /// A threshold was missed.
    Failed,
    /// Ctrl-C cut it short.
    Interrupted,
}

/// Runs the scenario, prints the table, writes the JSON.
fn run(scenario: args::Scenario) -> anyhow::Result<Outcome> {
    let common = scenario.common().clone();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = common.threads {
        rt.worker_threads(n);
    }
    let report = rt
        .build()
        .context("starting the runtime")?
        .block_on(scenarios::run(scenario))?;
    print!("{}", report.table());
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.interrupted() {
        Outcome::Interrupted
    } else if report.passed() {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}
