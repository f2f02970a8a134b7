//! `jisu call`: a small typed client for people. JSON on stdout; errors on stderr with
//! their gRPC code, reason and field violations.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use jisu::{
    client::{ClientConfig, JisuClient},
    config::LogSettings,
    pb,
    security::jwt::TokenIssuer,
    telemetry,
};
use serde::Serialize;
use tonic_types::StatusExt;

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Server address; repeat for several replicas (calls are balanced, retried where safe).
    #[arg(long, default_value = "https://localhost:50051")]
    endpoint: Vec<String>,
    /// Certificates directory (ca.pem, the client certificate, jwt.key).
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Which client certificate in the certs directory to present (NAME.pem/NAME.key).
    #[arg(long, default_value = "client")]
    client: String,
    /// Bearer token; when absent, one is minted from <certs>/jwt.key.
    #[arg(long, env = "JISU_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Deadline of the call (default 10s; streams that follow changes and file transfers
    /// have none unless given).
    #[arg(long, value_parser = super::parse_duration)]
    timeout: Option<Duration>,
    #[command(subcommand)]
    target: Target,
}

#[derive(Debug, Subcommand)]
enum Target {
    /// UserService.
    #[command(subcommand)]
    Users(UsersCall),
    /// OrderService.
    #[command(subcommand)]
    Orders(OrdersCall),
    /// FileService: chunked, resumable transfers with a progress bar on a terminal.
    #[command(subcommand)]
    Files(FilesCall),
    /// grpc.health.v1.Health/Check (empty SERVICE means the whole server).
    Health {
        #[arg(default_value = "")]
        service: String,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCall {
    Get {
        id: String,
    },
    List {
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
        #[arg(long, default_value = "")]
        status: String,
    },
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "")]
        phone: String,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    Delete {
        id: String,
    },
    BatchGet {
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum OrdersCall {
    /// Place an order: --item PRODUCT_ID:QUANTITY:PRICE[:NAME], repeated.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long = "item", value_parser = parse_item, required = true)]
        items: Vec<pb::OrderItem>,
    },
    Get {
        id: String,
    },
    /// Stream the order's updates until the server ends the stream.
    Watch {
        id: String,
    },
    /// Move an order to its next state (PAID, PROCESSING, SHIPPED, DELIVERED).
    UpdateStatus {
        id: String,
        status: String,
    },
    /// Cancel a PENDING or PAID order.
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Follow several orders on one stream (TrackOrders) until each ends; one JSON event
    /// per line.
    Track {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FilesCall {
    /// Upload PATH (resumes an interrupted upload of the same content); prints the file's
    /// JSON, with its `id`.
    Upload {
        path: PathBuf,
        /// Name to store (default: PATH's file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Download file ID to PATH (resumes from PATH.part; checks the sha256).
    Download { id: String, path: PathBuf },
}

fn parse_item(s: &str) -> Result<pb::OrderItem, String> {
    let mut parts = s.splitn(4, ':');
    let usage = || format!("{s:?}: expected PRODUCT_ID:QUANTITY:PRICE[:NAME]");
    let product_id = parts.next().filter(|p| !p.is_empty()).ok_or_else(usage)?;
    let quantity = parts
        .next()
        .and_then(|q| q.parse().ok())
        .ok_or_else(usage)?;
    let price = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(usage)?;
    Ok(pb::OrderItem {
        product_id: product_id.into(),
        product_name: parts.next().unwrap_or_default().into(),
        quantity,
        price,
    })
}

const ALL_SCOPES: &str = "users:read users:write orders:read orders:write files:read files:write";

pub fn run(args: CallArgs) -> anyhow::Result<()> {
    // Multi-threaded (one worker) so the trace exporter can still flush after the call.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    // Quiet by default (JSON goes to stdout); OTEL_EXPORTER_OTLP_ENDPOINT exports the
    // call's CLIENT span, and its W3C context always goes to the server.
    let log = LogSettings {
        filter: "warn".into(),
        ..LogSettings::default()
    };
    let _tracing = runtime.block_on(async { telemetry::init(&log, &env) });
    runtime.block_on(call(args))
}

async fn call(args: CallArgs) -> anyhow::Result<()> {
    let token = match args.token.clone() {
        Some(t) => t,
        None => TokenIssuer::from_file(&args.certs.join("jwt.key"), "jisu", "jisucloud")
            .context("no --token or JISU_TOKEN given, and no key to mint one")?
            .issue("jisu-cli", ALL_SCOPES, Duration::from_secs(300)),
    };
    let mut config = ClientConfig::from_certs_dir(&args.endpoint[0], &args.certs, &args.client)?;
    config.more_endpoints = args.endpoint[1..].to_vec();
    config.token = Some(token);
    let follows = matches!(
        args.target,
        Target::Files(_) | Target::Orders(OrdersCall::Watch { .. } | OrdersCall::Track { .. })
    );
    config.timeout = args.timeout.unwrap_or(if follows {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        Duration::from_secs(10)
    });
    let client = JisuClient::connect(config).await?;
    let result = dispatch(&client, args.target).await;
    match result {
        Ok(()) => Ok(()),
        Err(Failure::Status(status)) => {
            eprintln!(
                "{}",
                serde_json::to_string_pretty(&StatusReport::from(&status))?
            );
            bail!("call failed with {:?}", status.code())
        }
        Err(Failure::Other(e)) => Err(e),
    }
}

enum Failure {
    Status(tonic::Status),
    Other(anyhow::Error),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Status(s)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Other(e.into())
    }
}

fn print(value: &impl Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn dispatch(client: &JisuClient, target: Target) -> Result<(), Failure> {
    match target {
        Target::Users(call) => users(client, call).await,
        Target::Orders(call) => orders(client, call).await,
        Target::Files(call) => files(client, call).await,
        Target::Health { service } => {
            let reply = client
                .health()
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await?
                .into_inner();
            let status =
                tonic_health::pb::health_check_response::ServingStatus::try_from(reply.status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN");
            print(&serde_json::json!({ "status": status }))
        }
    }
}

async fn users(client: &JisuClient, call: UsersCall) -> Result<(), Failure> {
    let mut users = client.users();
    match call {
        UsersCall::Get { id } => print(
            &users
                .get_user(pb::GetUserRequest { user_id: id })
                .await?
                .into_inner(),
        ),
        UsersCall::List {
            page_size,
            page_token,
            status,
        } => {
            let mut stream = users
                .list_users(pb::ListUsersRequest {
                    page_size,
                    page_token,
                    status,
                })
                .await?
                .into_inner();
            let mut list = Vec::new();
            while let Some(user) = stream.next().await {
                list.push(user?);
            }
            let next = stream.trailers().await?.and_then(|t| {
                t.get(jisu::api::NEXT_PAGE_TOKEN)
                    .and_then(|v| v.to_str().ok().map(str::to_owned))
            });
            print(&serde_json::json!({ "users": list, "next_page_token": next }))
        }
        UsersCall::Create { name, email, phone } => print(
            &users
                .create_user(pb::CreateUserRequest { name, email, phone })
                .await?
                .into_inner(),
        ),
        UsersCall::Update {
            id,
            name,
            email,
            phone,
            status,
        } => print(
            &users
                .update_user(pb::UpdateUserRequest {
                    user_id: id,
                    name,
                    email,
                    phone,
                    status,
                })
                .await?
                .into_inner(),
        ),
        UsersCall::Delete { id } => print(
            &users
                .delete_user(pb::DeleteUserRequest { user_id: id })
                .await?
                .into_inner(),
        ),
        UsersCall::BatchGet { ids } => print(
            &users
                .batch_get_users(pb::BatchGetUsersRequest { user_ids: ids })
                .await?
                .into_inner(),
        ),
    }
}

async fn orders(client: &JisuClient, call: OrdersCall) -> Result<(), Failure> {
    let mut orders = client.orders();
    match call {
        OrdersCall::Create { user, items } => {
            // A fresh key per command: the client may retry it safely, one order results.
            let key = format!("jisu-call-{:032x}", rand::random::<u128>());
            let mut request = tonic::Request::new(pb::CreateOrderRequest {
                user_id: user,
                items,
                idempotency_key: String::new(),
            });
            if let Ok(value) = key.parse() {
                request
                    .metadata_mut()
                    .insert(jisu::api::IDEMPOTENCY_KEY, value);
            }
            print(&orders.create_order(request).await?.into_inner())
        }
        OrdersCall::Get { id } => print(
            &orders
                .get_order(pb::GetOrderRequest { order_id: id })
                .await?
                .into_inner(),
        ),
        OrdersCall::Watch { id } => {
            let mut stream = orders
                .stream_order_updates(pb::StreamOrderUpdatesRequest { order_id: id })
                .await?
                .into_inner();
            while let Some(order) = stream.next().await {
                // One JSON document per line, as updates arrive.
                println!("{}", serde_json::to_string(&order?)?);
            }
            Ok(())
        }
        OrdersCall::UpdateStatus { id, status } => print(
            &orders
                .update_order_status(pb::UpdateOrderStatusRequest {
                    order_id: id,
                    status,
                })
                .await?
                .into_inner(),
        ),
        OrdersCall::Cancel { id, reason } => print(
            &orders
                .cancel_order(pb::CancelOrderRequest {
                    order_id: id,
                    reason,
                })
                .await?
                .into_inner(),
        ),
        OrdersCall::Track { ids } => {
            let requests = ids.into_iter().map(|id| pb::TrackOrdersRequest {
                action: Some(pb::track_orders_request::Action::Subscribe(id)),
            });
            let mut stream = orders
                .track_orders(futures::stream::iter(requests))
                .await?
                .into_inner();
            while let Some(event) = stream.next().await {
                println!("{}", serde_json::to_string(&event?)?);
            }
            Ok(())
        }
    }
}

fn progress_bar(verb: &'static str) -> (indicatif::ProgressBar, jisu::client::files::Progress) {
    // Drawn on stderr only when it is a terminal; JSON stays alone on stdout.
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(verb);
    let handle = bar.clone();
    let progress: jisu::client::files::Progress = std::sync::Arc::new(move |done, total| {
        handle.set_length(total);
        handle.set_position(done);
    });
    (bar, progress)
}

async fn files(client: &JisuClient, call: FilesCall) -> Result<(), Failure> {
    let transfer = |e: jisu::client::files::TransferError| match e {
        jisu::client::files::TransferError::Status(s) => Failure::Status(s),
        other => Failure::Other(other.into()),
    };
    match call {
        FilesCall::Upload { path, name } => {
            let name = match name {
                Some(n) => n,
                None => path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| Failure::Other(anyhow::anyhow!("{path:?} has no file name")))?,
            };
            let (bar, progress) = progress_bar("upload");
            let info = client
                .upload_file(&path, &name, &progress)
                .await
                .map_err(transfer);
            bar.finish_and_clear();
            print(&info?)
        }
        FilesCall::Download { id, path } => {
            let (bar, progress) = progress_bar("download");
            let info = client
                .download_file(&id, &path, &progress)
                .await
                .map_err(transfer);
            bar.finish_and_clear();
            print(&info?)
        }
    }
}

/// A failed call as the user sees it.
#[derive(Debug, Serialize)]
struct StatusReport {
    code: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    field_violations: Vec<serde_json::Value>,
    /// Paste into Jaeger to see the failed call.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

impl From<&tonic::Status> for StatusReport {
    fn from(status: &tonic::Status) -> Self {
        let details = status.get_error_details();
        Self {
            code: format!("{:?}", status.code()),
            message: status.message().to_owned(),
            reason: details.error_info().map(|i| i.reason.clone()),
            field_violations: details
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(
                            |v| serde_json::json!({"field": v.field, "description": v.description}),
                        )
                        .collect()
                })
                .unwrap_or_default(),
            trace_id: status
                .metadata()
                .get(jisu::api::TRACE_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}
