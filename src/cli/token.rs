//! `jisu token issue`: mints a bearer token with `<certs>/jwt.key`.
use std::{path::PathBuf, time::Duration};

use clap::Subcommand;
use jisu::security::jwt::TokenIssuer;

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
    } = cmd;
    let issuer = TokenIssuer::from_file(&certs.join("jwt.key"), &issuer, &audience)?;
    println!("{}", issuer.issue(&sub, &scope, ttl));
    Ok(())
}
