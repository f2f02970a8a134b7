//! The embedded default backend: SQLite in the data directory, the [`Dialect`] of the
//! one SQL store ([`super::sql`]). WAL journal and `synchronous=FULL`: a write is
//! acknowledged only once it is durable, so it survives a crash of the process or the
//! machine. Schema migrations are embedded in the binary and applied at start-up.
//! Uniqueness (email), the id counter (AUTOINCREMENT: never reused) and order state
//! transitions (conditional UPDATE) are enforced by the database itself.
use std::{path::Path, str::FromStr, time::Duration};

use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use super::{
    StoreError,
    sql::{Dialect, SqlStore, unavailable},
};

/// SQLite storage. Cheap to share: a pool of connections.
pub type SqliteStore = SqlStore<Lite>;

/// SQLite's side of the seam.
#[derive(Debug, Clone, Copy)]
pub struct Lite;

#[async_trait::async_trait]
impl Dialect for Lite {
    type Db = Sqlite;
    /// A transaction that writes holds the database's one write lock: nothing to add.
    const LOCK_FOR_KEY_SHARE: &'static str = "";
    /// The write lock at once: two deferred transactions that read, then write, would
    /// deadlock on the upgrade and one would fail with SQLITE_BUSY.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    /// `BEGIN IMMEDIATE` serialises writers, seeders included, across processes too.
    const SEED_LOCK: Option<&'static str> = None;

    /// An in-process database answers while the process runs.
    async fn ping(&self, _pool: &SqlitePool) -> Result<(), StoreError> {
        Ok(())
    }
}

impl SqlStore<Lite> {
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
        Ok(Self::new(pool, Lite))
    }
}
