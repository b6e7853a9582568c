//! `hub` without a subcommand: run the server until SIGTERM or ctrl-c.

use anyhow::Context;

use crate::auth::DevTokens;
use crate::config::Config;
use crate::state::AppState;

/// Binds, connects the backends, announces `hub listening on http://…` on stdout (tests and
/// scripts wait for exactly that line) and serves until a shutdown signal.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
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
        crate::server::bind(config.addr).with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let state = AppState::connect(config, &secret).await?;
    println!("hub listening on http://{addr}");
    crate::serve(listener, state, shutdown).await?;
    Ok(())
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
