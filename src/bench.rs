//! `jisu bench`: a load generator for any Jisu deployment (ghz is the reference).
//!
//! Closed loop (`concurrency` callers, each sending its next call when the last returns)
//! or open loop (`rps`: calls leave on a fixed schedule and latency is measured from the
//! *scheduled* send time, so a slow server cannot hide its queueing — no coordinated
//! omission, as wrk2). Latencies go into an HdrHistogram per caller, merged at the end.
//! The generator measures its own CPU per call and says "client-bound" when it, not the
//! server, was the limit.
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tonic::{Code, Request};

use crate::{
    client::JisuClient,
    pb::{
        BatchGetUsersRequest, CreateOrderRequest, CreateUserRequest, GetOrderRequest,
        GetUserRequest, ListUsersRequest, OrderItem,
    },
    telemetry::metrics::code_label,
};

pub mod frames;
mod hpack;
pub mod lean;
pub mod targets;

/// The methods `jisu bench` can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    GetUser,
    ListUsers,
    BatchGetUsers,
    CreateUser,
    GetOrder,
    CreateOrder,
    Health,
}

impl Call {
    /// The scopes a token needs for this call (the bench mints no more than that).
    pub fn scopes(self) -> &'static str {
        match self {
            Call::GetUser | Call::ListUsers | Call::BatchGetUsers | Call::Health => "users:read",
            Call::CreateUser => "users:write",
            Call::GetOrder => "orders:read",
            // In a split deployment orders checks the user with the caller's token.
            Call::CreateOrder => "orders:write users:read",
        }
    }
}

impl std::str::FromStr for Call {
    type Err = String;

    /// `users.GetUser`, `UserService/GetUser` or `jisucloud.v1.UserService/GetUser`.
    fn from_str(s: &str) -> Result<Self, String> {
        let method = s
            .rsplit(['.', '/'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        Ok(match method.as_str() {
            "getuser" => Call::GetUser,
            "listusers" => Call::ListUsers,
            "batchgetusers" => Call::BatchGetUsers,
            "createuser" => Call::CreateUser,
            "getorder" => Call::GetOrder,
            "createorder" => Call::CreateOrder,
            "check" | "health" => Call::Health,
            _ => {
                return Err(format!(
                    "{s:?}: expected one of users.GetUser, users.ListUsers, users.BatchGetUsers, \
                     users.CreateUser, orders.GetOrder, orders.CreateOrder, health.Check"
                ));
            }
        })
    }
}

/// What to send and how hard.
#[derive(Debug, Clone)]
pub struct Plan {
    pub call: Call,
    /// The request as JSON (the proto's field names); generated when absent.
    pub data: Option<serde_json::Value>,
    /// Extra metadata on every call.
    pub metadata: Vec<(String, String)>,
    /// Callers in flight (closed loop), or the most calls in flight (open loop).
    pub concurrency: usize,
    /// Measured time (after the warm-up); ignored when `total` is set.
    pub duration: Duration,
    /// Stop after this many measured calls instead.
    pub total: Option<u64>,
    pub warmup: Duration,
    /// Open loop at this rate.
    pub rps: Option<f64>,
    /// Messages per stream for streaming calls (ListUsers `page_size`).
    pub stream_messages: u32,
    /// Deadline of each call.
    pub timeout: Duration,
    /// A server process on this machine whose CPU time is read over the measured window
    /// (Linux `/proc`), so its CPU per call counts neither the warm-up nor set-up.
    pub server_pid: Option<u32>,
    /// Keep every measured call's times for [`Report::timeline`] (a diagnosis of tails:
    /// which calls were late, and whether late leaving or late answering).
    pub timeline: bool,
}

/// The CPU time (user + system, in clock ticks) process `pid` has used, from
/// `/proc/PID/stat`; `None` where that cannot be read.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The time this machine's CPUs have been stolen (a hypervisor running something else
/// while a vCPU wanted to run), in clock ticks summed over the CPUs: the eighth number of
/// `/proc/stat`'s `cpu` line. `None` where that cannot be read.
fn steal_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    steal_from_stat(&stat)
}

fn steal_from_stat(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_ascii_whitespace().nth(8)?.parse().ok()
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub call: String,
    pub mode: String,
    pub count: u64,
    pub seconds: f64,
    pub qps: f64,
    /// Stream messages received (equals `count` for unary calls).
    pub messages: u64,
    pub messages_per_second: f64,
    pub latency_ms: Latency,
    /// Calls by final code (`OK`, `Unavailable`, ...).
    pub status: BTreeMap<String, u64>,
    /// A sample message per failing code.
    pub errors: BTreeMap<String, String>,
    /// The generator's own CPU per measured call.
    pub client_cpu_us_per_call: f64,
    /// The generator used (nearly) all the CPU it had: the figures describe the client.
    pub client_bound: bool,
    /// The CPU the server process (`--server-pid`) used over the measured window, in
    /// clock ticks (`getconf CLK_TCK`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_ticks: Option<u64>,
    /// CPU time the hypervisor took from this machine over the measured window, in clock
    /// ticks summed over its CPUs (Linux `/proc/stat`): a VM's stall shows here, not as the
    /// server's cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steal_ticks: Option<u64>,
    /// GetUser only: bytes of one request and one response body on the wire (gRPC: the
    /// protobuf message plus its 5-byte frame prefix; REST: the JSON body and the path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<Payload>,
    /// Open loop only: calls that left later than scheduled by more than 1 ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_sends: Option<u64>,
    /// With [`Plan::timeline`]: each measured call, in order of its due time.
    #[serde(skip)]
    pub timeline: Vec<Timed>,
}

/// One measured call's times, in µs from the start of the measured window: when it was
/// due (its slot, open loop; when its caller was free, closed loop), when it left, when
/// its answer was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timed {
    pub due_us: u64,
    pub sent_us: u64,
    pub done_us: u64,
    /// The call's final gRPC code.
    pub code: i32,
}

impl Timed {
    /// The CSV header line of [`Report::timeline_csv`].
    pub const HEADER: &'static str = "due_us,sent_us,done_us,code";
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Payload {
    pub request: usize,
    pub response: usize,
}

/// Measures the payload of one GetUser call.
async fn probe_payload(driver: &Driver, plan: &Plan) -> Option<Payload> {
    use prost::Message;
    if plan.call != Call::GetUser {
        return None;
    }
    let req: GetUserRequest = request(&plan.data).unwrap_or_else(|| GetUserRequest {
        user_id: "USER0001".into(),
    });
    match driver {
        Driver::Grpc(client) => {
            let user = client
                .users()
                .get_user(with_metadata(req.clone(), plan))
                .await
                .ok()?
                .into_inner();
            Some(Payload {
                request: req.encoded_len() + 5,
                response: user.encoded_len() + 5,
            })
        }
        Driver::Lean(lean) => {
            let answer = lean.call(plan, 0, 0).await.ok()?;
            Some(Payload {
                request: lean::Lean::request_len(plan),
                response: answer.bytes,
            })
        }
        Driver::Rest {
            http,
            base,
            authorization,
        } => {
            let path = format!("/v1/users/{}", req.user_id);
            let mut call = http.get(format!("{base}{path}"));
            if let Some(a) = authorization {
                call = call.header("authorization", a);
            }
            let body = call.send().await.ok()?.bytes().await.ok()?;
            Some(Payload {
                request: path.len(),
                response: body.len(),
            })
        }
    }
}

/// Per-caller tallies, merged at the end.
struct Tally {
    /// Keyed by the numeric code.
    status: BTreeMap<i32, u64>,
    errors: BTreeMap<i32, String>,
    messages: u64,
    late: u64,
    timeline: Vec<Timed>,
    /// `--frames`: the message bytes of its first call's answer, when OK.
    answer_bytes: Option<usize>,
}

impl Tally {
    /// With room for `timeline` rows: grown on demand, the 512 open-loop callers' rows
    /// doubled at the same moments (each caller gets an even share of the calls), and each
    /// such moment stalled the generator ~20 ms at 84,400 calls/s: 1,800 calls answered
    /// over 2 ms, at 1.55 s and 3.1 s into every 5-s window, in every variant's timeline
    /// (BENCHMARKS.md, session 20).
    fn new(timeline: usize) -> Self {
        Self {
            status: BTreeMap::new(),
            errors: BTreeMap::new(),
            messages: 0,
            late: 0,
            timeline: Vec::with_capacity(timeline),
            answer_bytes: None,
        }
    }
}

/// `--data` as the call's request type.
fn request<T: serde::de::DeserializeOwned>(data: &Option<serde_json::Value>) -> Option<T> {
    data.as_ref()
        .map(|d| serde_json::from_value(d.clone()).expect("validated in `check`"))
}

// The request of call number `n` of caller `worker`, the same for every driver: `--data`
// when given, else a default.

fn get_user_request(plan: &Plan, worker: usize, n: u64) -> GetUserRequest {
    request(&plan.data).unwrap_or_else(|| GetUserRequest {
        user_id: format!("USER{:04}", (n as usize + worker) % 100 + 1),
    })
}

fn list_users_request(plan: &Plan) -> ListUsersRequest {
    request(&plan.data).unwrap_or(ListUsersRequest {
        page_size: plan.stream_messages as i32,
        ..Default::default()
    })
}

fn batch_get_users_request(plan: &Plan) -> BatchGetUsersRequest {
    request(&plan.data).unwrap_or_else(|| BatchGetUsersRequest {
        user_ids: (1..=10).map(|i| format!("USER{i:04}")).collect(),
    })
}

fn create_user_request(plan: &Plan, worker: usize, n: u64) -> CreateUserRequest {
    request(&plan.data).unwrap_or_else(|| CreateUserRequest {
        name: "Bench".into(),
        email: format!("bench-{}-{worker}-{n}@jisu.dev", std::process::id()),
        phone: String::new(),
    })
}

fn get_order_request(plan: &Plan) -> GetOrderRequest {
    request(&plan.data).unwrap_or_default()
}

fn create_order_request(plan: &Plan) -> CreateOrderRequest {
    request(&plan.data).unwrap_or_else(|| CreateOrderRequest {
        user_id: "USER0001".into(),
        items: vec![OrderItem {
            product_id: "SKU-1".into(),
            product_name: "bench".into(),
            quantity: 1,
            price: 9.9,
        }],
        idempotency_key: String::new(),
    })
}

impl Plan {
    /// The timeline rows to make room for in each caller, up front: an open loop's share of
    /// the measured calls, and a quarter more (whichever caller is free takes the next slot,
    /// so shares differ a little). Closed loop and `--total` runs do not know their count:
    /// none (their timelines grow).
    fn timeline_share(&self, callers: usize) -> usize {
        match (self.timeline, self.rps, self.total) {
            (true, Some(rps), None) => {
                (self.duration.as_secs_f64() * rps / callers.max(1) as f64 * 1.25) as usize + 64
            }
            _ => 0,
        }
    }

    /// Refuses data that does not fit the call's request type.
    pub fn check(&self) -> Result<(), String> {
        fn fits<T: serde::de::DeserializeOwned>(d: &serde_json::Value) -> Result<(), String> {
            serde_json::from_value::<T>(d.clone())
                .map(|_| ())
                .map_err(|e| format!("--data does not fit the request: {e}"))
        }
        if let Some(d) = &self.data {
            match self.call {
                Call::GetUser => fits::<GetUserRequest>(d)?,
                Call::ListUsers => fits::<ListUsersRequest>(d)?,
                Call::BatchGetUsers => fits::<BatchGetUsersRequest>(d)?,
                Call::CreateUser => fits::<CreateUserRequest>(d)?,
                Call::GetOrder => fits::<GetOrderRequest>(d)?,
                Call::CreateOrder => fits::<CreateOrderRequest>(d)?,
                Call::Health => {}
            }
        } else if self.call == Call::GetOrder {
            return Err("orders.GetOrder needs --data '{\"order_id\": \"ORD...\"}'".into());
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if self.rps.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err("--rps must be a positive number".into());
        }
        Ok(())
    }
}

fn with_metadata<T>(message: T, plan: &Plan) -> Request<T> {
    let mut request = Request::new(message);
    for (k, v) in &plan.metadata {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse(),
        ) {
            request.metadata_mut().insert(k, v);
        }
    }
    request.set_timeout(plan.timeout);
    request
}

/// How calls reach the server.
#[derive(Debug, Clone)]
pub enum Driver {
    /// gRPC through the Jisu client (one HTTP/2 connection per client).
    Grpc(JisuClient),
    /// gRPC straight over one HTTP/2 connection, no client stack (`--lean`).
    Lean(lean::Lean),
    /// REST/JSON over HTTPS, for comparison: GetUser as `GET {base}/v1/users/{id}`,
    /// BatchGetUsers as `POST {base}/v1/users:batchGet`, ListUsers as one page from
    /// `GET {base}/v1/users?page_size=N`.
    Rest {
        http: reqwest::Client,
        base: String,
        authorization: Option<String>,
    },
}

async fn rest_call(
    http: &reqwest::Client,
    base: &str,
    authorization: &Option<String>,
    plan: &Plan,
    worker: usize,
    n: u64,
) -> Result<u64, tonic::Status> {
    let call = match plan.call {
        Call::BatchGetUsers => {
            let req = batch_get_users_request(plan);
            http.post(format!("{base}/v1/users:batchGet")).json(&req)
        }
        Call::ListUsers => {
            let req = list_users_request(plan);
            http.get(format!("{base}/v1/users?page_size={}", req.page_size))
        }
        _ => {
            let req = get_user_request(plan, worker, n);
            http.get(format!("{base}/v1/users/{}", req.user_id))
        }
    };
    let mut call = call.timeout(plan.timeout);
    if let Some(a) = authorization {
        call = call.header("authorization", a);
    }
    let response = call
        .send()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let decoded = |e: serde_json::Error| tonic::Status::internal(e.to_string());
    match status.as_u16() {
        // Decoded as a client would, and counted in users (a page's users are its
        // messages, as a stream's are).
        200 => match plan.call {
            Call::BatchGetUsers => {
                serde_json::from_slice::<crate::pb::BatchGetUsersResponse>(&body)
                    .map_err(decoded)?;
                Ok(1)
            }
            Call::ListUsers => {
                #[derive(serde::Deserialize)]
                struct Page {
                    users: Vec<crate::pb::User>,
                }
                let page = serde_json::from_slice::<Page>(&body).map_err(decoded)?;
                Ok(page.users.len() as u64)
            }
            _ => {
                serde_json::from_slice::<crate::pb::User>(&body).map_err(decoded)?;
                Ok(1)
            }
        },
        404 => Err(tonic::Status::not_found("404")),
        400 => Err(tonic::Status::invalid_argument("400")),
        401 => Err(tonic::Status::unauthenticated("401")),
        403 => Err(tonic::Status::permission_denied("403")),
        code => Err(tonic::Status::unknown(format!("HTTP {code}"))),
    }
}

/// One call; returns its final code (and message when not OK) and messages received.
async fn one_call(
    driver: &Driver,
    plan: &Plan,
    worker: usize,
    n: u64,
) -> (Code, Option<String>, u64) {
    let client = match driver {
        Driver::Grpc(client) => client,
        Driver::Lean(lean) => {
            return match lean.call(plan, worker, n).await {
                Ok(r) => (Code::Ok, None, r.messages),
                Err(s) => (s.code(), Some(s.message().to_owned()), 0),
            };
        }
        Driver::Rest {
            http,
            base,
            authorization,
        } => {
            return match rest_call(http, base, authorization, plan, worker, n).await {
                Ok(m) => (Code::Ok, None, m),
                Err(s) => (s.code(), Some(s.message().to_owned()), 0),
            };
        }
    };
    let result: Result<u64, tonic::Status> = async {
        match plan.call {
            Call::GetUser => {
                let req = get_user_request(plan, worker, n);
                client.users().get_user(with_metadata(req, plan)).await?;
                Ok(1)
            }
            Call::ListUsers => {
                let req = list_users_request(plan);
                let mut stream = client
                    .users()
                    .list_users(with_metadata(req, plan))
                    .await?
                    .into_inner();
                let mut messages = 0;
                while let Some(m) = stream.next().await {
                    m?;
                    messages += 1;
                }
                Ok(messages)
            }
            Call::BatchGetUsers => {
                let req = batch_get_users_request(plan);
                client
                    .users()
                    .batch_get_users(with_metadata(req, plan))
                    .await?;
                Ok(1)
            }
            Call::CreateUser => {
                let req = create_user_request(plan, worker, n);
                client.users().create_user(with_metadata(req, plan)).await?;
                Ok(1)
            }
            Call::GetOrder => {
                let req = get_order_request(plan);
                client.orders().get_order(with_metadata(req, plan)).await?;
                Ok(1)
            }
            Call::CreateOrder => {
                let req = create_order_request(plan);
                client
                    .orders()
                    .create_order(with_metadata(req, plan))
                    .await?;
                Ok(1)
            }
            Call::Health => {
                client
                    .health()
                    .check(with_metadata(
                        tonic_health::pb::HealthCheckRequest::default(),
                        plan,
                    ))
                    .await?;
                Ok(1)
            }
        }
    }
    .await;
    match result {
        Ok(messages) => (Code::Ok, None, messages),
        Err(status) => (status.code(), Some(status.message().to_owned()), 0),
    }
}

fn cpu_seconds() -> f64 {
    metrics_process::collector::collect()
        .cpu_seconds_total
        .unwrap_or(0.0)
}

/// The pacer wakes at most this often (slots due meanwhile leave together, up to this
/// late): each wake-up costs the generator a cross-thread wake of its runtime, and at
/// 10,000/s one per call doubled the generator's CPU per call.
const PACE_QUANTUM: Duration = Duration::from_micros(250);

/// An open loop's schedule: call `k` is due `k / rps` seconds after `start`; with an
/// `end`, the calls due before it are all there are.
struct Schedule {
    start: std::time::Instant,
    rps: f64,
    end: Option<std::time::Instant>,
    /// Who take the calls: the callers, or with `--frames` the connections; each gets one
    /// permit past the end, to see that it is over.
    takers: usize,
}

impl Schedule {
    fn due(&self, slot: u64) -> std::time::Instant {
        self.start + Duration::from_secs_f64(slot as f64 / self.rps)
    }

    /// How many calls are due before the end (k / rps < end - start).
    fn slots(&self) -> Option<u64> {
        self.end
            .map(|end| ((end - self.start).as_secs_f64() * self.rps).ceil() as u64)
    }
}

/// An open loop's calls, released by [`pace`] (a permit each) for the takers to take.
struct Pacer {
    schedule: Schedule,
    permits: tokio::sync::Semaphore,
}

/// Releases each call of the schedule at its time, from a thread of its own: tokio's
/// timers fire on a 1 ms wheel, so a sleep per call sent calls 0-2 ms late (at 1,000/s
/// against bare tonic: p50 1.5 ms, every call ≥ 0.5 ms late), and that lateness counted as
/// latency. Slots that fall due while it sleeps are released together. At the end (or
/// `stop`) every worker gets one more permit, to see that it is over.
fn pace(pacer: &Pacer, stop: &AtomicBool) {
    let Pacer { schedule, permits } = pacer;
    let last = schedule.slots();
    let mut released = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Every slot due by now (k / rps <= now - start).
        let now = std::time::Instant::now();
        let due = ((now - schedule.start).as_secs_f64() * schedule.rps).floor() as u64 + 1;
        let due = last.map_or(due, |last| due.min(last));
        if due > released {
            permits.add_permits((due - released) as usize);
            released = due;
        }
        if last.is_some_and(|last| released >= last) {
            break;
        }
        let next = schedule.due(released).max(now + PACE_QUANTUM);
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
    }
    permits.add_permits(schedule.takers);
}

/// The generator's CPU seconds, the server's CPU ticks and the machine's stolen ticks at
/// one moment.
type CpuMark = (f64, Option<u64>, Option<u64>);

/// What the callers of a run share: the schedule, the measured window and its counts.
struct Shared {
    plan: Plan,
    /// Open loop: the calls released on schedule.
    pacer: Option<Pacer>,
    measure_from: Instant,
    /// Closed loop: when calls stop (with `--total`, none).
    end: Option<Instant>,
    stop: AtomicBool,
    measured: AtomicU64,
    /// Open loop: slots taken so far.
    slots: AtomicU64,
    /// With `--total`: measured calls started.
    tickets: AtomicU64,
    /// When the first measured call finished.
    cpu_start: parking_lot::Mutex<Option<CpuMark>>,
    /// One latency histogram for all the callers, under an uncontended lock: one each (1 µs
    /// to 60 s at 3 significant figures is ~220 KiB) made 512 open-loop callers touch ~110
    /// MiB, and recording was 5 % of the generator's CPU at 72,700 calls/s (BENCHMARKS.md,
    /// session 18).
    hist: parking_lot::Mutex<Histogram<u64>>,
}

impl Shared {
    /// When `slot` of the open loop is due, or `None` when it is past the end.
    fn slot_due(&self, pacer: &Pacer, slot: u64) -> Option<Instant> {
        if pacer.schedule.slots().is_some_and(|last| slot >= last) {
            return None;
        }
        Some(Instant::from_std(pacer.schedule.due(slot)))
    }

    /// Whether a call due at `due` may start: a closed loop runs until its end, and with
    /// `--total` a measured call takes a ticket first (exactly `total` run). An open loop
    /// sends every slot scheduled before its end, however late (lateness is counted, never
    /// dropped: a slow machine must not shrink the schedule).
    fn may_start(&self, due: Instant) -> bool {
        if self.plan.rps.is_none() && self.end.is_some_and(|e| Instant::now() >= e) {
            return false;
        }
        if let Some(total) = self.plan.total
            && due >= self.measure_from
            && self.tickets.fetch_add(1, Ordering::Relaxed) >= total
        {
            return false;
        }
        true
    }

    /// Counts a call that was due at `due`, left at `sent` and has just ended with `code`
    /// (`message` when not OK) after `messages` answer messages.
    fn record(
        &self,
        tally: &mut Tally,
        (due, sent): (Instant, Instant),
        code: Code,
        message: Option<String>,
        messages: u64,
    ) {
        if due < self.measure_from {
            return;
        }
        {
            let mut cpu = self.cpu_start.lock();
            if cpu.is_none() {
                *cpu = Some((
                    cpu_seconds(),
                    self.plan.server_pid.and_then(process_ticks),
                    steal_ticks(),
                ));
            }
        }
        let done = Instant::now();
        let latency = done - due;
        // Whole µs, as in the timeline: a row there is late exactly when counted so.
        if (sent - due).as_micros() > 1_000 {
            tally.late += 1;
        }
        if self.plan.timeline {
            // From the window's start (calls due before it are not measured).
            let due_us = (due - self.measure_from).as_micros() as u64;
            tally.timeline.push(Timed {
                due_us,
                sent_us: due_us + (sent - due).as_micros() as u64,
                done_us: due_us + latency.as_micros() as u64,
                code: code as i32,
            });
        }
        self.hist
            .lock()
            .saturating_record(latency.as_micros().max(1) as u64);
        *tally.status.entry(code as i32).or_default() += 1;
        if let Some(m) = message {
            tally.errors.entry(code as i32).or_insert(m);
        }
        tally.messages += messages;
        let done = self.measured.fetch_add(1, Ordering::Relaxed) + 1;
        if self.plan.total.is_some_and(|t| done >= t) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs `plan` over `clients` (callers are spread over them round-robin). `progress` is
/// told the measured calls so far, about every 200 ms.
pub async fn run(
    clients: &[Driver],
    plan: &Plan,
    worker_threads: usize,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Report {
    let payload_bytes = match clients.first() {
        Some(driver) => probe_payload(driver, plan).await,
        None => None,
    };
    let (shared, pacer) = begin(plan, plan.concurrency);
    let timeline_rows = plan.timeline_share(plan.concurrency);
    let mut tasks = Vec::with_capacity(plan.concurrency);
    for worker in 0..plan.concurrency {
        let client = clients[worker % clients.len()].clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new(timeline_rows);
            let mut n = 0u64;
            let plan = &shared.plan;
            while !shared.stop.load(Ordering::Relaxed) {
                // When this call is due: now (closed loop) or its slot (open loop).
                let due = match &shared.pacer {
                    // The pacer releases each slot at its time (never closed: a permit
                    // always comes, one past the end included).
                    Some(pacer) => {
                        let Ok(permit) = pacer.permits.acquire().await else {
                            break;
                        };
                        permit.forget();
                        let slot = shared.slots.fetch_add(1, Ordering::Relaxed);
                        let Some(due) = shared.slot_due(pacer, slot) else {
                            break;
                        };
                        due
                    }
                    None => Instant::now(),
                };
                if !shared.may_start(due) {
                    break;
                }
                let sent = Instant::now();
                let (code, message, messages) = one_call(&client, plan, worker, n).await;
                n += 1;
                shared.record(&mut tally, (due, sent), code, message, messages);
            }
            tally
        }));
    }
    let payload = Payloads::Probed(payload_bytes);
    finish(shared, tasks, pacer, payload, worker_threads, progress).await
}

/// Runs `plan` over `--frames` connections (callers' share spread evenly over them).
pub async fn run_frames(
    conns: Vec<frames::Frames>,
    plan: &Plan,
    worker_threads: usize,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Report {
    let request = lean::Lean::request_len(plan);
    let (shared, pacer) = begin(plan, conns.len());
    let count = conns.len().max(1);
    let mut tasks = Vec::with_capacity(count);
    for (k, conn) in conns.into_iter().enumerate() {
        // Each connection's share of the calls in flight (the first ones take the rest).
        let limit = plan.concurrency / count + usize::from(k < plan.concurrency % count);
        let rows = plan.timeline_share(count);
        tasks.push(tokio::spawn(conn.drive(
            shared.clone(),
            k,
            limit.max(1),
            rows,
        )));
    }
    // GetUser: its payload as the first call's answer brought it.
    let payload = Payloads::FirstAnswer { request };
    finish(shared, tasks, pacer, payload, worker_threads, progress).await
}

/// Where a run's [`Report::payload_bytes`] come from.
enum Payloads {
    /// Measured before the run.
    Probed(Option<Payload>),
    /// The request's size and the first call's answer's (GetUser).
    FirstAnswer { request: usize },
}

/// Starts a run: its shared state, and for an open loop the pacer's thread (`callers` get
/// one more permit each at the end, to see that it is over).
fn begin(plan: &Plan, callers: usize) -> (Arc<Shared>, Option<std::thread::JoinHandle<()>>) {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = plan.total.is_none().then(|| measure_from + plan.duration);
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        // Open loop: one thread releases the calls on schedule (see `pace`).
        pacer: plan.rps.map(|rps| Pacer {
            schedule: Schedule {
                start: start.into_std(),
                rps,
                end: end.map(Instant::into_std),
                takers: callers,
            },
            permits: tokio::sync::Semaphore::new(0),
        }),
        measure_from,
        end,
        stop: AtomicBool::new(false),
        measured: AtomicU64::new(0),
        slots: AtomicU64::new(0),
        tickets: AtomicU64::new(0),
        cpu_start: parking_lot::Mutex::new(None),
        hist: parking_lot::Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        ),
    });
    let thread = shared.pacer.is_some().then(|| {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("jisu-bench-pacer".into())
            .spawn(move || {
                if let Some(pacer) = &shared.pacer {
                    pace(pacer, &shared.stop)
                }
            })
            .expect("spawning the pacer thread")
    });
    (shared, thread)
}

/// Waits for the callers' `tasks`, merges their tallies and makes the report.
async fn finish(
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    pacer: Option<std::thread::JoinHandle<()>>,
    payload: Payloads,
    worker_threads: usize,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Report {
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                progress(shared.measured.load(Ordering::Relaxed));
            }
        })
    };
    let mut total = Tally::new(0);
    for task in tasks {
        if let Ok(t) = task.await {
            for (code, n) in t.status {
                *total.status.entry(code).or_default() += n;
            }
            for (code, m) in t.errors {
                total.errors.entry(code).or_insert(m);
            }
            total.messages += t.messages;
            total.late += t.late;
            total.timeline.extend(t.timeline);
            total.answer_bytes = total.answer_bytes.or(t.answer_bytes);
        }
    }
    ticker.abort();
    if let Some(thread) = pacer {
        shared.stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
    }
    let plan = &shared.plan;
    let payload_bytes = match payload {
        Payloads::Probed(p) => p,
        Payloads::FirstAnswer { request } => total
            .answer_bytes
            .filter(|_| plan.call == Call::GetUser)
            .map(|response| Payload { request, response }),
    };
    let measure_from = shared.measure_from;
    let finished = Instant::now();
    let (cpu_from, server_from, steal_from) = shared
        .cpu_start
        .lock()
        .unwrap_or_else(|| (cpu_seconds(), None, None));
    let cpu = cpu_seconds() - cpu_from;
    let server_cpu_ticks = server_from
        .zip(plan.server_pid.and_then(process_ticks))
        .map(|(from, to)| to.saturating_sub(from));
    let steal_ticks = steal_from
        .zip(steal_ticks())
        .map(|(from, to)| to.saturating_sub(from));
    let seconds = (finished - measure_from.min(finished))
        .as_secs_f64()
        .max(1e-9);
    let h = shared.hist.lock();
    let count = h.len();
    let ms = |us: u64| us as f64 / 1000.0;
    Report {
        call: format!("{:?}", plan.call),
        mode: match plan.rps {
            Some(r) => format!("open loop at {r} calls/s"),
            None => format!("closed loop, {} in flight", plan.concurrency),
        },
        count,
        seconds,
        qps: count as f64 / seconds,
        messages: total.messages,
        messages_per_second: total.messages as f64 / seconds,
        latency_ms: Latency {
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        },
        status: total
            .status
            .iter()
            .map(|(c, n)| (code_label(Code::from_i32(*c)).to_owned(), *n))
            .collect(),
        errors: total
            .errors
            .iter()
            .map(|(c, m)| (code_label(Code::from_i32(*c)).to_owned(), m.clone()))
            .collect(),
        client_cpu_us_per_call: if count > 0 {
            cpu * 1e6 / count as f64
        } else {
            0.0
        },
        client_bound: cpu / seconds >= 0.9 * worker_threads as f64,
        server_cpu_ticks,
        steal_ticks,
        late_sends: plan.rps.map(|_| total.late),
        payload_bytes,
        timeline: {
            let mut timeline = total.timeline;
            timeline.sort_unstable();
            timeline
        },
    }
}

impl Report {
    /// [`Report::timeline`] as CSV, a header line first ([`Timed::HEADER`]).
    pub fn timeline_csv(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(32 * (self.timeline.len() + 1));
        out += Timed::HEADER;
        out.push('\n');
        for t in &self.timeline {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{},{},{},{}", t.due_us, t.sent_us, t.done_us, t.code);
        }
        out
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let l = &self.latency_ms;
        let mut out = format!(
            "{} — {}\n  calls {}  in {:.2}s  = {:.0} calls/s",
            self.call, self.mode, self.count, self.seconds, self.qps
        );
        if self.messages != self.count {
            out += &format!(
                "  ({} messages, {:.0}/s)",
                self.messages, self.messages_per_second
            );
        }
        out += &format!(
            "\n  latency ms  min {:.3}  mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n  status     ",
            l.min, l.mean, l.p50, l.p90, l.p99, l.p999, l.max
        );
        let status: Vec<String> = self
            .status
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        out += &status.join("  ");
        for (code, message) in &self.errors {
            out += &format!("\n  {code}: {message}");
        }
        out += &format!(
            "\n  generator  {:.1} µs CPU per call{}",
            self.client_cpu_us_per_call,
            if self.client_bound {
                "  — client-bound: the generator was the bottleneck"
            } else {
                ""
            }
        );
        if let Some(p) = self.payload_bytes {
            out += &format!(
                "\n  payload    {} B request, {} B response",
                p.request, p.response
            );
        }
        if let Some(late) = self.late_sends {
            out += &format!("\n  late sends {late} (sent > 1 ms after schedule)");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_loop_timeline_has_room_for_each_callers_share_up_front() {
        let plan = |timeline, rps, total| Plan {
            call: Call::GetUser,
            data: None,
            metadata: Vec::new(),
            concurrency: 512,
            duration: Duration::from_secs(5),
            total,
            warmup: Duration::from_secs(1),
            rps,
            stream_messages: 100,
            timeout: Duration::from_secs(5),
            server_pid: None,
            timeline,
        };
        // 84,400 calls/s for 5 s over 512 callers: 824 each on average.
        let share = plan(true, Some(84_400.0), None).timeline_share(512);
        assert!((1_030..1_200).contains(&share), "{share}");
        assert_eq!(plan(false, Some(84_400.0), None).timeline_share(512), 0);
        assert_eq!(plan(true, None, None).timeline_share(512), 0);
        assert_eq!(
            plan(true, Some(84_400.0), Some(1_000)).timeline_share(512),
            0
        );
    }

    #[test]
    fn the_timeline_is_csv_with_a_row_per_call() {
        let report = |timeline| Report {
            call: "GetUser".into(),
            mode: "open loop at 2 calls/s".into(),
            count: 2,
            seconds: 1.0,
            qps: 2.0,
            messages: 2,
            messages_per_second: 2.0,
            latency_ms: Latency::default(),
            status: BTreeMap::new(),
            errors: BTreeMap::new(),
            client_cpu_us_per_call: 0.0,
            client_bound: false,
            server_cpu_ticks: None,
            steal_ticks: None,
            payload_bytes: None,
            late_sends: Some(1),
            timeline,
        };
        let rows = vec![
            Timed {
                due_us: 0,
                sent_us: 3,
                done_us: 250,
                code: 0,
            },
            Timed {
                due_us: 500_000,
                sent_us: 501_700,
                done_us: 502_000,
                code: 14,
            },
        ];
        assert_eq!(
            report(rows).timeline_csv(),
            "due_us,sent_us,done_us,code\n0,3,250,0\n500000,501700,502000,14\n"
        );
        assert_eq!(
            report(Vec::new()).timeline_csv(),
            "due_us,sent_us,done_us,code\n"
        );
    }

    #[test]
    fn steal_is_read_from_the_machines_cpu_line() {
        let stat = "cpu  8832880 2573 732896 4017183 27942 0 126345 478162 0 0\n\
                    cpu0 4414804 1340 362846 2016975 17090 0 65263 235946 0 0\n";
        assert_eq!(steal_from_stat(stat), Some(478162));
        // Only the all-CPUs line counts; a kernel without the column gives nothing.
        assert_eq!(steal_from_stat("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(steal_from_stat("cpu  1 2 3 4 5 6 7\n"), None);
    }

    #[test]
    fn the_pacer_releases_each_slot_at_its_time_then_one_per_worker() {
        let start = std::time::Instant::now();
        let pacer = |end| Pacer {
            schedule: Schedule {
                start,
                rps: 1000.0,
                end,
                takers: 3,
            },
            permits: tokio::sync::Semaphore::new(0),
        };
        // Slots 0..=20 are due before the end (k ms < 20.5 ms).
        let ending = pacer(Some(start + Duration::from_micros(20_500)));
        pace(&ending, &AtomicBool::new(false));
        assert_eq!(ending.permits.available_permits(), 21 + 3);
        // Not ahead of the schedule: slot 20 is due at 20 ms.
        assert!(start.elapsed() >= Duration::from_millis(20));

        // Stopped (a --total reached): nothing more is released but the takers' permits.
        let stopped = pacer(None);
        pace(&stopped, &AtomicBool::new(true));
        assert_eq!(stopped.permits.available_permits(), 3);
    }

    #[test]
    fn calls_parse_in_every_spelling() {
        assert_eq!("users.GetUser".parse(), Ok(Call::GetUser));
        assert_eq!(
            "jisucloud.v1.UserService/ListUsers".parse(),
            Ok(Call::ListUsers)
        );
        assert_eq!("orders.CreateOrder".parse(), Ok(Call::CreateOrder));
        assert!("users.Nope".parse::<Call>().is_err());
    }
}
