//! `jisu bench`: load against any Jisu deployment; `jisu bench-target`: the comparison
//! servers of the benchmark suite (hidden).
use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use jisu::{
    bench::{self, Call, Driver, Plan, targets},
    client::{ClientConfig, JisuClient},
    security::{jwt::TokenIssuer, jwt::TokenVerifier, jwt::VerifierSettings, tls},
    store::{self, MemoryStore, Store},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Method to call: users.GetUser, users.ListUsers, users.BatchGetUsers,
    /// users.CreateUser, orders.GetOrder, orders.CreateOrder, health.Check.
    #[arg(long, default_value = "users.GetUser")]
    call: String,
    /// Request as JSON (proto field names); generated when absent.
    #[arg(long)]
    data: Option<String>,
    /// Extra metadata, `key:value`, repeated.
    #[arg(short = 'm', long = "metadata")]
    metadata: Vec<String>,
    /// Server address, repeated: callers are spread over all of them.
    #[arg(long, default_value = "https://localhost:50051")]
    endpoint: Vec<String>,
    /// Certificates directory (ca.pem, the client certificate, jwt.key).
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Client certificate name in the certs directory.
    #[arg(long, default_value = "client")]
    client: String,
    /// Plaintext h2 (`http://` endpoints), no client certificate: only for a bare server.
    #[arg(long)]
    insecure: bool,
    /// Bearer token; minted from <certs>/jwt.key (with just the call's scope) when absent.
    #[arg(long, env = "JISU_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Drive the call as REST/JSON over HTTPS instead of gRPC (the `rest` bench target):
    /// GetUser, BatchGetUsers or a ListUsers page.
    #[arg(long)]
    rest: bool,
    /// gRPC straight over HTTP/2 with no client stack (no retries, balancing, client spans
    /// or metrics; answers counted, not decoded), so one generator core can load a server
    /// core. Without it, calls go through the Jisu client, as an application's do.
    #[arg(long, conflicts_with = "rest")]
    lean: bool,
    /// gRPC written as HTTP/2 frames by the generator itself, one task per connection (as
    /// h2load drives a server): the same bytes as `--lean` on the wire, a fraction of its
    /// CPU per call, and a cost that does not grow with the calls in flight.
    #[arg(long, conflicts_with_all = ["rest", "lean"])]
    frames: bool,
    /// Calls in flight (closed loop), or the most in flight (open loop).
    #[arg(short, long, default_value_t = 50)]
    concurrency: usize,
    /// Connections per endpoint (HTTP/2 multiplexes the callers over them).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured time, after the warm-up.
    #[arg(short, long, default_value = "10s", value_parser = super::parse_duration)]
    duration: Duration,
    /// Stop after this many measured calls instead of a duration.
    #[arg(short = 'n', long)]
    total: Option<u64>,
    /// Calls made before measuring.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    warmup: Duration,
    /// Open loop: send at this fixed rate; latency counts from the scheduled time.
    #[arg(long)]
    rps: Option<f64>,
    /// Messages per stream for streaming calls (ListUsers page size).
    #[arg(long, default_value_t = 100)]
    stream_messages: u32,
    /// Deadline of each call.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    timeout: Duration,
    /// Generator threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// A server process on this machine (Linux) whose CPU time over the measured window
    /// goes in the JSON report (`server_cpu_ticks`): warm-up and set-up not counted.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write every measured call's times to this file as CSV (`due_us,sent_us,done_us,code`,
    /// µs from the start of the measured window, in order of due time): to see which calls
    /// made the tail, and whether they left late or were answered late.
    #[arg(long)]
    timeline: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(bench_main(args, threads))
}

async fn bench_main(args: BenchArgs, threads: usize) -> anyhow::Result<()> {
    let call: Call = args.call.parse().map_err(anyhow::Error::msg)?;
    let data = args
        .data
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--data is not JSON")?;
    let metadata = args
        .metadata
        .iter()
        .map(|m| {
            m.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .with_context(|| format!("-m {m:?}: expected key:value"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = Plan {
        call,
        data,
        metadata,
        concurrency: args.concurrency,
        duration: args.duration,
        total: args.total,
        warmup: args.warmup,
        rps: args.rps,
        stream_messages: args.stream_messages,
        timeout: args.timeout,
        server_pid: args.server_pid,
        timeline: args.timeline.is_some(),
    };
    plan.check().map_err(anyhow::Error::msg)?;
    if args.rest && !matches!(call, Call::GetUser | Call::BatchGetUsers | Call::ListUsers) {
        bail!("--rest drives users.GetUser, users.BatchGetUsers and users.ListUsers only");
    }
    let token = match (&args.token, args.insecure) {
        (Some(t), _) => Some(t.clone()),
        (None, true) => None,
        (None, false) => Some(
            TokenIssuer::from_file(&args.certs.join("jwt.key"), "jisu", "jisucloud")
                .context("no --token or JISU_TOKEN given, and no key to mint one")?
                .issue("jisu-bench", call.scopes(), Duration::from_secs(24 * 3600)),
        ),
    };
    // Each connection set spans every endpoint: the client balances over them.
    let lean_tls = if (args.lean || args.frames) && !args.insecure {
        Some(client_tls(&args)?)
    } else {
        None
    };
    let live = std::io::stderr().is_terminal() && matches!(args.format, Format::Text);
    let bar = if live {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = std::time::Instant::now();
    let ticker = bar.clone();
    let progress = move |done| {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        ticker.set_message(format!("{done} calls measured, {secs:.1}s elapsed"));
        ticker.tick();
    };
    let mut drivers = Vec::new();
    let mut frames = Vec::new();
    for _ in 0..args.connections.max(1) {
        if args.rest {
            for endpoint in &args.endpoint {
                drivers.push(driver(&args, endpoint, token.clone()).await?);
            }
        } else if args.frames {
            for endpoint in &args.endpoint {
                let tls = lean_tls.clone();
                let conn = bench::frames::Frames::connect(endpoint, tls, token.as_deref(), &plan);
                frames.push(conn.await?);
            }
        } else if args.lean {
            for endpoint in &args.endpoint {
                let tls = lean_tls.clone();
                let lean = bench::lean::Lean::connect(endpoint, tls, token.as_deref(), &plan);
                drivers.push(Driver::Lean(lean.await?));
            }
        } else {
            drivers.push(driver(&args, &args.endpoint[0], token.clone()).await?);
        }
    }
    let report = if args.frames {
        bench::run_frames(frames, &plan, threads, progress).await
    } else {
        bench::run(&drivers, &plan, threads, progress).await
    };
    bar.finish_and_clear();
    if let Some(path) = &args.timeline {
        std::fs::write(path, report.timeline_csv())
            .with_context(|| format!("writing the timeline to {}", path.display()))?;
    }
    match args.format {
        Format::Text => println!("{}", report.text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

/// The client's TLS configuration from `--certs` and `--client` (ALPN h2).
fn client_tls(args: &BenchArgs) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(tls::client_config(
        &args.certs.join("ca.pem"),
        &args.certs.join(format!("{}.pem", args.client)),
        &args.certs.join(format!("{}.key", args.client)),
    )?)
}

async fn driver(args: &BenchArgs, endpoint: &str, token: Option<String>) -> anyhow::Result<Driver> {
    if args.rest {
        let mut config = (*client_tls(args)?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .pool_max_idle_per_host(args.concurrency)
            .build()?;
        return Ok(Driver::Rest {
            http,
            base: endpoint.trim_end_matches('/').to_owned(),
            authorization: token.map(|t| format!("Bearer {t}")),
        });
    }
    let config = if args.insecure {
        ClientConfig {
            endpoint: endpoint.to_owned(),
            more_endpoints: args.endpoint[1..].to_vec(),
            resilience: Default::default(),
            ca_pem: Vec::new(),
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
            token,
            timeout: args.timeout,
            server_name: None,
            metrics: None,
        }
    } else {
        let mut c = ClientConfig::from_certs_dir(endpoint, &args.certs, &args.client)?;
        c.more_endpoints = args.endpoint[1..].to_vec();
        c.token = token;
        c.timeout = args.timeout;
        c
    };
    Ok(Driver::Grpc(JisuClient::connect(config).await?))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TargetKind {
    /// UserService + OrderService over plaintext h2, no auth, no telemetry.
    Bare,
    /// The same over Jisu's mutual-TLS listener, still no auth, no telemetry.
    BareTls,
    /// GetUser as REST/JSON over HTTPS with mTLS and the same JWT check.
    Rest,
    /// An OTLP/gRPC receiver that counts spans.
    OtlpSink,
}

/// The server's TLS configuration from a certificates directory, as `jisu serve` builds it.
fn server_tls(certs: &std::path::Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(tls::server_config(
        &tls::ServerTlsFiles {
            cert: &certs.join("server.pem"),
            key: &certs.join("server.key"),
            client_ca: &certs.join("ca.pem"),
            crl: None,
        },
        false,
    )?)
}

/// Comparison servers for the benchmark suite (not for production use).
#[derive(Debug, Args)]
pub struct TargetArgs {
    #[arg(value_enum)]
    kind: TargetKind,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Certificates directory (bare-tls, rest).
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Runtime worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run_target(args: TargetArgs) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build()?.block_on(async move {
        let (listener, addr) = targets::bind(args.listen).await?;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store::load_demo_users(store.as_ref(), jisu::service::now()).await?;
        println!("jisu: serving {:?} on {addr}", args.kind);
        let serving = async move {
            serve_target(args, listener, store).await?;
            anyhow::Ok(())
        };
        // SIGTERM ends the process through `main` (an alloc-count build writes its counts).
        tokio::select! {
            served = serving => served,
            () = super::serve::shutdown_signal() => Ok(()),
        }
    })
}

async fn serve_target(
    args: TargetArgs,
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    match args.kind {
        TargetKind::Bare => targets::serve_bare(listener, store).await?,
        TargetKind::BareTls => {
            targets::serve_bare_tls(listener, server_tls(&args.certs)?, store).await?
        }
        TargetKind::Rest => {
            let tls = server_tls(&args.certs)?;
            let verifier = TokenVerifier::from_file(
                &args.certs.join("jwt.pub"),
                &VerifierSettings {
                    issuer: "jisu".into(),
                    audience: "jisucloud".into(),
                    leeway: Duration::from_secs(30),
                    max_token_bytes: 8192,
                    cache_capacity: 10_000,
                },
            )?;
            targets::serve_rest(listener, tls, verifier, store).await?
        }
        TargetKind::OtlpSink => {
            let sink = targets::OtlpSink::default();
            let spans = sink.spans.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut last = 0;
                loop {
                    tick.tick().await;
                    let now = spans.load(std::sync::atomic::Ordering::Relaxed);
                    if now != last {
                        eprintln!("otlp-sink: {now} spans received");
                        last = now;
                    }
                }
            });
            targets::serve_otlp_sink(listener, sink).await?
        }
    }
    Ok(())
}
