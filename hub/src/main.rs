//! `hub`: the realtime hub binary. Run with `cargo run --release -p hub`; see README for flags.

use anyhow::Context;
use clap::Parser;
use hub::auth::DevTokens;
use hub::config::LogFormat;
use hub::{AppState, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::parse();
    init_tracing(config.log_format);
    // Signal handlers go in before the listening line: a supervisor that sends SIGTERM right
    // after seeing it must get a clean shutdown, not the default kill.
    let shutdown = shutdown_signal().context("installing signal handlers")?;
    let secret = match config.jwt_secret.take() {
        Some(s) => s,
        None => {
            let dev = DevTokens::generate().context("generating development tokens")?;
            print_dev_tokens(&dev);
            dev.secret
        }
    };
    let listener =
        hub::server::bind(config.addr).with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let state = AppState::connect(config, &secret)
        .await
        .context("starting the backends")?;
    // Tests and scripts wait for exactly this line.
    println!("hub listening on http://{addr}");
    hub::serve(listener, state, shutdown).await?;
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn print_dev_tokens(dev: &DevTokens) {
    eprintln!(
        "\n  DEVELOPMENT ONLY: no HUB_JWT_SECRET set, generated a random secret for this run.\n  \
         Tokens below stop working when the hub restarts. Set HUB_JWT_SECRET in production.\n\n  \
         HUB_JWT_SECRET={}\n  anon key:         {}\n  service_role key: {}\n",
        dev.secret, dev.anon, dev.service_role
    );
}

/// Installs the ctrl-c and SIGTERM handlers now and returns a future that completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    })
}
