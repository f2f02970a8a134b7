//! PostgreSQL for tests: a throwaway cluster of the test's own (`scripts/pg-cluster`:
//! initdb + pg_ctl on a loopback port in a temp dir), or a fresh database on the server
//! `JISU_TEST_DATABASE_URL` names (the test command starts one cluster for the suite).
use std::{path::PathBuf, process::Command};

use sqlx::Connection as _;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster")
}

/// A cluster this test owns; stopped and deleted on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    /// `postgres://jisu@127.0.0.1:PORT/postgres`.
    pub url: String,
}

impl PgCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Self {
            dir,
            url: String::new(),
        };
        cluster.url = cluster.run("start");
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("pg")
    }

    fn run(&self, cmd: &str) -> String {
        let out = Command::new(script())
            .arg(cmd)
            .arg(self.data())
            .output()
            .expect("run scripts/pg-cluster");
        assert!(
            out.status.success(),
            "pg-cluster {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Stops the server (open connections are cut).
    pub fn stop(&self) {
        self.run("stop");
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        self.run("start");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.data()).output();
    }
}

/// Creates an empty database on the server at `admin_url`; returns its URL.
pub async fn create_database(admin_url: &str) -> String {
    let name = format!("jisu_test_{:016x}", rand::random::<u64>());
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    admin.close().await.ok();
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("JISU_TEST_DATABASE_URL ends with /database");
    format!("{base}/{name}")
}

/// A fresh database for a test: on `JISU_TEST_DATABASE_URL` when set, otherwise on a
/// cluster of the test's own (returned, to keep it alive).
pub async fn fresh_database() -> (String, Option<PgCluster>) {
    match std::env::var("JISU_TEST_DATABASE_URL") {
        Ok(admin) => (create_database(&admin).await, None),
        Err(_) => {
            let cluster = PgCluster::start();
            (create_database(&cluster.url).await, Some(cluster))
        }
    }
}
