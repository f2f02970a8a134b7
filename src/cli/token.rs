//! `jisu token issue`: mints a bearer token with `<certs>/jwt.key` (optionally bound to a
//! client certificate).
use std::{path::PathBuf, time::Duration};

use clap::Subcommand;
use jisu::security::{jwt::TokenIssuer, tls};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a signed ES256 token on stdout.
    Issue {
        #[arg(long, default_value = "certs")]
        certs: PathBuf,
        /// Subject (`sub`), e.g. a user or service name.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, e.g. "users:read orders:read".
        #[arg(long, default_value = "")]
        scope: String,
        #[arg(long, default_value = "1h", value_parser = super::parse_duration)]
        ttl: Duration,
        #[arg(long, default_value = "jisu")]
        issuer: String,
        #[arg(long, default_value = "jisucloud")]
        audience: String,
        /// Bind the token to this client certificate (RFC 8705 `cnf.x5t#S256`): it is
        /// then accepted only over a connection presenting that certificate.
        #[arg(long)]
        bind_cert: Option<PathBuf>,
        /// Signing key (default <certs>/jwt.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Key id written into the token header, for servers verifying with a JWK set.
        #[arg(long)]
        kid: Option<String>,
    },
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Issue {
        certs,
        sub,
        scope,
        ttl,
        issuer,
        audience,
        bind_cert,
        key,
        kid,
    } = cmd;
    let key = key.unwrap_or_else(|| certs.join("jwt.key"));
    let mut issuer = TokenIssuer::from_file(&key, &issuer, &audience)?;
    if let Some(kid) = kid {
        issuer = issuer.with_kid(kid);
    }
    let token = match bind_cert {
        None => issuer.issue(&sub, &scope, ttl),
        Some(path) => {
            let cert = tls::load_certs(&path)?;
            issuer.issue_bound(&sub, &scope, ttl, &tls::cert_thumbprint(&cert[0]))
        }
    };
    println!("{token}");
    Ok(())
}
