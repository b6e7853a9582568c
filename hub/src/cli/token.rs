//! `hub token --role <role> [--sub <uuid>] [--ttl 1h]`: prints an HS256 JWT signed with
//! `HUB_JWT_SECRET`, the token a client, script or `curl` needs. Only the token goes to stdout,
//! so `TOKEN=$(hub token --role service_role)` works.

use std::time::Duration;

use anyhow::Context;
use channels::auth::now_secs;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::sign_hs256;

/// Flags of `hub token`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The `role` claim: `anon`, `authenticated`, `service_role`, …
    #[arg(long)]
    pub role: String,
    /// The `sub` claim (the user id; build sessions are owned by it).
    #[arg(long)]
    pub sub: Option<Uuid>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The secret the hub verifies tokens with.
    #[arg(long, env = "HUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}

/// The claims of the token `args` describe, expiring `ttl` from now.
pub fn claims(role: &str, sub: Option<Uuid>, ttl: Duration) -> Value {
    let mut claims = json!({
        "role": role,
        "exp": now_secs() + ttl.as_secs().max(1),
        "iat": now_secs(),
        "iss": "hub",
    });
    if let (Some(sub), Some(obj)) = (sub, claims.as_object_mut()) {
        obj.insert("sub".into(), json!(sub));
    }
    claims
}

/// Prints the token.
pub fn run(args: Args) -> anyhow::Result<()> {
    let token = sign_hs256(
        args.jwt_secret.as_bytes(),
        &claims(&args.role, args.sub, args.ttl),
    )
    .context("signing the token")?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::JwtVerifier;
    use channels::TokenVerifier as _;

    #[test]
    fn tokens_verify_with_the_secret() {
        let sub = Uuid::new_v4();
        let t = sign_hs256(
            b"s",
            &claims("authenticated", Some(sub), Duration::from_secs(60)),
        )
        .unwrap();
        let p = JwtVerifier::hs256(b"s").verify(&t).unwrap();
        assert_eq!(p.role, "authenticated");
        assert_eq!(p.sub, Some(sub.to_string()));
        assert!(p.exp >= now_secs() + 59);
    }
}
