//! The business rules of each proto service. Knows nothing of TLS, tokens or the CLI.
pub mod files;
pub mod order_events;
pub mod orders;
pub mod ownership;
pub mod streams;
pub mod user_directory;
pub mod users;
pub mod validate;

pub use files::FileApi;
pub use order_events::OrderEvents;
pub use orders::OrderApi;
pub use user_directory::UserDirectory;
pub use users::UserApi;

use crate::{error::Error, store::StoreError};

/// Seconds since the Unix epoch, as the API's timestamps are.
pub fn now() -> i64 {
    crate::security::jwt::unix_now() as i64
}

/// Maps a storage refusal to the API error a caller sees.
fn store_error(err: StoreError, id: &str) -> Error {
    match err {
        StoreError::UserNotFound => Error::NotFound {
            reason: "USER_NOT_FOUND",
            message: format!("user {id:?} not found"),
        },
        StoreError::OrderNotFound => Error::NotFound {
            reason: "ORDER_NOT_FOUND",
            message: format!("order {id:?} not found"),
        },
        StoreError::EmailTaken => Error::AlreadyExists {
            reason: "EMAIL_TAKEN",
            message: "a user with this email already exists".into(),
        },
        StoreError::IllegalTransition { from } => Error::FailedPrecondition {
            reason: "ILLEGAL_TRANSITION",
            message: format!("order {id:?} is {from}: that change is not allowed from there"),
        },
        StoreError::Unavailable(detail) => Error::Unavailable(detail),
    }
}
