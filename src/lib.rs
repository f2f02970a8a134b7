//! Jisu: a secured, observable gRPC server for JisuCloud's `UserService` and
//! `OrderService` (package `jisucloud.v1`).
//!
//! # Layout
//!
//! - [`api`] and [`pb`] come from the `jisu-api` crate (`crates/jisu-api`): the generated
//!   protobuf types, gRPC stubs and descriptor set, and what every layer knows about the
//!   API (the method table with call shape, scope and idempotency, wire metadata names,
//!   `grpc-timeout` parsing). It depends on nothing of ours.
//! - [`config`]: typed settings, layered defaults ← TOML file ← `JISU_*` env ← flags.
//! - [`startup`]: [`startup::Application`] binds its listeners and composes the one
//!   middleware stack; tests start it on port 0. `readiness`: health that follows the
//!   database (NOT_SERVING while it does not answer) and `/ready`.
//! - [`transport`]: the TLS accept loop (handshake timeout, peer identity per connection).
//! - [`security`]: rustls configs and peer identity (`tls`), rcgen certificates (`certs`),
//!   CRLs (`revocation`), JWT issuing and verification with key sets (`jwt`) and their
//!   sources (`jwks`), the authorization policy (`authz`),
//!   credentials and policy reloaded without a restart (`reload`).
//! - [`middleware`]: one concern per file; `auth` checks the bearer token and scope,
//!   `metrics` records RED metrics and the SERVER span (the call record itself is shared
//!   with the client crate), `reset_guard` closes connections that mostly cancel.
//! - [`service`]: the business rules of each proto service; knows nothing of TLS or CLI.
//!   `user_directory`: where OrderService checks users (same store, or a remote UserService);
//!   `ownership`: an end user's token reaches only that user's data.
//! - [`store`]: storage behind a trait: SQLite (the default), PostgreSQL (several replicas;
//!   LISTEN/NOTIFY change feed), in memory (tests, benchmarks), and a wrapper that gives
//!   each operation a span and a duration.
//! - [`client`]: the `jisu-client` crate (`crates/jisu-client`): the typed, resilient
//!   client (mTLS channel, bearer token, deadline, balancing, breakers, safe retries,
//!   CLIENT spans, `grpc_client_*` metrics), the call record both ends share, and the
//!   per-call buffer of the work inside a call (`children`).
//! - [`telemetry`]: logging (filter, format, trace ids per line), the OTLP pipeline with
//!   its bounded export queue (`otel`), Prometheus metrics, `/metrics` and `/ready`, the
//!   in-memory store of recent kept traces (`recent`), per-method last-minute statistics
//!   (`rpcz`) and the loopback debug pages over both (`debug`).
//! - [`bench`]: the load generator behind `jisu bench` and the servers the benchmark suite
//!   compares with (bare, REST/JSON, an OTLP sink).
//! - [`docs`]: renders `docs/api.md` from the proto comments.
//! - [`error`]: the library's errors and their one mapping to `tonic::Status`.
//!
//! # Layers
//!
//! A module uses only modules of lower layers (checked by `tests/suite/layering.rs`), so
//! no two modules import each other. Lowest first:
//!
//! 1. `api` and `pb` (the `jisu-api` crate)
//! 2. `error`, `config`, `docs`
//! 3. `telemetry`
//! 4. `security`, `store`
//! 5. `transport`
//! 6. `middleware`
//! 7. `client`
//! 8. `service`
//! 9. `startup`, `bench`
//!
//! The binary's `cli` sits on top and uses the library only.
#![forbid(unsafe_code)]

pub mod bench;
pub mod config;
pub mod docs;
pub mod error;
pub mod middleware;
pub mod security;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transport;

pub use error::Error;
/// The API catalog (method table, wire names) from the `jisu-api` crate.
pub use jisu_api as api;
/// The generated protobuf types and gRPC stubs, from the `jisu-api` crate.
pub use jisu_api::pb;
/// The resilient typed client, from the `jisu-client` crate.
pub use jisu_client as client;
