//! PostgreSQL, for several stateless Jisu replicas sharing one database. Queries are
//! checked at run time (building needs no database); migrations are embedded and applied
//! at start-up (sqlx takes an advisory lock, so replicas starting together apply them once).
//!
//! Everything two replicas could race on is decided by the database: email uniqueness
//! (a UNIQUE column), user ids (an identity column), order transitions (one conditional
//! `UPDATE … WHERE status IN (…)`), CreateOrder idempotency keys (a primary key, in the
//! order's transaction). Status changes are announced with NOTIFY by a trigger, so a
//! watcher on any replica hears of a change written through any other ([`Store::changes`]).
use std::{str::FromStr, time::Duration};

use futures::stream::BoxStream;
use sqlx::{
    Row,
    postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow},
};

use super::{
    Change, NewOrder, NewUser, PoolStats, Store, StoreError, UserPage, UserPatch,
    sql::{
        ORDER_COLUMNS, USER_COLUMNS, email_conflict, is_unique_violation, items_from_json,
        items_to_json, new_order_id, unavailable,
    },
    user_id, user_number,
};
use crate::pb::{Order, User};

/// The NOTIFY channel the `orders_announce_change` trigger writes to.
const CHANNEL: &str = "jisu_order_changes";

/// PostgreSQL storage. Cheap to share: a pool of connections.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// For the health probe and the change feed: connections of their own, so that a
    /// busy pool is not mistaken for a dead database, and upkeep never waits behind calls.
    options: PgConnectOptions,
}

/// Pool limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub max_connections: u32,
    /// How long a query waits for a connection (while the database is down: how long
    /// until the caller gets UNAVAILABLE).
    pub acquire_timeout: Duration,
}

fn user_row(row: &PgRow) -> User {
    User {
        id: user_id(row.get::<i64, _>("number") as u64),
        name: row.get("name"),
        email: row.get("email"),
        phone: row.get("phone"),
        status: row.get("status"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

fn order_row(row: &PgRow) -> Result<Order, StoreError> {
    Ok(Order {
        order_id: row.get("order_id"),
        user_id: row.get("user_id"),
        items: items_from_json(row.get::<&str, _>("items"))?,
        total_amount: row.get("total_amount"),
        status: row.get("status"),
        cancel_reason: row.get("cancel_reason"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`) and applies the embedded migrations. Fails when
    /// the database cannot be reached: a replica that starts without its database says so
    /// at once (an orchestrator restarts it) instead of serving errors.
    pub async fn connect(url: &str, limits: PoolLimits) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("database_url: {e}")))?
            .application_name("jisu");
        let pool = PgPoolOptions::new()
            .max_connections(limits.max_connections.max(1))
            .acquire_timeout(limits.acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
        Ok(Self { pool, options })
    }

    async fn user_by_number(&self, n: u64) -> Result<User, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE number = $1"
        ))
        .bind(n as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .map(|r| user_row(&r))
        .ok_or(StoreError::UserNotFound)
    }

    async fn order_by_key(&self, user_id: &str, key: &str) -> Result<Option<Order>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = \
             (SELECT order_id FROM order_keys WHERE user_id = $1 AND key = $2)"
        ))
        .bind(user_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .map(|row| order_row(&row))
        .transpose()
    }

    /// Inserts the order (and its key) in one transaction. `Ok(None)`: another replica
    /// stored the same key first.
    async fn insert_order(&self, new: &NewOrder, now: i64) -> Result<Option<Order>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if new.check_user {
            let n = user_number(&new.user_id).ok_or(StoreError::UserNotFound)?;
            // FOR KEY SHARE: the user cannot be deleted before this order commits.
            let exists = sqlx::query("SELECT 1 FROM users WHERE number = $1 FOR KEY SHARE")
                .bind(n as i64)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
            if exists.is_none() {
                return Err(StoreError::UserNotFound);
            }
        }
        let items = items_to_json(&new.items)?;
        let order = loop {
            let inserted = sqlx::query(&format!(
                "INSERT INTO orders (order_id, user_id, items, total_amount, status, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, 'PENDING', $5, $5) \
                 ON CONFLICT (order_id) DO NOTHING RETURNING {ORDER_COLUMNS}"
            ))
            .bind(new_order_id())
            .bind(&new.user_id)
            .bind(&items)
            .bind(new.total_amount)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            // No row: the random id was taken; draw another.
            if let Some(row) = inserted {
                break order_row(&row)?;
            }
        };
        if let Some(key) = &new.idempotency_key {
            let stored =
                sqlx::query("INSERT INTO order_keys (user_id, key, order_id) VALUES ($1, $2, $3)")
                    .bind(&new.user_id)
                    .bind(key)
                    .bind(&order.order_id)
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
}

/// The advisory lock demo seeding takes (an arbitrary constant: "JISUSEED").
const SEED_LOCK: i64 = 0x4A49_5355_5345_4544;

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn create_user(&self, user: NewUser, now: i64) -> Result<User, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO users (name, email, email_key, phone, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'ACTIVE', $5, $5) RETURNING {USER_COLUMNS}"
        ))
        .bind(&user.name)
        .bind(&user.email)
        .bind(user.email.to_lowercase())
        .bind(&user.phone)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(email_conflict)?;
        Ok(user_row(&row))
    }

    async fn user(&self, id: &str) -> Result<User, StoreError> {
        let n = user_number(id).ok_or(StoreError::UserNotFound)?;
        self.user_by_number(n).await
    }

    async fn update_user(&self, id: &str, patch: UserPatch, now: i64) -> Result<User, StoreError> {
        let n = user_number(id).ok_or(StoreError::UserNotFound)?;
        let email_key = patch.email.as_ref().map(|e| e.to_lowercase());
        let row = sqlx::query(&format!(
            "UPDATE users SET name = COALESCE($1, name), email = COALESCE($2, email), \
             email_key = COALESCE($3, email_key), phone = COALESCE($4, phone), \
             status = COALESCE($5, status), updated_at = $6 WHERE number = $7 \
             RETURNING {USER_COLUMNS}"
        ))
        .bind(patch.name)
        .bind(patch.email)
        .bind(email_key)
        .bind(patch.phone)
        .bind(patch.status)
        .bind(now)
        .bind(n as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(email_conflict)?;
        row.map(|r| user_row(&r)).ok_or(StoreError::UserNotFound)
    }

    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        let n = user_number(id).ok_or(StoreError::UserNotFound)?;
        let done = sqlx::query("DELETE FROM users WHERE number = $1")
            .bind(n as i64)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UserNotFound);
        }
        Ok(())
    }

    async fn list_users(
        &self,
        after: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<UserPage, StoreError> {
        let after = after.and_then(user_number).unwrap_or(0);
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE number > $1 \
             AND ($2::TEXT IS NULL OR status = $2) ORDER BY number LIMIT $3"
        ))
        .bind(after as i64)
        .bind(status)
        .bind(limit as i64 + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let more = rows.len() > limit;
        let users = rows.iter().take(limit).map(user_row).collect();
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
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE number = ANY($1)"
        ))
        .bind(&numbers)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut found: Vec<User> = rows.iter().map(user_row).collect();
        found.sort_by_key(|u| {
            let n = user_number(&u.id).unwrap_or_default() as i64;
            numbers.iter().position(|&m| m == n)
        });
        Ok(found)
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
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::OrderNotFound)?;
        order_row(&row)
    }

    async fn transition_order(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        cancel_reason: Option<&str>,
        now: i64,
    ) -> Result<Order, StoreError> {
        // One conditional UPDATE: two replicas racing on the same order cannot both win.
        let from: Vec<&str> = from.to_vec();
        let updated = sqlx::query(&format!(
            "UPDATE orders SET status = $1, updated_at = $2, \
             cancel_reason = COALESCE($3, cancel_reason) \
             WHERE order_id = $4 AND status = ANY($5) RETURNING {ORDER_COLUMNS}"
        ))
        .bind(to)
        .bind(now)
        .bind(cancel_reason)
        .bind(id)
        .bind(&from)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if let Some(row) = updated {
            return order_row(&row);
        }
        // Nothing changed: say why.
        let current = self.order(id).await?;
        Err(StoreError::IllegalTransition {
            from: current.status,
        })
    }

    /// One transaction under a transaction-scoped advisory lock: replicas starting together
    /// seed one after the other, and all but the first find the table filled.
    async fn seed_users(&self, users: Vec<NewUser>, now: i64) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SEED_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let row = sqlx::query("SELECT EXISTS (SELECT 1 FROM users) AS seeded")
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
        if row.get::<bool, _>("seeded") {
            return Ok(0);
        }
        let n = users.len();
        for user in users {
            sqlx::query(
                "INSERT INTO users (name, email, email_key, phone, status, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, 'ACTIVE', $5, $5)",
            )
            .bind(&user.name)
            .bind(&user.email)
            .bind(user.email.to_lowercase())
            .bind(&user.phone)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(email_conflict)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(n)
    }

    async fn user_count(&self) -> Result<usize, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(row.get::<i64, _>("n") as usize)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect_with(&self.options)
            .await
            .map_err(unavailable)?;
        let answer = sqlx::query("SELECT 1").execute(&mut conn).await;
        conn.close().await.ok();
        answer.map(drop).map_err(unavailable)
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        Some(PoolStats {
            open: self.pool.size(),
            idle: self.pool.num_idle() as u32,
        })
    }

    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        Some(Box::pin(ChangeFeed::new(self.options.clone()).stream()))
    }
}

/// LISTEN on [`CHANNEL`] over a connection of its own, reconnecting with backoff for as
/// long as the feed is consumed. After any gap it yields [`Change::Missed`] once.
struct ChangeFeed {
    options: PgConnectOptions,
    listener: Option<PgListener>,
    missed: bool,
    backoff: Duration,
}

impl ChangeFeed {
    fn new(options: PgConnectOptions) -> Self {
        Self {
            options,
            listener: None,
            missed: false,
            backoff: Duration::from_millis(100),
        }
    }

    fn stream(self) -> impl futures::Stream<Item = Change> + Send + 'static {
        futures::stream::unfold(self, |mut feed| async move {
            let change = feed.next().await;
            Some((change, feed))
        })
    }

    async fn next(&mut self) -> Change {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                match self.listen().await {
                    Ok(listener) => {
                        self.listener = Some(listener);
                        self.backoff = Duration::from_millis(100);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?self.backoff, "order change feed: cannot LISTEN");
                        self.missed = true;
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            };
            if self.missed {
                self.missed = false;
                tracing::info!("order change feed: listening again; watched orders re-read");
                return Change::Missed;
            }
            match listener.try_recv().await {
                Ok(Some(note)) => return Change::Order(note.payload().to_owned()),
                // The connection dropped and was re-established (LISTEN again).
                Ok(None) => self.missed = true,
                Err(e) => {
                    tracing::warn!(error = %e, "order change feed: connection lost");
                    self.listener = None;
                    self.missed = true;
                }
            }
        }
    }

    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        // A pool of one connection of its own, never shared with calls.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(self.options.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("listening", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}
