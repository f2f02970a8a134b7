//! The command line: one file per subcommand, each calling the library only.
use clap::{Parser, Subcommand};

mod bench;
mod call;
mod certs;
mod docs;
mod serve;
mod token;
mod trace;

/// Jisu: JisuCloud's UserService and OrderService over mutual TLS with JWT auth.
#[derive(Debug, Parser)]
#[command(name = "jisu", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(serve::ServeArgs),
    /// Create the development CA, server, client and JWT keys; issue client certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Mint bearer tokens with the local JWT key.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Call a running server (JSON on stdout).
    Call(call::CallArgs),
    /// Load-test a running server (closed or open loop; text or JSON report).
    Bench(bench::BenchArgs),
    /// Servers the benchmark suite compares with (bare, rest, otlp-sink).
    #[command(hide = true)]
    BenchTarget(bench::TargetArgs),
    /// Look a call up on running servers: one trace's span tree by its id, or the recent
    /// failures (`--errors`), from the debug pages.
    Trace(trace::TraceArgs),
    /// Generate documentation.
    #[command(subcommand)]
    Docs(docs::DocsCommand),
}

/// Runs one command to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Certs(cmd) => certs::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Call(args) => call::run(args),
        Command::Bench(args) => {
            quiet_tracing();
            bench::run(args)
        }
        Command::BenchTarget(args) => {
            quiet_tracing();
            bench::run_target(args)
        }
        Command::Trace(args) => trace::run(args),
        Command::Docs(cmd) => docs::run(cmd),
    }
}

/// The load generator and the comparison servers log warnings and errors only, as any
/// service does. Without a subscriber, `tracing` hands every h2/hyper span to the `log`
/// crate (its `log` feature, which sqlx turns on): ~14k instructions per call (16 % of
/// bare-tls, counted), which inflated both bare baselines and slowed the generator.
fn quiet_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parses `90s`, `15m`, `1h`, `24h`, `30d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 15m, 1h, 24h)"))
}
