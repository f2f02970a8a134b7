//! Storage behind a trait. The services only see [`Store`]; the backend is chosen at
//! start-up: [`sqlite::SqliteStore`] in the data directory by default (durable),
//! [`postgres::PostgresStore`] for several replicas sharing one database, or
//! [`memory::MemoryStore`] (`database_url = "memory:"`, for tests and benchmarks).
use futures::stream::BoxStream;

use crate::pb::{Order, OrderItem, User};

pub mod memory;
pub mod postgres;
pub mod sql;
pub mod sqlite;
pub mod traced;

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use traced::TracedStore;

/// A change announced by another process sharing the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The status of this order changed.
    Order(String),
    /// Announcements may have been missed (the feed was down and is back): re-read
    /// whatever is being watched.
    Missed,
}

/// Connections of a backend's pool, for the pool gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub open: u32,
    pub idle: u32,
}

/// What a backend can refuse. The services map these to API errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no such user")]
    UserNotFound,
    #[error("no such order")]
    OrderNotFound,
    #[error("email already in use")]
    EmailTaken,
    #[error("the order is {from}")]
    IllegalTransition { from: String },
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// The fields of a new user, already validated.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub email: String,
    pub phone: String,
}

/// A partial update; `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub status: Option<String>,
}

/// A page of users and whether more follow.
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<User>,
    pub more: bool,
}

/// A new order, already validated; the store assigns the id.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub user_id: String,
    pub items: Vec<OrderItem>,
    pub total_amount: f64,
    /// Refuse the order when this store holds no such user. False when the users live
    /// in another service, which has checked the user already.
    pub check_user: bool,
    /// The same key from the same user returns the order it first created.
    pub idempotency_key: Option<String>,
}

/// Storage of users and orders. Implementations are safe to share between tasks; each
/// method is atomic with respect to the others.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user with the next id from a counter that never goes back.
    async fn create_user(&self, user: NewUser, now: i64) -> Result<User, StoreError>;
    async fn user(&self, id: &str) -> Result<User, StoreError>;
    async fn update_user(&self, id: &str, patch: UserPatch, now: i64) -> Result<User, StoreError>;
    async fn delete_user(&self, id: &str) -> Result<(), StoreError>;
    /// Users in ascending id order, strictly after `after` when given.
    async fn list_users(
        &self,
        after: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<UserPage, StoreError>;
    /// The users among `ids` that exist, in the order asked, each at most once.
    async fn users(&self, ids: &[String]) -> Result<Vec<User>, StoreError>;
    /// Places an order; with `check_user`, only for a user of this store (`UserNotFound`
    /// otherwise).
    async fn create_order(&self, order: NewOrder, now: i64) -> Result<Order, StoreError>;
    async fn order(&self, id: &str) -> Result<Order, StoreError>;
    /// Atomically moves order `id` to status `to` when its status is one of `from`
    /// (`IllegalTransition` otherwise); `cancel_reason` is stored with a cancellation.
    async fn transition_order(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        cancel_reason: Option<&str>,
        now: i64,
    ) -> Result<Order, StoreError>;
    /// Number of users, for start-up decisions such as demo data.
    async fn user_count(&self) -> Result<usize, StoreError>;
    /// Creates `users`, in order, only when the store holds no user — atomically, so any
    /// number of replicas seeding one database together create each user exactly once
    /// (ids 1, 2, … on a fresh database). Returns how many were created (0: not empty).
    /// The default suits a store only this process writes.
    async fn seed_users(&self, users: Vec<NewUser>, now: i64) -> Result<usize, StoreError> {
        if self.user_count().await? > 0 {
            return Ok(0);
        }
        let n = users.len();
        for user in users {
            self.create_user(user, now).await?;
        }
        Ok(n)
    }
    /// Checks that the backend answers (health). In-process backends always do.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The connection pool's state, for backends that have one.
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }
    /// Order changes written by *other* processes sharing this store (PostgreSQL
    /// LISTEN/NOTIFY). `None` when no other process can write to it: changes made here
    /// are published in-process by the services. Call once.
    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        None
    }
}

/// Parses the numeric part of a `USER0042`-style id; ids order by this number.
pub fn user_number(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("USER")?;
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Formats the id of user number `n`: `USER` + at least four digits.
pub fn user_id(n: u64) -> String {
    format!("USER{n:04}")
}

/// The origin document's 100 demo users (`USER0001`..`USER0100` on an empty store). A
/// user whose email exists already is skipped: replicas seeding one database at once
/// cannot fail each other's start-up.
pub async fn load_demo_users(store: &dyn Store, now: i64) -> Result<usize, StoreError> {
    let users = (1..=100u64)
        .map(|i| NewUser {
            name: format!("用户{i}"),
            email: format!("user{i}@jisu.com"),
            phone: format!("138{i:08}"),
        })
        .collect();
    store.seed_users(users, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_numbers_round_trip() {
        assert_eq!(user_id(42), "USER0042");
        assert_eq!(user_id(123456), "USER123456");
        assert_eq!(user_number("USER0042"), Some(42));
        assert_eq!(user_number("USER123456"), Some(123456));
        assert_eq!(user_number("USER42"), None);
        assert_eq!(user_number("ORD0042"), None);
        assert_eq!(user_number("USER00a1"), None);
    }
}
