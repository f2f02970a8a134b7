//! Cross-cutting request handling, one concern per file, each a tower Layer/Service pair.
pub mod auth;
pub mod client_telemetry;
pub mod metrics;

pub use auth::AuthLayer;
pub use client_telemetry::ClientTelemetryLayer;
pub use metrics::MetricsLayer;
