//! Test harness: a real `Application` on port 0 over real mTLS, with certificates and
//! tokens minted by the project's own code in a temp dir.
#![allow(dead_code)]

use std::{path::Path, sync::Arc, time::Duration};

use jisu::{
    client::{ClientConfig, ClientError, JisuClient},
    config::Settings,
    security::{certs, jwt::TokenIssuer},
    startup::Application,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub mod postgres;
pub mod tls_probe;

pub const ALL_SCOPES: &str =
    "users:read users:write orders:read orders:write files:read files:write";

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

/// `jisu_credential_reload_total{kind,result}` in a scrape (0 when not counted yet).
pub fn reloads(text: &str, kind: &str, result: &str) -> f64 {
    samples(text)
        .iter()
        .filter(|s| {
            s.name == "jisu_credential_reload_total"
                && s.labels.get("kind").map(String::as_str) == Some(kind)
                && s.labels.get("result").map(String::as_str) == Some(result)
        })
        .map(|s| s.value)
        .sum()
}

/// Polls `check` every 20 ms until it holds; fails the test after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// Asserts that the server refuses this client certificate in the TLS handshake with
/// exactly `alert` (not "some error": a wrongly accepted certificate must fail the test).
pub async fn assert_refused(
    server: &TestServer,
    cert: &str,
    key: &str,
    alert: rustls::AlertDescription,
) {
    let got =
        tls_probe::handshake_alert(server.addr, &server.dir().join("ca.pem"), Some((cert, key)))
            .await;
    assert_eq!(got, Ok(alert), "the server's answer to this certificate");
}

/// Asserts the code and the `ErrorInfo.reason` of a refusal.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "status: {status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some(reason),
        "status: {status:?}"
    );
    assert_eq!(
        details.error_info().map(|i| i.domain.as_str()),
        Some("jisucloud.v1")
    );
    status
}

/// The fields named by a status's BadRequest violations.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// `GET /metrics` with a plain HTTP/1.1 request; returns the body.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let (head, body) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// A plain HTTP/1.1 GET; returns the head and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    (head.to_owned(), body.to_owned())
}

/// One sample of the exposition: name, sorted labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let labels = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), Default::default()),
            };
            Sample {
                name,
                labels,
                value: value.parse().unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`.
#[track_caller]
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(matching.len(), 1, "{name} {labels:?}: {matching:?}");
    matching[0].value
}

pub const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// A third-party tool from the venv `scripts/test` installs (`.venv`), or from `env`.
/// Missing, it fails the test: it never skips.
#[allow(dead_code)]
pub fn tool(env: &str, venv_bin: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(MANIFEST).join(".venv/bin").join(venv_bin));
    assert!(
        path.exists(),
        "{} not found: run scripts/test (it installs the interop tools) or set {env}",
        path.display()
    );
    path
}

/// A `jisu serve` process, killed on drop.
pub struct Served {
    child: std::process::Child,
    pub addr: String,
    pub metrics_addr: String,
    _dir: tempfile::TempDir,
    pub certs: std::path::PathBuf,
    /// Its log lines (stderr), when captured.
    pub logs: Option<std::sync::mpsc::Receiver<String>>,
}

impl Served {
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SIGKILL: the process dies without a word.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client with the `client` certificate and a token for `scopes`.
    pub async fn client(&self, scopes: &str) -> JisuClient {
        let token = TokenIssuer::from_file(&self.certs.join("jwt.key"), "jisu", "jisucloud")
            .unwrap()
            .issue("tester", scopes, Duration::from_secs(300));
        let config = ClientConfig::from_certs_dir(&self.endpoint(), &self.certs, "client")
            .unwrap()
            .with_token(token);
        JisuClient::connect(config).await.unwrap()
    }

    /// Waits (bounded) for a log line containing `needle`.
    #[track_caller]
    pub fn log_line(&self, needle: &str) -> String {
        let logs = self.logs.as_ref().expect("logs captured");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match logs.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start the real binary.
#[derive(Default)]
pub struct Binary<'a> {
    env: Vec<(&'a str, String)>,
    args: Vec<String>,
    certs: Option<std::path::PathBuf>,
    logs: bool,
    listen: Option<String>,
    data_dir: Option<std::path::PathBuf>,
}

impl<'a> Binary<'a> {
    pub fn env(mut self, key: &'a str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
    pub fn args<const N: usize>(mut self, args: [&str; N]) -> Self {
        self.args.extend(args.map(String::from));
        self
    }
    /// Use this (existing) certs dir instead of letting `serve` create one.
    pub fn certs(mut self, dir: &std::path::Path) -> Self {
        self.certs = Some(dir.to_owned());
        self
    }
    /// Listen on this address instead of port 0 (to restart a replica where it was).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_owned());
        self
    }
    /// Keep data here (to restart a replica on the same database).
    pub fn data_dir(mut self, dir: &std::path::Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }
    /// Capture stderr (the logs) line by line.
    pub fn logs(mut self) -> Self {
        self.logs = true;
        self
    }

    /// Starts `jisu serve` on port 0 (gRPC and metrics); returns once it prints its
    /// "serving" line.
    pub fn start(self) -> Served {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let certs = self
            .certs
            .clone()
            .unwrap_or_else(|| dir.path().join("certs"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jisu"))
            .args(["serve", "--metrics-listen", "127.0.0.1:0", "--listen"])
            .arg(self.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .args(["--demo-data", "--init-certs", "--certs"])
            .arg(&certs)
            .arg("--data-dir")
            .arg(
                self.data_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("data")),
            )
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::piped())
            .stderr(if self.logs {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .spawn()
            .unwrap();
        let logs = child.stderr.take().map(|stderr| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                // Bytes, not `lines()`: one line that is not UTF-8 must not stop the
                // reader (the server would then block on a full pipe).
                let mut reader = std::io::BufReader::new(stderr);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            rx
        });
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut metrics_addr = String::new();
        let addr = loop {
            let line = lines
                .next()
                .expect("jisu serve exited before serving")
                .unwrap();
            if let Some(m) = line.strip_prefix("jisu: serving metrics on http://") {
                metrics_addr = m.trim_end_matches("/metrics").to_owned();
            }
            if let Some(addr) = line.strip_prefix("jisu: serving gRPC on ") {
                break addr.to_owned();
            }
        };
        Served {
            child,
            addr,
            metrics_addr,
            _dir: dir,
            certs,
            logs,
        }
    }
}

/// Starts the real binary with a certs dir that does not exist yet, so `serve` creates the
/// development certificates itself.
pub fn serve_binary(env: &[(&str, &str)]) -> Served {
    env.iter()
        .fold(Binary::default(), |b, (k, v)| b.env(k, *v))
        .start()
}

/// A MemoryStore whose `user()` misbehaves on purpose: panics for one id, or answers
/// "unavailable" for every id.
#[allow(dead_code)]
pub struct FaultyStore {
    inner: jisu::store::MemoryStore,
    panic_on: Option<&'static str>,
    unavailable: bool,
}

#[allow(dead_code)]
impl FaultyStore {
    pub fn panic_on(id: &'static str) -> Self {
        Self {
            inner: jisu::store::MemoryStore::new(),
            panic_on: Some(id),
            unavailable: false,
        }
    }
    pub fn unavailable() -> Self {
        Self {
            inner: jisu::store::MemoryStore::new(),
            panic_on: None,
            unavailable: true,
        }
    }
}

mod faulty {
    use jisu::{
        pb::{Order, User},
        store::{NewOrder, NewUser, Store, StoreError, UserPage, UserPatch},
    };

    #[tonic::async_trait]
    impl Store for super::FaultyStore {
        async fn create_user(&self, user: NewUser, now: i64) -> Result<User, StoreError> {
            self.inner.create_user(user, now).await
        }
        async fn user(&self, id: &str) -> Result<User, StoreError> {
            if self.panic_on == Some(id) {
                panic!("simulated bug reading {id}");
            }
            if self.unavailable {
                return Err(StoreError::Unavailable("simulated outage".into()));
            }
            self.inner.user(id).await
        }
        async fn update_user(
            &self,
            id: &str,
            patch: UserPatch,
            now: i64,
        ) -> Result<User, StoreError> {
            self.inner.update_user(id, patch, now).await
        }
        async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
            self.inner.delete_user(id).await
        }
        async fn list_users(
            &self,
            after: Option<&str>,
            status: Option<&str>,
            limit: usize,
        ) -> Result<UserPage, StoreError> {
            self.inner.list_users(after, status, limit).await
        }
        async fn users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
            self.inner.users(ids).await
        }
        async fn create_order(&self, order: NewOrder, now: i64) -> Result<Order, StoreError> {
            self.inner.create_order(order, now).await
        }
        async fn order(&self, id: &str) -> Result<Order, StoreError> {
            if self.panic_on == Some(id) {
                panic!("simulated bug reading {id}");
            }
            self.inner.order(id).await
        }
        async fn transition_order(
            &self,
            id: &str,
            from: &[&str],
            to: &str,
            cancel_reason: Option<&str>,
            now: i64,
        ) -> Result<Order, StoreError> {
            self.inner
                .transition_order(id, from, to, cancel_reason, now)
                .await
        }
        async fn user_count(&self) -> Result<usize, StoreError> {
            self.inner.user_count().await
        }
        async fn seed_users(&self, users: Vec<NewUser>, now: i64) -> Result<usize, StoreError> {
            self.inner.seed_users(users, now).await
        }
    }
}
