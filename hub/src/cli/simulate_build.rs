//! `hub simulate-build`: drives a running hub the way a frontend would. It creates a session over
//! REST, prints the session id, the share token and a share JWT (what a browser passes to
//! realtime-js to read `build:<id>`), then follows the timeline with `GET /events` until
//! `build_succeeded` or `build_failed`, printing each event. Bounded by `--timeout`.
//!
//! ```sh
//! HUB_JWT_SECRET=dev cargo run -p hub &                       # the hub (simulated builds on)
//! HUB_JWT_SECRET=dev cargo run -p hub -- simulate-build --template saas
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::auth::sign_hs256;
use crate::cli::http::HubClient;
use crate::cli::token;

/// Flags of `hub simulate-build`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The hub's base URL.
    #[arg(long, env = "HUB_URL", default_value = "http://127.0.0.1:4000")]
    pub url: String,
    /// The JWT to create the session with (a user token or the service role). Without it, a
    /// service-role token is minted from `--jwt-secret`.
    #[arg(long, env = "HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The hub's secret, used only when `--token` is not given.
    #[arg(long, env = "HUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// What to build.
    #[arg(
        long,
        default_value = "A marketplace where musicians sell vintage synthesizers and take bids"
    )]
    pub vibe: String,
    /// The template.
    #[arg(long, default_value = "marketplace", value_parser = ["marketplace", "saas"])]
    pub template: String,
    /// Set `options.enableAnalytics`.
    #[arg(long)]
    pub analytics: bool,
    /// Set `options.enableDriftSentinel`.
    #[arg(long)]
    pub drift_sentinel: bool,
    /// `options.environmentMode`.
    #[arg(long, default_value = "branch", value_parser = ["branch", "project"])]
    pub environment_mode: String,
    /// Give up following the build after this long.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How often the timeline is polled.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
}

/// Runs the subcommand, printing to stdout.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    execute(&args, &mut out).await
}

/// Creates the session, prints its credentials and follows its build, writing to `out`.
pub async fn execute(args: &Args, out: &mut impl Write) -> anyhow::Result<()> {
    let token = match (&args.token, &args.jwt_secret) {
        (Some(t), _) => t.clone(),
        (None, Some(secret)) => sign_hs256(
            secret.as_bytes(),
            &token::claims("service_role", None, Duration::from_secs(3600)),
        )
        .context("minting a service-role token")?,
        (None, None) => bail!("give --token (HUB_TOKEN) or --jwt-secret (HUB_JWT_SECRET)"),
    };
    let hub = HubClient::new(&args.url)?;
    let body = json!({
        "vibeText": args.vibe,
        "template": args.template,
        "options": {
            "enableAnalytics": args.analytics,
            "enableDriftSentinel": args.drift_sentinel,
            "environmentMode": args.environment_mode,
        },
    });
    let created = hub
        .send(Method::POST, "/sessions", Some(&token), Some(&body))
        .await?;
    if created.status != StatusCode::CREATED {
        bail!("creating the session failed: {}", created.error_text());
    }
    let id = text(&created.body, "sessionId")?;
    let share = text(&created.body, "shareToken")?;
    let exchanged = hub
        .send(
            Method::POST,
            "/sessions/token",
            None,
            Some(&json!({ "shareToken": share })),
        )
        .await?;
    if exchanged.status != StatusCode::OK {
        bail!(
            "exchanging the share token failed: {}",
            exchanged.error_text()
        );
    }
    let share_jwt = text(&exchanged.body, "accessToken")?;
    writeln!(out, "session      {id}")?;
    writeln!(out, "share token  {share}")?;
    writeln!(out, "share JWT    {share_jwt}")?;
    writeln!(
        out,
        "             (read-only access to build:{id}; expires at {} unix time)",
        exchanged.body["expiresAt"]
    )?;
    follow(&hub, &token, &id, args, out).await
}

/// Prints events as they appear until the build ends or `args.timeout` passes.
async fn follow(
    hub: &HubClient,
    token: &str,
    id: &str,
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.timeout;
    let mut seen = HashSet::new();
    loop {
        let reply = hub
            .send(
                Method::GET,
                &format!("/events?session_id={id}"),
                Some(token),
                None,
            )
            .await?;
        if reply.status != StatusCode::OK {
            bail!("reading the timeline failed: {}", reply.error_text());
        }
        let events = reply.body.as_array().cloned().unwrap_or_default();
        for e in events {
            let key = e["id"].as_str().unwrap_or_default().to_owned();
            if !seen.insert(key) {
                continue;
            }
            let kind = e["type"].as_str().unwrap_or("?");
            writeln!(
                out,
                "  {}  {kind:<24} {}",
                e["ts"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )?;
            match kind {
                "build_succeeded" => {
                    writeln!(out, "build succeeded")?;
                    return Ok(());
                }
                "build_failed" => bail!(
                    "build failed: {}",
                    e["message"].as_str().unwrap_or("no reason given")
                ),
                _ => {}
            }
        }
        out.flush()?;
        if Instant::now() >= deadline {
            bail!(
                "the build did not finish within {}",
                humantime::format_duration(args.timeout)
            );
        }
        tokio::time::sleep(args.poll.min(deadline - Instant::now())).await;
    }
}

fn text(body: &Value, field: &str) -> anyhow::Result<String> {
    body[field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the response has no `{field}`: {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppState, Config};
    use clap::Parser as _;

    const SECRET: &str = "cli-test-secret";

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: Args,
    }

    #[tokio::test]
    async fn creates_and_follows_a_build_on_a_live_hub() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state =
            AppState::memory(Config::for_tests(SECRET), SECRET).expect("test token settings");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let mut args = Wrap::parse_from(["x", "--template", "saas", "--analytics"]).args;
        args.url = format!("http://{addr}");
        args.token = None;
        args.jwt_secret = Some(SECRET.to_owned());
        args.timeout = Duration::from_secs(10);
        args.poll = Duration::from_millis(20);
        let mut out = Vec::new();
        execute(&args, &mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("session      "), "{out}");
        assert!(out.contains("share JWT    ey"), "{out}");
        let plan = out.find("plan_created").unwrap();
        let analytics = out.find("analytics_configured").unwrap();
        let done = out.find("build_succeeded").unwrap();
        assert!(plan < analytics && analytics < done, "{out}");
        assert!(out.ends_with("build succeeded\n"), "{out}");

        // A wrong secret is reported with the hub's message and request id.
        args.jwt_secret = Some("wrong".to_owned());
        let err = execute(&args, &mut Vec::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("401") && err.contains("req_"), "{err}");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
