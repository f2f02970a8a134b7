//! PostgreSQL, for several stateless Jisu replicas sharing one database: the
//! [`Dialect`] of the one SQL store ([`super::sql`]). Migrations are embedded and applied
//! at start-up (sqlx takes an advisory lock, so replicas starting together apply them
//! once). Status changes are announced with NOTIFY by a trigger, so a watcher on any
//! replica hears of a change written through any other ([`Store::changes`]).
use std::{str::FromStr, time::Duration};

use futures::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, Postgres};

#[cfg(doc)]
use super::Store;
use super::{
    Change, StoreError,
    sql::{Dialect, SqlStore, unavailable},
};

/// The NOTIFY channel the `orders_announce_change` trigger writes to.
const CHANNEL: &str = "jisu_order_changes";

/// PostgreSQL storage. Cheap to share: a pool of connections.
pub type PostgresStore = SqlStore<Pg>;

/// PostgreSQL's side of the seam.
#[derive(Debug, Clone)]
pub struct Pg {
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

/// The advisory lock demo seeding takes (an arbitrary constant: "JISUSEED").
const SEED_LOCK: &str = "SELECT pg_advisory_xact_lock(5353079968040536389)";

#[async_trait::async_trait]
impl Dialect for Pg {
    type Db = Postgres;
    const LOCK_FOR_KEY_SHARE: &'static str = " FOR KEY SHARE";
    const BEGIN_WRITE: &'static str = "BEGIN";
    const SEED_LOCK: Option<&'static str> = Some(SEED_LOCK);

    async fn ping(&self, _pool: &PgPool) -> Result<(), StoreError> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect_with(&self.options)
            .await
            .map_err(unavailable)?;
        let answer = sqlx::query("SELECT 1").execute(&mut conn).await;
        conn.close().await.ok();
        answer.map(drop).map_err(unavailable)
    }

    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        Some(Box::pin(ChangeFeed::new(self.options.clone()).stream()))
    }
}

impl SqlStore<Pg> {
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
        Ok(Self::new(pool, Pg { options }))
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
