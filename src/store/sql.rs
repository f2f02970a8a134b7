//! The one SQL implementation of [`Store`], for every SQL database Jisu speaks, over a
//! small [`Dialect`] seam (what differs: locking a row, serialising the demo seed, the
//! health probe, the pool's numbers and the change feed). Queries use `$N` placeholders,
//! which sqlx understands on SQLite and PostgreSQL alike, and read rows into
//! [`UserRow`]/[`OrderRow`], storage types of their own (`FromRow`).
//!
//! Everything two writers could race on is decided by the database: email uniqueness (a
//! UNIQUE column), user ids (an identity/autoincrement column), order transitions (one
//! conditional `UPDATE … WHERE status IN (…)`), CreateOrder idempotency keys (a primary
//! key, in the order's transaction; the loser of a race answers with the winner's order).
use futures::stream::BoxStream;
use sqlx::{Database, Executor, FromRow, IntoArguments, Pool};

use super::{
    Change, NewOrder, NewUser, PoolStats, Store, StoreError, UserPage, UserPatch, user_id,
    user_number,
};
use crate::pb::{Order, OrderItem, User};

const USER_COLUMNS: &str = "number, name, email, phone, status, created_at, updated_at";
const ORDER_COLUMNS: &str =
    "order_id, user_id, items, total_amount, status, cancel_reason, created_at, updated_at";

/// What differs between the SQL databases.
#[async_trait::async_trait]
pub trait Dialect: Send + Sync + 'static {
    type Db: Database;
    /// Appended to the `SELECT` that checks an order's user inside the order's
    /// transaction, so the user cannot be deleted before the order commits.
    const LOCK_FOR_KEY_SHARE: &'static str;
    /// Starts a transaction that will write: one that takes the write lock at once where
    /// the database would otherwise fail a lock upgrade between two writers (SQLite).
    const BEGIN_WRITE: &'static str;
    /// Run first in the demo seed's transaction so concurrent seeders wait for each other
    /// (`None`: the database serialises writers itself).
    const SEED_LOCK: Option<&'static str>;
    /// Checks the database answers, on a connection of its own.
    async fn ping(&self, pool: &Pool<Self::Db>) -> Result<(), StoreError>;
    /// Changes written by other processes (only where the database can announce them).
    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        None
    }
}

/// A user as stored.
#[derive(Debug, FromRow)]
pub struct UserRow {
    number: i64,
    name: String,
    email: String,
    phone: String,
    status: String,
    created_at: i64,
    updated_at: i64,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: user_id(r.number as u64),
            name: r.name,
            email: r.email,
            phone: r.phone,
            status: r.status,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// An order as stored: its items as JSON (an order is written once and read whole).
#[derive(Debug, FromRow)]
pub struct OrderRow {
    order_id: String,
    user_id: String,
    items: String,
    total_amount: f64,
    status: String,
    cancel_reason: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<OrderRow> for Order {
    type Error = StoreError;

    fn try_from(r: OrderRow) -> Result<Self, StoreError> {
        Ok(Order {
            items: items_from_json(&r.items)?,
            order_id: r.order_id,
            user_id: r.user_id,
            total_amount: r.total_amount,
            status: r.status,
            cancel_reason: r.cancel_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A single number (`COUNT(*)`, a `RETURNING` id) named `n`.
#[derive(Debug, FromRow)]
pub struct Count {
    n: i64,
}

/// A store over a pool of `D`'s database.
#[derive(Debug, Clone)]
pub struct SqlStore<D: Dialect> {
    pool: Pool<D::Db>,
    dialect: D,
}

/// Any driver failure is UNAVAILABLE to callers (retryable), never INTERNAL; the detail
/// stays in the server's log.
pub(super) fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A unique violation is the email being taken; anything else is the database failing.
fn email_conflict(err: sqlx::Error) -> StoreError {
    if is_unique_violation(&err) {
        StoreError::EmailTaken
    } else {
        unavailable(err)
    }
}

fn items_to_json(items: &[OrderItem]) -> Result<String, StoreError> {
    serde_json::to_string(items).map_err(|e| StoreError::Unavailable(e.to_string()))
}

fn items_from_json(json: &str) -> Result<Vec<OrderItem>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Unavailable(format!("stored items unreadable: {e}")))
}

/// A fresh random order id; the primary key catches the rare collision.
fn new_order_id() -> String {
    use rand::Rng as _;
    format!("ORD{:08X}", rand::rng().random::<u32>())
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<D: Dialect> SqlStore<D>
where
    // What the one implementation needs of a database driver, spelled out (Rust has no
    // trait aliases for bounds on associated types); the same list on both impl blocks.
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> i64: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> f64: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> &'q str: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> Option<String>: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'r> UserRow: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> OrderRow: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> Count: FromRow<'r, <D::Db as Database>::Row>,
{
    pub(super) fn new(pool: Pool<D::Db>, dialect: D) -> Self {
        Self { pool, dialect }
    }

    async fn user_by_number(&self, n: u64) -> Result<User, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE number = $1");
        sqlx::query_as::<D::Db, UserRow>(&sql)
            .bind(n as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(User::from)
            .ok_or(StoreError::UserNotFound)
    }

    async fn order_by_key(&self, user_id: &str, key: &str) -> Result<Option<Order>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = \
             (SELECT order_id FROM order_keys WHERE user_id = $1 AND key = $2)"
        );
        sqlx::query_as::<D::Db, OrderRow>(&sql)
            .bind(user_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(Order::try_from)
            .transpose()
    }

    /// Inserts the order (and its key) in one transaction. `Ok(None)`: another writer
    /// stored the same key first.
    async fn insert_order(&self, new: &NewOrder, now: i64) -> Result<Option<Order>, StoreError> {
        let mut tx = self
            .pool
            .begin_with(D::BEGIN_WRITE)
            .await
            .map_err(unavailable)?;
        if new.check_user {
            let n = user_number(&new.user_id).ok_or(StoreError::UserNotFound)?;
            let sql = format!(
                "SELECT number AS n FROM users WHERE number = $1{}",
                D::LOCK_FOR_KEY_SHARE
            );
            let found = sqlx::query_as::<D::Db, Count>(&sql)
                .bind(n as i64)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
            if found.is_none() {
                return Err(StoreError::UserNotFound);
            }
        }
        let items = items_to_json(&new.items)?;
        let sql = format!(
            "INSERT INTO orders (order_id, user_id, items, total_amount, status, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, 'PENDING', $5, $5) \
             ON CONFLICT (order_id) DO NOTHING RETURNING {ORDER_COLUMNS}"
        );
        let order = loop {
            let inserted = sqlx::query_as::<D::Db, OrderRow>(&sql)
                .bind(new_order_id())
                .bind(new.user_id.as_str())
                .bind(items.as_str())
                .bind(new.total_amount)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
            // No row: the random id was taken; draw another.
            if let Some(row) = inserted {
                break Order::try_from(row)?;
            }
        };
        if let Some(key) = &new.idempotency_key {
            let stored = sqlx::query::<D::Db>(
                "INSERT INTO order_keys (user_id, key, order_id) VALUES ($1, $2, $3)",
            )
            .bind(new.user_id.as_str())
            .bind(key.as_str())
            .bind(order.order_id.as_str())
            .execute(&mut *tx)
            .await;
            match stored {
                Ok(_) => {}
                // A concurrent call with this key won; this transaction rolls back.
                Err(e) if is_unique_violation(&e) => return Ok(None),
                Err(e) => return Err(unavailable(e)),
            }
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(order))
    }

    async fn order_by_id(&self, id: &str) -> Result<Order, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1");
        let row = sqlx::query_as::<D::Db, OrderRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::OrderNotFound)?;
        Order::try_from(row)
    }
}

#[async_trait::async_trait]
impl<D: Dialect> Store for SqlStore<D>
where
    // What the one implementation needs of a database driver, spelled out (Rust has no
    // trait aliases for bounds on associated types); the same list on both impl blocks.
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> i64: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> f64: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> String: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> &'q str: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> Option<String>: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
    for<'r> UserRow: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> OrderRow: FromRow<'r, <D::Db as Database>::Row>,
    for<'r> Count: FromRow<'r, <D::Db as Database>::Row>,
{
    async fn create_user(&self, user: NewUser, now: i64) -> Result<User, StoreError> {
        let sql = format!(
            "INSERT INTO users (name, email, email_key, phone, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'ACTIVE', $5, $5) RETURNING {USER_COLUMNS}"
        );
        let row = sqlx::query_as::<D::Db, UserRow>(&sql)
            .bind(user.name.as_str())
            .bind(user.email.as_str())
            .bind(user.email.to_lowercase())
            .bind(user.phone.as_str())
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(email_conflict)?;
        Ok(row.into())
    }

    async fn user(&self, id: &str) -> Result<User, StoreError> {
        let n = user_number(id).ok_or(StoreError::UserNotFound)?;
        self.user_by_number(n).await
    }

    async fn update_user(&self, id: &str, patch: UserPatch, now: i64) -> Result<User, StoreError> {
        let n = user_number(id).ok_or(StoreError::UserNotFound)?;
        let email_key = patch.email.as_ref().map(|e| e.to_lowercase());
        let sql = format!(
            "UPDATE users SET name = COALESCE($1, name), email = COALESCE($2, email), \
             email_key = COALESCE($3, email_key), phone = COALESCE($4, phone), \
             status = COALESCE($5, status), updated_at = $6 WHERE number = $7 \
             RETURNING {USER_COLUMNS}"
        );
        sqlx::query_as::<D::Db, UserRow>(&sql)
            .bind(patch.name)
            .bind(patch.email)
            .bind(email_key)
            .bind(patch.phone)
            .bind(patch.status)
            .bind(now)
            .bind(n as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(email_conflict)?
            .map(User::from)
            .ok_or(StoreError::UserNotFound)
    }

    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        let n = user_number(id).ok_or(StoreError::UserNotFound)?;
        let deleted = sqlx::query_as::<D::Db, Count>(
            "DELETE FROM users WHERE number = $1 RETURNING number AS n",
        )
        .bind(n as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        match deleted {
            Some(_) => Ok(()),
            None => Err(StoreError::UserNotFound),
        }
    }

    async fn list_users(
        &self,
        after: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<UserPage, StoreError> {
        let after = after.and_then(user_number).unwrap_or(0);
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE number > $1 \
             AND ($2 IS NULL OR status = $2) ORDER BY number LIMIT $3"
        );
        let rows = sqlx::query_as::<D::Db, UserRow>(&sql)
            .bind(after as i64)
            .bind(status)
            .bind(limit as i64 + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let more = rows.len() > limit;
        let users = rows.into_iter().take(limit).map(User::from).collect();
        Ok(UserPage { users, more })
    }

    async fn users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        // One round trip; the answer keeps the order asked, each user once.
        let mut numbers: Vec<i64> = Vec::new();
        for n in ids.iter().filter_map(|id| user_number(id)) {
            if !numbers.contains(&(n as i64)) {
                numbers.push(n as i64);
            }
        }
        if numbers.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE number IN ({})",
            placeholders(1, numbers.len())
        );
        let mut query = sqlx::query_as::<D::Db, UserRow>(&sql);
        for n in &numbers {
            query = query.bind(*n);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        let mut found: Vec<(usize, User)> = rows
            .into_iter()
            .map(|r| {
                let at = numbers.iter().position(|&m| m == r.number);
                (at.unwrap_or(usize::MAX), User::from(r))
            })
            .collect();
        found.sort_by_key(|(at, _)| *at);
        Ok(found.into_iter().map(|(_, u)| u).collect())
    }

    async fn create_order(&self, new: NewOrder, now: i64) -> Result<Order, StoreError> {
        if let Some(key) = &new.idempotency_key
            && let Some(first) = self.order_by_key(&new.user_id, key).await?
        {
            return Ok(first);
        }
        match self.insert_order(&new, now).await? {
            Some(order) => Ok(order),
            // Lost a race on the key: the winner's order is committed; return it.
            None => {
                let key = new.idempotency_key.as_deref().unwrap_or_default();
                self.order_by_key(&new.user_id, key)
                    .await?
                    .ok_or_else(|| StoreError::Unavailable("idempotency key race".into()))
            }
        }
    }

    async fn order(&self, id: &str) -> Result<Order, StoreError> {
        self.order_by_id(id).await
    }

    async fn transition_order(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        cancel_reason: Option<&str>,
        now: i64,
    ) -> Result<Order, StoreError> {
        // One conditional UPDATE: two writers racing on the same order cannot both win.
        let sql = format!(
            "UPDATE orders SET status = $1, updated_at = $2, \
             cancel_reason = COALESCE($3, cancel_reason) \
             WHERE order_id = $4 AND status IN ({}) RETURNING {ORDER_COLUMNS}",
            placeholders(5, from.len())
        );
        let mut update = sqlx::query_as::<D::Db, OrderRow>(&sql)
            .bind(to)
            .bind(now)
            .bind(cancel_reason)
            .bind(id);
        for state in from {
            update = update.bind(*state);
        }
        if let Some(row) = update
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
        {
            return Order::try_from(row);
        }
        // Nothing changed: say why.
        let current = self.order_by_id(id).await?;
        Err(StoreError::IllegalTransition {
            from: current.status,
        })
    }

    /// One transaction, serialised against other seeders by the dialect's lock: replicas
    /// starting together seed one after the other, and all but the first find users.
    async fn seed_users(&self, users: Vec<NewUser>, now: i64) -> Result<usize, StoreError> {
        let mut tx = self
            .pool
            .begin_with(D::BEGIN_WRITE)
            .await
            .map_err(unavailable)?;
        if let Some(lock) = D::SEED_LOCK {
            sqlx::query::<D::Db>(lock)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        let found = sqlx::query_as::<D::Db, Count>("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
        if found.n > 0 {
            return Ok(0);
        }
        let n = users.len();
        for user in users {
            sqlx::query::<D::Db>(
                "INSERT INTO users (name, email, email_key, phone, status, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, 'ACTIVE', $5, $5)",
            )
            .bind(user.name.as_str())
            .bind(user.email.as_str())
            .bind(user.email.to_lowercase())
            .bind(user.phone.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(email_conflict)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(n)
    }

    async fn user_count(&self) -> Result<usize, StoreError> {
        let found = sqlx::query_as::<D::Db, Count>("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(found.n as usize)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.dialect.ping(&self.pool).await
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        Some(PoolStats {
            open: self.pool.size(),
            idle: self.pool.num_idle() as u32,
        })
    }

    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        self.dialect.changes()
    }
}
