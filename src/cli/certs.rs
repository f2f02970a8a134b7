//! `jisu certs init | issue-client | rotate | revoke | crl`: the development PKI, minted
//! with rcgen.
use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Subcommand;
use jisu::security::{certs, revocation};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write ca.pem ca.key server.pem server.key client.pem client.key jwt.key jwt.pub.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Extra server names (DNS or IP), beside localhost, 127.0.0.1 and ::1.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue another client certificate NAME.pem / NAME.key (identity NAME).
    IssueClient {
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Validity, e.g. 24h (default one year).
        #[arg(long, value_parser = super::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Replace server.pem / server.key with a new pair from the CA (a running server
    /// switches to it for new handshakes).
    Rotate {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Extra server names (DNS or IP), beside localhost, 127.0.0.1 and ::1.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Validity, e.g. 30d (default one year).
        #[arg(long, value_parser = super::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Revoke the client certificate NAME.pem: add it to crl.pem, which the server
    /// watches (refused from the next handshake on).
    Revoke {
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// How long the new CRL is valid; the server refuses every client certificate
        /// of this CA once it has expired (default 7d).
        #[arg(long, value_parser = super::parse_duration)]
        valid: Option<Duration>,
    },
    /// Write another JWT signing key pair NAME.key / NAME.pub (ES256), for key rotation.
    JwtKey {
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Print a JWK set (for `auth.jwks` or a JWKS URL) of the given public keys:
    /// `jisu certs jwks 2026-a=certs/jwt.pub 2026-b=certs/next.pub > certs/jwks.json`.
    Jwks {
        /// KID=PUBLIC_KEY.pem, one per key.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Re-sign crl.pem with a new validity (run before it expires, e.g. daily).
    Crl {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, value_parser = super::parse_duration)]
        valid: Option<Duration>,
    },
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { dir, sans, force } => {
            certs::init(&dir, &sans, force)
                .with_context(|| format!("creating certificates in {}", dir.display()))?;
            println!(
                "wrote {} to {} (private keys mode 0600)",
                certs::INIT_FILES.join(" "),
                dir.display()
            );
        }
        CertsCommand::IssueClient { name, dir, ttl } => {
            let path = certs::issue_client(&dir, &name, ttl)?;
            println!("wrote {} and {name}.key", path.display());
        }
        CertsCommand::Rotate { dir, sans, ttl } => {
            let serial = certs::rotate_server(&dir, &sans, ttl)?;
            println!(
                "wrote {}/server.pem and server.key (serial {serial})",
                dir.display()
            );
        }
        CertsCommand::Revoke { name, dir, valid } => {
            let valid = valid.unwrap_or(revocation::DEFAULT_CRL_VALIDITY);
            let crl = revocation::revoke(&dir, &name, valid)?;
            println!(
                "{name} {}; {}/{} lists {} certificate(s), CRL number {}, valid until {}",
                if crl.added {
                    "revoked"
                } else {
                    "was already revoked"
                },
                dir.display(),
                revocation::CRL_FILE,
                crl.revoked,
                crl.crl_number,
                crl.next_update
            );
        }
        CertsCommand::JwtKey { name, dir } => {
            let path = certs::write_jwt_key(&dir, &name)?;
            println!("wrote {} and {name}.pub", path.display());
        }
        CertsCommand::Jwks { keys } => {
            let mut jwks = Vec::new();
            for spec in keys {
                let (kid, file) = spec
                    .split_once('=')
                    .with_context(|| format!("{spec:?}: expected KID=PUBLIC_KEY.pem"))?;
                let pem =
                    std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
                jwks.push(
                    jisu::security::jwt::jwk_from_pem(&pem, kid)
                        .map_err(|e| anyhow::anyhow!("{file}: {e}"))?,
                );
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "keys": jwks }))?
            );
        }
        CertsCommand::Crl { dir, valid } => {
            let valid = valid.unwrap_or(revocation::DEFAULT_CRL_VALIDITY);
            let crl = revocation::update(&dir, None, valid)?;
            println!(
                "{}/{} re-signed: {} certificate(s), CRL number {}, valid until {}",
                dir.display(),
                revocation::CRL_FILE,
                crl.revoked,
                crl.crl_number,
                crl.next_update
            );
        }
    }
    Ok(())
}
