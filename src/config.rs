//! Typed settings, layered: defaults ← TOML file ← `JISU_*` environment ← command-line flags.
//!
//! The environment is passed in (never read here), so tests need no `set_var`. Nested keys
//! use `__` in variable names: `JISU_AUTH__LEEWAY_SECS=10` sets `auth.leeway_secs`.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
    value::Value,
};
use serde::{Deserialize, Serialize};

/// The CRL's file name in the certificates directory (`jisu certs revoke` writes it).
pub const CRL_FILE: &str = "crl.pem";

/// Everything the server needs to start. Holds paths, never key material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// gRPC listen address (TLS only).
    pub listen: SocketAddr,
    /// Plain-HTTP listener for Prometheus `/metrics`.
    pub metrics_listen: SocketAddr,
    /// Directory of `ca.pem`, `server.pem`, `server.key`, `jwt.pub`, ...
    pub certs: PathBuf,
    /// Load the origin document's 100 demo users into an empty store.
    pub demo_data: bool,
    /// The API services this process serves: `["users", "orders", "files"]` (default), or
    /// some of them for a split deployment. A list, or a comma-separated string in `JISU_SERVICES`.
    #[serde(deserialize_with = "services_list")]
    pub services: Vec<ServiceKind>,
    /// `https://host:port` of the UserService that OrderService checks users with, when
    /// this process does not serve users itself (comma-separated for several replicas). It is called with the server's own
    /// certificate (`tls.cert`/`tls.key`) and the caller's token.
    pub users_endpoint: Option<String>,
    /// Where data lives: the embedded database `jisu.db`, uploaded files under `files/`
    /// and `uploads/`.
    pub data_dir: PathBuf,
    /// Storage backend: unset = SQLite at `<data_dir>/jisu.db` (durable, no set-up);
    /// `sqlite:///path/to/file.db`; `postgres://user:password@host/db` (several replicas
    /// sharing one database); `memory:` (forgets everything at exit: tests and
    /// benchmarks only). Its password is never printed.
    pub database_url: Option<DatabaseUrl>,
    /// Most connections the storage pool opens.
    pub database_max_connections: u32,
    /// How long a call waits for a database connection before it fails with UNAVAILABLE
    /// (what callers see while the database is unreachable).
    pub database_acquire_timeout_ms: u64,
    pub files: FileSettings,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    pub server: ServerSettings,
    pub log: LogSettings,
    pub tracing: TracingSettings,
    pub debug: DebugSettings,
}

/// A database URL. Debug and Display hide its password, so settings can be logged.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The whole URL, password included: for the database driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.clone();
        };
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                let hidden = if userinfo.contains(':') { ":***" } else { "" };
                format!("{scheme}://{user}{hidden}@{host}{tail}")
            }
            None => url.clone(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// One of the API services a process can serve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Users,
    Orders,
    Files,
}

impl ServiceKind {
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Users => "users",
            ServiceKind::Orders => "orders",
            ServiceKind::Files => "files",
        }
    }
}

/// Accepts `["users", "orders"]` or `"users,orders"`.
fn services_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ServiceKind>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<ServiceKind>),
        Text(String),
    }
    let list = match Raw::deserialize(d)? {
        Raw::List(list) => list,
        Raw::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| match t {
                "users" => Ok(ServiceKind::Users),
                "orders" => Ok(ServiceKind::Orders),
                "files" => Ok(ServiceKind::Files),
                other => Err(serde::de::Error::custom(format!(
                    "unknown service {other:?}: expected users, orders, files"
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    if list.is_empty() {
        return Err(serde::de::Error::custom(
            "services: name at least one of users, orders, files",
        ));
    }
    Ok(list)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileSettings {
    /// Largest file accepted (RESOURCE_EXHAUSTED above).
    pub max_bytes: u64,
    /// Largest upload chunk accepted and the download chunk size (under the message limit).
    pub chunk_bytes: usize,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            max_bytes: 4 << 30,
            chunk_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Server certificate chain (default `<certs>/server.pem`).
    pub cert: Option<PathBuf>,
    /// Server private key (default `<certs>/server.key`).
    pub key: Option<PathBuf>,
    /// CA bundle client certificates must chain to (default `<certs>/ca.pem`).
    pub client_ca: Option<PathBuf>,
    /// Revoked client certificates, PEM CRLs (default `<certs>/crl.pem`, used once it
    /// exists: `jisu certs revoke` writes it). Watched like the certificates.
    pub crl: Option<PathBuf>,
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    pub allow_tls12: bool,
    /// Time a new connection has to finish its handshake.
    pub handshake_timeout_ms: u64,
    /// Health turns NOT_SERVING this long before the server certificate expires (so
    /// balancers move away from a replica whose rotation failed, before clients fail).
    pub expiry_margin_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// ES256 public key tokens are verified with (default `<certs>/jwt.pub`).
    pub public_key: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Tokens larger than this are refused before decoding.
    pub max_token_bytes: usize,
    /// Verified tokens kept to skip repeated signature checks.
    pub cache_capacity: u64,
    /// A JWK set file (RFC 7517; keys picked by the token's `kid`) to verify tokens with
    /// instead of `public_key`: several keys at once, so signing keys rotate without
    /// downtime. Watched and reloaded like the certificates.
    pub jwks: Option<PathBuf>,
    /// A JWK set URL (https), fetched at start-up and every `jwks_refresh_secs`, and
    /// sooner when a token names an unknown `kid` — but never more often than every
    /// `jwks_min_refresh_secs`, so unknown kids cannot make the server refetch per call.
    pub jwks_url: Option<String>,
    pub jwks_refresh_secs: u64,
    pub jwks_min_refresh_secs: u64,
    /// Authorization policy file (TOML; watched and reloaded like the certificates).
    /// Unset: the built-in policy, each method allowed to tokens with its scope.
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// HTTP/2 streams one connection may have open.
    pub max_concurrent_streams: u32,
    /// Calls handled at once, all connections together; more are refused at once with
    /// RESOURCE_EXHAUSTED (health checks excepted).
    pub max_concurrent_calls: usize,
    /// TLS handshakes in progress at once; connections past it are closed at once
    /// (`jisu_tls_handshakes_refused_total{reason="too_many_handshakes"}`).
    pub max_concurrent_handshakes: usize,
    /// Calls per second one caller (certificate identity + token subject) may make; 0 = no
    /// limit.
    pub rate_limit_per_second: u32,
    /// Calls a quiet caller may make at once above the rate.
    pub rate_limit_burst: u32,
    /// Longest a unary call may run, whatever deadline its caller sent (or none).
    pub max_call_duration_ms: u64,
    /// Connections are closed gracefully after this age (clients reconnect and rebalance).
    pub max_connection_age_secs: u64,
    /// Largest decoded request message.
    pub max_decoding_message_bytes: usize,
    /// Largest encoded response message.
    pub max_encoding_message_bytes: usize,
    /// How long shutdown waits for in-flight calls.
    pub shutdown_grace_ms: u64,
}

/// The debug pages (`/debug/traces`, `/debug/rpcz` and their JSON, what `jisu trace`
/// reads) and the in-memory store of recent kept traces behind them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DebugSettings {
    /// Serve the debug pages at all. The trace store is kept either way (it is what
    /// makes a failed call's trace id useful); this only turns the listener off.
    pub enabled: bool,
    /// Their plain-HTTP listener. They show user ids, client identities, error messages
    /// and per-method traffic, so it must be a loopback address unless `allow_remote`.
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` (behind your own access control: the pages have
    /// none of their own).
    pub allow_remote: bool,
    /// Failed and slow calls kept in memory (the newest; oldest dropped first).
    pub kept_traces: usize,
    /// Other calls kept as a sample, in a ring of their own so they never push
    /// failures out.
    pub sampled_traces: usize,
    /// Share of successful calls sampled into memory, decided by trace id (so every
    /// process of a call chain keeps the same ones).
    pub sample_ratio: f64,
}

impl Default for DebugSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9469".parse().expect("valid address"),
            allow_remote: false,
            kept_traces: 1000,
            sampled_traces: 200,
            sample_ratio: 0.01,
        }
    }
}

impl DebugSettings {
    /// Refuses a listener that would show the pages to the network by accident.
    pub fn check(&self) -> Result<(), String> {
        if self.enabled && !self.listen.ip().is_loopback() && !self.allow_remote {
            return Err(format!(
                "debug.listen {} is not a loopback address: the debug pages show user ids, \
                 client identities and traffic; use 127.0.0.1, set debug.enabled = false, or \
                 set debug.allow_remote = true behind your own access control",
                self.listen
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "debug.sample_ratio {} is not between 0 and 1",
                self.sample_ratio
            ));
        }
        Ok(())
    }
}

/// Which calls are exported even when head sampling dropped them (with a collector
/// configured): errors and slow calls, so the trace id an error carries always leads to
/// its trace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSettings {
    /// Final codes whose calls are always exported (go-grpc-prometheus labels, e.g.
    /// `Internal`, `Unavailable`). Default: every code but `OK`, `NotFound` and
    /// `Canceled` (a miss and a caller's own cancel are not failures to diagnose).
    pub keep_codes: Vec<String>,
    /// Calls taking at least this long are always exported; 0 turns it off. Default
    /// 1000 ms: far above a healthy call (well under 10 ms here) yet under any deadline
    /// worth setting, so only genuinely slow calls are kept.
    pub slow_call_ms: u64,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            keep_codes: crate::api::CODES
                .iter()
                .map(|(_, label)| *label)
                .filter(|label| !matches!(*label, "OK" | "NotFound" | "Canceled"))
                .map(str::to_owned)
                .collect(),
            slow_call_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    pub filter: String,
    pub format: LogFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:50051".parse().expect("valid address"),
            metrics_listen: "0.0.0.0:9464".parse().expect("valid address"),
            certs: PathBuf::from("certs"),
            demo_data: false,
            services: vec![ServiceKind::Users, ServiceKind::Orders, ServiceKind::Files],
            data_dir: PathBuf::from("data"),
            database_url: None,
            database_max_connections: 8,
            database_acquire_timeout_ms: 2000,
            files: FileSettings::default(),
            users_endpoint: None,
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            server: ServerSettings::default(),
            log: LogSettings::default(),
            tracing: TracingSettings::default(),
            debug: DebugSettings::default(),
        }
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            crl: None,
            allow_tls12: false,
            handshake_timeout_ms: 10_000,
            expiry_margin_secs: 600,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            public_key: None,
            issuer: "jisu".into(),
            audience: "jisucloud".into(),
            leeway_secs: 30,
            max_token_bytes: 8 * 1024,
            cache_capacity: 10_000,
            policy: None,
            jwks: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_min_refresh_secs: 30,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            max_concurrent_calls: 1000,
            max_concurrent_handshakes: 256,
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            max_call_duration_ms: 30_000,
            max_connection_age_secs: 3600,
            max_decoding_message_bytes: 4 * 1024 * 1024,
            max_encoding_message_bytes: 4 * 1024 * 1024,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Pretty,
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

const TOP_LEVEL_KEYS: [&str; 17] = [
    "data_dir",
    "database_url",
    "database_max_connections",
    "database_acquire_timeout_ms",
    "files",
    "listen",
    "metrics_listen",
    "certs",
    "demo_data",
    "services",
    "users_endpoint",
    "tls",
    "auth",
    "server",
    "log",
    "tracing",
    "debug",
];

/// The sources of one configuration, highest precedence last.
#[derive(Debug, Default)]
pub struct Sources {
    /// A TOML file; a missing file is an error.
    pub file: Option<PathBuf>,
    /// Environment variables (only `JISU_*` are read).
    pub env: Vec<(String, String)>,
    /// Values from flags, as dotted keys (`tls.allow_tls12`).
    pub overrides: Vec<(String, Value)>,
}

impl Settings {
    /// Merges the sources over the defaults.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = &sources.file {
            if !file.is_file() {
                return Err(ConfigError(Box::new(figment::Error::from(format!(
                    "config file {} not found",
                    file.display()
                )))));
            }
            figment = figment.merge(Toml::file(file));
        }
        for (name, raw) in &sources.env {
            let Some(key) = name.strip_prefix("JISU_") else {
                continue;
            };
            let key = key.to_ascii_lowercase().replace("__", ".");
            // Other JISU_* variables (JISU_TOKEN, the client's) are not server settings.
            let top = key.split('.').next().unwrap_or_default();
            if !TOP_LEVEL_KEYS.contains(&top) {
                continue;
            }
            let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            figment = figment.merge(Serialized::global(&key, value));
        }
        for (key, value) in &sources.overrides {
            figment = figment.merge(Serialized::global(key, value.clone()));
        }
        figment.extract().map_err(|e| ConfigError(Box::new(e)))
    }

    fn in_certs(&self, explicit: &Option<PathBuf>, file: &str) -> PathBuf {
        explicit.clone().unwrap_or_else(|| self.certs.join(file))
    }

    pub fn server_cert(&self) -> PathBuf {
        self.in_certs(&self.tls.cert, "server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.in_certs(&self.tls.key, "server.key")
    }
    pub fn client_ca(&self) -> PathBuf {
        self.in_certs(&self.tls.client_ca, "ca.pem")
    }
    pub fn crl(&self) -> PathBuf {
        self.in_certs(&self.tls.crl, CRL_FILE)
    }
    /// The file tokens are verified with: the JWK set when `auth.jwks` is set, else the
    /// PEM public key.
    pub fn jwt_keys_file(&self) -> PathBuf {
        self.auth
            .jwks
            .clone()
            .unwrap_or_else(|| self.jwt_public_key())
    }
    pub fn jwt_public_key(&self) -> PathBuf {
        self.in_certs(&self.auth.public_key, "jwt.pub")
    }
    pub fn serves(&self, service: ServiceKind) -> bool {
        self.services.contains(&service)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls.handshake_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_grace_ms)
    }

    /// Settings for a test or embedded server: `127.0.0.1:0`, certificates from `certs`.
    pub fn for_certs(certs: &Path) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            metrics_listen: "127.0.0.1:0".parse().expect("valid address"),
            certs: certs.to_owned(),
            data_dir: certs.join("data"),
            debug: DebugSettings {
                listen: "127.0.0.1:0".parse().expect("valid address"),
                ..DebugSettings::default()
            },
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_never_printed() {
        let url =
            DatabaseUrl::new("postgres://jisu:s3cr%40t@db.internal:5432/jisu?sslmode=require");
        assert_eq!(
            url.redacted(),
            "postgres://jisu:***@db.internal:5432/jisu?sslmode=require"
        );
        let settings = Settings {
            database_url: Some(url),
            ..Settings::default()
        };
        assert!(!format!("{settings:?}").contains("s3cr"));
        let plain = DatabaseUrl::new("postgres://jisu@localhost/jisu");
        assert_eq!(plain.redacted(), "postgres://jisu@localhost/jisu");
        assert_eq!(DatabaseUrl::new("memory:").redacted(), "memory:");
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jisu.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\ndemo_data = true\n[auth]\nleeway_secs = 5\nissuer = \"file\"\n",
        )
        .unwrap();
        let sources = Sources {
            file: Some(file),
            env: vec![
                ("JISU_AUTH__LEEWAY_SECS".into(), "7".into()),
                ("JISU_LISTEN".into(), "127.0.0.1:7001".into()),
                ("JISU_TOKEN".into(), "secret".into()),
                ("PATH".into(), "/bin".into()),
            ],
            overrides: vec![("listen".into(), Value::from("127.0.0.1:7002"))],
        };
        let s = Settings::load(&sources).unwrap();
        assert_eq!(s.listen.port(), 7002);
        assert_eq!(s.auth.leeway_secs, 7);
        assert_eq!(s.auth.issuer, "file");
        assert!(s.demo_data);
        assert_eq!(s.auth.audience, "jisucloud");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let bad_key = Sources {
            env: vec![("JISU_AUTH__LEWAY".into(), "x".into())],
            ..Default::default()
        };
        assert!(Settings::load(&bad_key).is_err());
        let bad_value = Sources {
            env: vec![("JISU_LISTEN".into(), "not-an-address".into())],
            ..Default::default()
        };
        assert!(Settings::load(&bad_value).is_err());
        let bad_service = Sources {
            env: vec![("JISU_SERVICES".into(), "users,payments".into())],
            ..Default::default()
        };
        let err = Settings::load(&bad_service).unwrap_err().to_string();
        assert!(err.contains("payments"), "{err}");
    }

    #[test]
    fn services_from_env_text_or_flag_list() {
        let s = Settings::load(&Sources {
            env: vec![("JISU_SERVICES".into(), "orders".into())],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.services, vec![ServiceKind::Orders]);
        assert!(!s.serves(ServiceKind::Users));
        let s = Settings::load(&Sources::default()).unwrap();
        assert!(s.serves(ServiceKind::Users) && s.serves(ServiceKind::Orders));
    }
}
