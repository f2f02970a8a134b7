//! `jisu docs api`: writes the API reference generated from the proto comments.
use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Render docs/api.md from proto/ comments.
    Api {
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(cmd: DocsCommand) -> anyhow::Result<()> {
    let DocsCommand::Api { out } = cmd;
    let markdown = jisu::docs::api_markdown();
    match out {
        Some(path) => {
            std::fs::write(&path, markdown)?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{markdown}"),
    }
    Ok(())
}
