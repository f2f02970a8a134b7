//! What the SQL backends share: column lists, error mapping, the stored form of items.
use crate::pb::OrderItem;

use super::StoreError;

pub(super) const USER_COLUMNS: &str = "number, name, email, phone, status, created_at, updated_at";
pub(super) const ORDER_COLUMNS: &str =
    "order_id, user_id, items, total_amount, status, cancel_reason, created_at, updated_at";

/// Any driver failure is UNAVAILABLE to callers (retryable), never INTERNAL; the detail
/// stays in the server's log.
pub(super) fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A unique violation is the email being taken; anything else is the database failing.
pub(super) fn email_conflict(err: sqlx::Error) -> StoreError {
    if is_unique_violation(&err) {
        StoreError::EmailTaken
    } else {
        unavailable(err)
    }
}

pub(super) fn items_to_json(items: &[OrderItem]) -> Result<String, StoreError> {
    serde_json::to_string(items).map_err(|e| StoreError::Unavailable(e.to_string()))
}

pub(super) fn items_from_json(json: &str) -> Result<Vec<OrderItem>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Unavailable(format!("stored items unreadable: {e}")))
}

/// A fresh random order id; the primary key catches the rare collision.
pub(super) fn new_order_id() -> String {
    use rand::Rng as _;
    format!("ORD{:08X}", rand::rng().random::<u32>())
}
