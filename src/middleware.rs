//! Cross-cutting request handling, one concern per file, each a tower Layer/Service pair.
pub mod auth;

pub use auth::AuthLayer;
