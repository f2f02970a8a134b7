//! `jisu trace`: looks a call up on running servers' debug pages — one trace's span tree
//! by its id (the `x-trace-id` every response carries), or the recent failures.
use anyhow::{Context, bail};
use clap::Args;
use jisu::telemetry::debug::{TraceCalls, TraceList, render};

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The trace id (32 hexadecimal digits, as in the `x-trace-id` of a response).
    #[arg(required_unless_present = "errors", conflicts_with = "errors")]
    trace_id: Option<String>,
    /// List the recent failed and slow calls, with their trace ids, instead.
    #[arg(long)]
    errors: bool,
    /// The debug listener (`debug.listen`) of each server to ask; repeat, or separate with
    /// commas, for every process of a call chain.
    #[arg(
        long = "debug-addr",
        env = "JISU_DEBUG_ADDR",
        default_value = "127.0.0.1:9469",
        value_delimiter = ','
    )]
    debug_addr: Vec<String>,
    /// At most this many failures with --errors.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the JSON the servers answered instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .no_proxy()
            .build()?;
        match &args.trace_id {
            Some(id) => one_trace(&http, &args, id).await,
            None => failures(&http, &args).await,
        }
    })
}

async fn get(http: &reqwest::Client, addr: &str, path: &str) -> anyhow::Result<reqwest::Response> {
    let url = format!("http://{addr}{path}");
    http.get(&url).send().await.with_context(|| {
        format!(
            "cannot reach the debug pages at {addr} (is `jisu serve` running there with \
             debug.enabled? Its address is `debug.listen`, default 127.0.0.1:9469; pass \
             --debug-addr)"
        )
    })
}

/// The server's `{"error": ...}` answer, or the status line.
async fn refusal(response: reqwest::Response) -> String {
    let status = response.status();
    match response.json::<serde_json::Value>().await {
        Ok(v) => v["error"]
            .as_str()
            .map_or(status.to_string(), str::to_owned),
        Err(_) => status.to_string(),
    }
}

async fn one_trace(http: &reqwest::Client, args: &TraceArgs, id: &str) -> anyhow::Result<()> {
    let id = id.trim().to_ascii_lowercase();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{id:?} is not a trace id: 32 hexadecimal digits, as in x-trace-id");
    }
    let mut calls = Vec::new();
    let mut misses = Vec::new();
    for addr in &args.debug_addr {
        let response = get(http, addr, &format!("/debug/api/traces/{id}")).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            misses.push(format!("{addr}: {}", refusal(response).await));
            continue;
        }
        if !response.status().is_success() {
            bail!("{addr}: {}", refusal(response).await);
        }
        let found: TraceCalls = response
            .json()
            .await
            .with_context(|| format!("{addr}: unreadable answer"))?;
        calls.extend(found.calls);
    }
    if calls.is_empty() {
        bail!("trace {id} not found:\n  {}", misses.join("\n  "));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&calls)?);
    } else {
        print!("{}", render::trace_tree(&calls));
    }
    Ok(())
}

async fn failures(http: &reqwest::Client, args: &TraceArgs) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for addr in &args.debug_addr {
        let response = get(
            http,
            addr,
            &format!("/debug/api/traces?failures=true&limit={}", args.limit),
        )
        .await?;
        if !response.status().is_success() {
            bail!("{addr}: {}", refusal(response).await);
        }
        let list: TraceList = response.json().await?;
        all.extend(list.traces);
    }
    all.sort_by_key(|r| std::cmp::Reverse(r.start_unix_nanos));
    all.truncate(args.limit);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!("{}", render::failures(&all));
    }
    Ok(())
}
