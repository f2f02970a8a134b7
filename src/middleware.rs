//! Cross-cutting request handling, one concern per file, each a tower Layer/Service pair.
pub mod auth;
pub mod metrics;

pub use auth::AuthLayer;
pub use metrics::MetricsLayer;
