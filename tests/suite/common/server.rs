//! [`TestServer`]: a real `Application` on port 0 over real mTLS, with certificates and
//! tokens minted by the project's own code in a temp dir, and typed calls for tests.
use std::{path::Path, sync::Arc, time::Duration};

use jisu::{
    client::{ClientConfig, ClientError, JisuClient},
    config::Settings,
    pb,
    security::{certs, jwt::TokenIssuer},
    startup::Application,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::Status;

use super::{ALL_SCOPES, eventually, postgres, reloads, scrape};

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub certs: tempfile::TempDir,
    pub issuer: TokenIssuer,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), jisu::startup::StartupError>>>,
    /// The SQLite file's directory, removed with the server.
    _data: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server; `configure` may change the settings first. The backend is SQLite
    /// in a temporary file (the default backend of `jisu serve`), or the in-memory store
    /// when `JISU_TEST_STORE=memory`, or a fresh database on PostgreSQL when
    /// `JISU_TEST_STORE=postgres`. Every backend keeps the same contract
    /// (`store_contract.rs`), so the test command runs this suite once, on SQLite.
    pub async fn start_with(configure: impl FnOnce(&mut Settings)) -> Self {
        let mut data = None;
        let store: Arc<dyn jisu::store::Store> = match std::env::var("JISU_TEST_STORE").as_deref() {
            Ok("postgres") => {
                let admin = std::env::var("JISU_TEST_DATABASE_URL")
                    .expect("JISU_TEST_STORE=postgres needs JISU_TEST_DATABASE_URL");
                let url = postgres::create_database(&admin).await;
                let limits = jisu::store::postgres::PoolLimits {
                    max_connections: 4,
                    acquire_timeout: Duration::from_secs(2),
                };
                Arc::new(
                    jisu::store::PostgresStore::connect(&url, limits)
                        .await
                        .expect("open postgres"),
                )
            }
            Ok("memory") => Arc::new(jisu::store::MemoryStore::new()),
            Ok("sqlite") | Err(_) => {
                let dir = tempfile::tempdir().expect("temp dir");
                let store = jisu::store::SqliteStore::open(&dir.path().join("test.db"), 4)
                    .await
                    .expect("open sqlite");
                data = Some(dir);
                Arc::new(store)
            }
            Ok(other) => panic!("JISU_TEST_STORE={other}: expected sqlite, memory or postgres"),
        };
        let mut server = Self::start_with_store(configure, store).await;
        server._data = data;
        server
    }

    /// Starts a server over the given storage backend.
    pub async fn start_with_store(
        configure: impl FnOnce(&mut Settings),
        store: Arc<dyn jisu::store::Store>,
    ) -> Self {
        Self::start_inner(None, configure, store).await
    }

    /// Starts a server with a copy of the certificates in `source` (the test keeps the
    /// originals, e.g. extra signing keys), on the in-memory store.
    pub async fn start_with_certs(source: &Path, configure: impl FnOnce(&mut Settings)) -> Self {
        let store = Arc::new(jisu::store::MemoryStore::new());
        Self::start_inner(Some(source), configure, store).await
    }

    async fn start_inner(
        source: Option<&Path>,
        configure: impl FnOnce(&mut Settings),
        store: Arc<dyn jisu::store::Store>,
    ) -> Self {
        let certs = tempfile::tempdir().expect("temp dir");
        match source {
            Some(source) => {
                for entry in std::fs::read_dir(source).expect("certs dir") {
                    let entry = entry.unwrap();
                    if entry.file_type().unwrap().is_file() {
                        std::fs::copy(entry.path(), certs.path().join(entry.file_name()))
                            .expect("copy certs");
                    }
                }
            }
            None => certs::init(certs.path(), &[], false).expect("mint certificates"),
        }
        let mut settings = Settings::for_certs(certs.path());
        configure(&mut settings);
        let app = Application::build_with_store(settings, store, "test")
            .await
            .expect("build application");
        let addr = app.grpc_addr();
        let metrics_addr = app.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let issuer = TokenIssuer::from_file(&certs.path().join("jwt.key"), "jisu", "jisucloud")
            .expect("jwt key");
        Self {
            addr,
            metrics_addr,
            certs,
            issuer,
            stop: Some(stop),
            task: Some(task),
            _data: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn dir(&self) -> &Path {
        self.certs.path()
    }

    pub fn token(&self, scopes: &str) -> String {
        self.token_for("tester", scopes)
    }

    /// A token for subject `sub` (a user id makes it an end user's token).
    pub fn token_for(&self, sub: &str, scopes: &str) -> String {
        self.issuer.issue(sub, scopes, Duration::from_secs(300))
    }

    /// A client presenting the default `client` certificate and a token with `scopes`.
    pub async fn client(&self, scopes: &str) -> JisuClient {
        self.client_with_token(Some(self.token(scopes))).await
    }

    pub async fn client_with_token(&self, token: Option<String>) -> JisuClient {
        let mut config = ClientConfig::from_certs_dir(&self.endpoint(), self.dir(), "client")
            .expect("client config");
        config.token = token;
        JisuClient::connect(config).await.expect("connect")
    }

    /// Connects with an arbitrary certificate/key pair (PEM) and full scopes.
    pub async fn connect_with_pem(&self, cert: &str, key: &str) -> Result<JisuClient, ClientError> {
        let mut config = ClientConfig::from_certs_dir(&self.endpoint(), self.dir(), "client")
            .expect("client config");
        config.cert_pem = cert.as_bytes().to_vec();
        config.key_pem = key.as_bytes().to_vec();
        config.token = Some(self.token(ALL_SCOPES));
        JisuClient::connect(config).await
    }

    /// Scrapes `/metrics` over real HTTP.
    pub async fn scrape(&self) -> String {
        scrape(self.metrics_addr).await
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }
}

impl TestServer {
    /// Waits (bounded) until the server has counted `n` reloads of `kind` with `result`.
    pub async fn wait_for_reload(&self, kind: &str, result: &str, n: f64) {
        let what = format!("{n} {kind} reload(s) with result {result}");
        eventually(&what, Duration::from_secs(10), async || {
            reloads(&self.scrape().await, kind, result) >= n
        })
        .await;
    }
}

/// Typed calls, so tests say what they do instead of building request literals.
pub trait Calls {
    async fn get_user(&self, id: &str) -> Result<pb::User, Status>;
    async fn create_user(&self, name: &str, email: &str) -> Result<pb::User, Status>;
}

impl Calls for JisuClient {
    async fn get_user(&self, id: &str) -> Result<pb::User, Status> {
        self.users()
            .get_user(pb::GetUserRequest { user_id: id.into() })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn create_user(&self, name: &str, email: &str) -> Result<pb::User, Status> {
        self.users()
            .create_user(pb::CreateUserRequest {
                name: name.into(),
                email: email.into(),
                phone: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}
