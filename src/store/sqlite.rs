//! The embedded default backend: SQLite in the data directory, through sqlx with queries
//! checked at run time (building needs no database). WAL journal and `synchronous=FULL`:
//! a write is acknowledged only once it is durable, so it survives a crash of the process
//! or the machine. Schema migrations are embedded in the binary and applied at start-up.
//!
//! Uniqueness (email), the id counter (AUTOINCREMENT: never reused) and order state
//! transitions (conditional UPDATE) are enforced by the database itself.
use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    Row,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
        SqliteSynchronous,
    },
};

use super::{
    NewOrder, NewUser, Store, StoreError, UserPage, UserPatch,
    sql::{
        ORDER_COLUMNS, USER_COLUMNS, email_conflict, is_unique_violation, items_from_json,
        items_to_json, new_order_id, unavailable,
    },
    user_id, user_number,
};
use crate::pb::{Order, User};

/// SQLite storage. Cheap to share: a pool of connections.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn user_row(row: &SqliteRow) -> User {
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

fn order_row(row: &SqliteRow) -> Result<Order, StoreError> {
    let items = items_from_json(row.get::<&str, _>("items"))?;
    Ok(Order {
        order_id: row.get("order_id"),
        user_id: row.get("user_id"),
        items,
        total_amount: row.get("total_amount"),
        status: row.get("status"),
        cancel_reason: row.get("cancel_reason"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

impl SqliteStore {
    /// Opens (creating when missing) `path`, and applies the embedded migrations.
    pub async fn open(path: &Path, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(unavailable)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
        Ok(Self { pool })
    }

    async fn user_by_number(&self, n: u64) -> Result<User, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE number = ?"
        ))
        .bind(n as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .map(|r| user_row(&r))
        .ok_or(StoreError::UserNotFound)
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: NewUser, now: i64) -> Result<User, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO users (name, email, email_key, phone, status, created_at, updated_at) \
             VALUES (?, ?, ?, ?, 'ACTIVE', ?, ?) RETURNING {USER_COLUMNS}"
        ))
        .bind(&user.name)
        .bind(&user.email)
        .bind(user.email.to_lowercase())
        .bind(&user.phone)
        .bind(now)
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
            "UPDATE users SET name = COALESCE(?, name), email = COALESCE(?, email), \
             email_key = COALESCE(?, email_key), phone = COALESCE(?, phone), \
             status = COALESCE(?, status), updated_at = ? WHERE number = ? \
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
        let done = sqlx::query("DELETE FROM users WHERE number = ?")
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
            "SELECT {USER_COLUMNS} FROM users WHERE number > ? AND (? IS NULL OR status = ?) \
             ORDER BY number LIMIT ?"
        ))
        .bind(after as i64)
        .bind(status)
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
        let mut seen = std::collections::HashSet::new();
        let mut found = Vec::new();
        for id in ids {
            let Some(n) = user_number(id) else { continue };
            if !seen.insert(n) {
                continue;
            }
            match self.user_by_number(n).await {
                Ok(u) => found.push(u),
                Err(StoreError::UserNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    async fn create_order(&self, new: NewOrder, now: i64) -> Result<Order, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if let Some(key) = &new.idempotency_key {
            let first = sqlx::query(&format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = \
                 (SELECT order_id FROM order_keys WHERE user_id = ? AND key = ?)"
            ))
            .bind(&new.user_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            if let Some(row) = first {
                return order_row(&row);
            }
        }
        if new.check_user {
            let n = user_number(&new.user_id).ok_or(StoreError::UserNotFound)?;
            let exists = sqlx::query("SELECT 1 FROM users WHERE number = ?")
                .bind(n as i64)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
            if exists.is_none() {
                return Err(StoreError::UserNotFound);
            }
        }
        let items = items_to_json(&new.items)?;
        let row = loop {
            let order_id = new_order_id();
            let inserted = sqlx::query(&format!(
                "INSERT INTO orders (order_id, user_id, items, total_amount, status, created_at, \
                 updated_at) VALUES (?, ?, ?, ?, 'PENDING', ?, ?) RETURNING {ORDER_COLUMNS}"
            ))
            .bind(&order_id)
            .bind(&new.user_id)
            .bind(&items)
            .bind(new.total_amount)
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await;
            match inserted {
                Ok(row) => break row,
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(unavailable(e)),
            }
        };
        let order = order_row(&row)?;
        if let Some(key) = &new.idempotency_key {
            sqlx::query("INSERT INTO order_keys (user_id, key, order_id) VALUES (?, ?, ?)")
                .bind(&new.user_id)
                .bind(key)
                .bind(&order.order_id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(order)
    }

    async fn order(&self, id: &str) -> Result<Order, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ?"
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
        // One conditional UPDATE: two writers racing on the same order cannot both win.
        let placeholders = vec!["?"; from.len()].join(", ");
        let sql = format!(
            "UPDATE orders SET status = ?, updated_at = ?, \
             cancel_reason = COALESCE(?, cancel_reason) \
             WHERE order_id = ? AND status IN ({placeholders}) RETURNING {ORDER_COLUMNS}"
        );
        let mut update = sqlx::query(&sql)
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
            return order_row(&row);
        }
        // Nothing changed: say why.
        let current = self.order(id).await?;
        Err(StoreError::IllegalTransition {
            from: current.status,
        })
    }

    async fn user_count(&self) -> Result<usize, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(row.get::<i64, _>("n") as usize)
    }
}
