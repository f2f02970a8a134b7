//! The integration suite: one test binary (one link, one copy of the dependencies on disk)
//! holding every end-to-end test. `cargo nextest run faults::` runs one file.

mod common;

mod api_docs;
mod attacks;
mod auth;
mod authz;
mod bench;
mod connections;
mod debug_pages;
mod durability;
mod faults;
mod files;
mod interop;
mod jwks;
mod layering;
mod metrics;
mod mtls;
mod observability;
mod orders;
mod ownership;
mod reload;
mod replicas;
mod resilience;
mod schema;
mod sdk;
mod store_contract;
mod streaming;
mod tracing;
mod users;
