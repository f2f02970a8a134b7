//! Cross-cutting request handling, one concern per file, each a tower Layer/Service pair.
pub mod auth;
pub mod catch_panic;
pub mod deadline;
pub mod load_shed;
pub mod metrics;
pub mod rate_limit;
pub mod reset_guard;

pub use auth::AuthLayer;
pub use catch_panic::CatchPanicLayer;
pub use deadline::DeadlineLayer;
pub use load_shed::LoadShedLayer;
pub use metrics::MetricsLayer;
pub use rate_limit::RateLimitLayer;
pub use reset_guard::ResetGuardLayer;
