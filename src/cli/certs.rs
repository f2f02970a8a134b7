//! `jisu certs init | issue-client`: the development PKI, minted with rcgen.
use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Subcommand;
use jisu::security::certs;

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
    }
    Ok(())
}
