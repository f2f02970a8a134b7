//! A [`Store`] wrapper that records every storage operation in the call's buffer (it
//! becomes a child span of the call's SERVER span, `store get_user` with
//! `db.operation.name`, when the call is exported or kept), and its duration in
//! `jisu_store_operation_seconds{operation,system}`, whatever the backend.
use std::sync::Arc;

use jisu_client::children::{Child, ChildKind};

use super::{Change, NewOrder, NewUser, PoolStats, Store, StoreError, UserPage, UserPatch};
use crate::pb::{Order, User};

const OPERATIONS: [&str; 11] = [
    "create_user",
    "get_user",
    "update_user",
    "delete_user",
    "list_users",
    "batch_get_users",
    "create_order",
    "get_order",
    "transition_order",
    "count_users",
    "seed_users",
];

/// Wraps a backend; `system` names it in `db.system.name`.
pub struct TracedStore {
    inner: Arc<dyn Store>,
    system: &'static str,
    /// One histogram per operation, in [`OPERATIONS`] order (registered once).
    durations: Option<Vec<metrics::Histogram>>,
}

impl std::fmt::Debug for TracedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedStore")
            .field("system", &self.system)
            .finish_non_exhaustive()
    }
}

impl TracedStore {
    pub fn new(inner: Arc<dyn Store>, system: &'static str) -> Self {
        Self {
            inner,
            system,
            durations: None,
        }
    }

    /// Also records each operation's duration in `metrics`.
    pub fn with_metrics(mut self, metrics: &crate::telemetry::metrics::Metrics) -> Self {
        self.durations = Some(
            OPERATIONS
                .iter()
                .map(|op| {
                    metrics.histogram(
                        "jisu_store_operation_seconds",
                        &[("operation", op), ("system", self.system)],
                    )
                })
                .collect(),
        );
        self
    }

    fn observe(&self, op: &'static str, elapsed: std::time::Duration) {
        if let Some(d) = &self.durations
            && let Some(i) = OPERATIONS.iter().position(|o| *o == op)
        {
            d[i].record(elapsed.as_secs_f64());
        }
    }
}

/// Runs `fut`, times it, and records it in the call's buffer: it becomes a child span of
/// the call's SERVER span if the call is exported or kept (no span object per operation;
/// work outside any call is timed only).
async fn traced<T>(
    store: &TracedStore,
    op: &'static str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let result = fut.await;
    let took = started.elapsed();
    store.observe(op, took);
    let failed = matches!(&result, Err(StoreError::Unavailable(_)));
    jisu_client::children::record(|| Child {
        what: ChildKind::Store {
            system: store.system,
            operation: op,
            failed,
        },
        start: started,
        took,
    });
    result
}

#[async_trait::async_trait]
impl Store for TracedStore {
    async fn create_user(&self, user: NewUser, now: i64) -> Result<User, StoreError> {
        traced(self, "create_user", self.inner.create_user(user, now)).await
    }
    async fn user(&self, id: &str) -> Result<User, StoreError> {
        traced(self, "get_user", self.inner.user(id)).await
    }
    async fn update_user(&self, id: &str, patch: UserPatch, now: i64) -> Result<User, StoreError> {
        traced(self, "update_user", self.inner.update_user(id, patch, now)).await
    }
    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        traced(self, "delete_user", self.inner.delete_user(id)).await
    }
    async fn list_users(
        &self,
        after: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<UserPage, StoreError> {
        traced(
            self,
            "list_users",
            self.inner.list_users(after, status, limit),
        )
        .await
    }
    async fn users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        traced(self, "batch_get_users", self.inner.users(ids)).await
    }
    async fn create_order(&self, order: NewOrder, now: i64) -> Result<Order, StoreError> {
        traced(self, "create_order", self.inner.create_order(order, now)).await
    }
    async fn order(&self, id: &str) -> Result<Order, StoreError> {
        traced(self, "get_order", self.inner.order(id)).await
    }
    async fn transition_order(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        cancel_reason: Option<&str>,
        now: i64,
    ) -> Result<Order, StoreError> {
        traced(
            self,
            "transition_order",
            self.inner
                .transition_order(id, from, to, cancel_reason, now),
        )
        .await
    }
    async fn user_count(&self) -> Result<usize, StoreError> {
        traced(self, "count_users", self.inner.user_count()).await
    }

    async fn seed_users(&self, users: Vec<NewUser>, now: i64) -> Result<usize, StoreError> {
        traced(self, "seed_users", self.inner.seed_users(users, now)).await
    }

    // Health probes and the change feed are the server's own upkeep, not callers' work:
    // no spans, no durations.
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn pool_stats(&self) -> Option<PoolStats> {
        self.inner.pool_stats()
    }

    fn changes(&self) -> Option<futures::stream::BoxStream<'static, Change>> {
        self.inner.changes()
    }
}
