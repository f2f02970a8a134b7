//! `jisu serve`: the secured gRPC server.
use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Args;
use figment::value::Value;
use jisu::{
    config::{LogFormat, ServiceKind, Settings, Sources},
    security::certs,
    startup::Application,
    telemetry,
};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Certificates directory (default ./certs). Only the default directory is created
    /// with development certificates when missing; a named one must exist (a typo must
    /// not start a server nobody trusts) unless --init-certs is given.
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Create development certificates in the --certs directory when it is missing.
    #[arg(long)]
    init_certs: bool,
    /// gRPC listen address (default 0.0.0.0:50051).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address (default 0.0.0.0:9464).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Debug pages' listen address (/debug/traces, /debug/rpcz; default 127.0.0.1:9469,
    /// loopback only unless debug.allow_remote).
    #[arg(long)]
    debug_listen: Option<SocketAddr>,
    /// Load the origin document's 100 demo users into an empty store.
    #[arg(long)]
    demo_data: bool,
    /// Data directory (the embedded database and uploaded files; default ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Storage: postgres://user:password@host/db (several replicas), sqlite:///path/file.db,
    /// or memory: (default: SQLite in the data directory). Also JISU_DATABASE_URL.
    #[arg(long)]
    database_url: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// The services this process serves (default both): `--services orders` with
    /// `--users-endpoint` runs OrderService apart from UserService.
    #[arg(long, value_enum, value_delimiter = ',')]
    services: Vec<ServiceKind>,
    /// UserService to check order users with when this process does not serve users
    /// (https://host:port; called with the server certificate and the caller's token).
    #[arg(long)]
    users_endpoint: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Vec<(String, Value)> {
        let mut o = Vec::new();
        if let Some(certs) = &self.certs {
            o.push(("certs".into(), Value::from(certs.display().to_string())));
        }
        if let Some(listen) = self.listen {
            o.push(("listen".into(), Value::from(listen.to_string())));
        }
        if let Some(addr) = self.metrics_listen {
            o.push(("metrics_listen".into(), Value::from(addr.to_string())));
        }
        if let Some(addr) = self.debug_listen {
            o.push(("debug.listen".into(), Value::from(addr.to_string())));
        }
        if self.demo_data {
            o.push(("demo_data".into(), Value::from(true)));
        }
        if let Some(dir) = &self.data_dir {
            o.push(("data_dir".into(), Value::from(dir.display().to_string())));
        }
        if let Some(url) = &self.database_url {
            o.push(("database_url".into(), Value::from(url.clone())));
        }
        if !self.services.is_empty() {
            let names: Vec<&str> = self.services.iter().map(|s| s.name()).collect();
            o.push(("services".into(), Value::from(names.join(","))));
        }
        if let Some(endpoint) = &self.users_endpoint {
            o.push(("users_endpoint".into(), Value::from(endpoint.clone())));
        }
        if let Some(format) = self.log_format {
            let name = match format {
                LogFormat::Json => "json",
                LogFormat::Pretty => "pretty",
            };
            o.push(("log.format".into(), Value::from(name)));
        }
        o
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let sources = Sources {
        file: args.config.clone(),
        env: env.clone(),
        overrides: args.overrides(),
    };
    let settings = Settings::load(&sources)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The OTLP exporter needs the runtime; the guard flushes spans when serve returns.
    let _tracing =
        runtime.block_on(async { telemetry::init(&settings.log, &env.into_iter().collect()) });
    let default_dir = settings.certs == Settings::default().certs;
    if !settings.certs.exists() && !default_dir && !args.init_certs {
        anyhow::bail!(
            "the certificates directory {dir} does not exist. Point --certs (or JISU_CERTS, \
             or `certs` in the config file) at the directory holding server.pem, \
             server.key, ca.pem and jwt.pub, or create development certificates there with \
             `jisu certs init --dir {dir}` (or `jisu serve --init-certs`)",
            dir = settings.certs.display()
        );
    }
    if !settings.certs.exists() {
        certs::init(&settings.certs, &[], false).with_context(|| {
            format!(
                "creating development certificates in {}",
                settings.certs.display()
            )
        })?;
        tracing::warn!(
            dir = %settings.certs.display(),
            "certificates directory was missing: created a development CA, server and client \
             certificates and a JWT key pair there (not for production)"
        );
    }
    runtime.block_on(async move {
        let app = Application::build(settings).await?;
        // A machine-readable line for scripts and tests; logs go to stderr.
        // Readiness lines; a closed stdout must not take the server down.
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "jisu: serving metrics on http://{}/metrics",
            app.metrics_addr()
        );
        if let Some(addr) = app.debug_addr() {
            let _ = writeln!(
                out,
                "jisu: serving debug pages on http://{addr}/debug/traces"
            );
        }
        let _ = writeln!(out, "jisu: serving gRPC on {}", app.grpc_addr());
        let _ = out.flush();
        app.run_until_stopped(shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
