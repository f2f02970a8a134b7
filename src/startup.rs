//! [`Application`]: builds everything the server needs, binds its listener (port 0 works,
//! and the real address is exposed), and runs until a shutdown signal, then drains.
//!
//! The middleware stack itself is composed in one place, [`stack`]; background tasks are
//! owned by one [`supervisor::Supervisor`].
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::{codec::CompressionEncoding, server::NamedService};

mod cork;
mod readiness;
mod serve;
mod stack;
mod supervisor;

use readiness::Readiness;
use supervisor::Supervisor;

use crate::{
    client::{ClientConfig, ClientError, JisuClient},
    config::{ServiceKind, Settings},
    middleware::RateLimitLayer,
    pb::{
        self, file_service_server::FileServiceServer, order_service_server::OrderServiceServer,
        user_service_server::UserServiceServer,
    },
    security::{
        authz::{Policy, PolicyHandle},
        jwks,
        jwt::{KeyError, TokenVerifier, VerifierSettings},
        reload,
        tls::{self, ServerTlsFiles, SharedAcceptor, TlsError},
    },
    service::{
        FileApi, OrderApi, OrderEvents, UserApi, UserDirectory, files::FileLimits,
        streams::Shutdown,
    },
    store::{
        self, MemoryStore, PostgresStore, SqliteStore, Store, StoreError, TracedStore,
        postgres::PoolLimits,
    },
    telemetry::{debug as debug_endpoint, debug::DebugState, metrics::Metrics, metrics_endpoint},
    transport::tls_incoming,
};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Policy(#[from] crate::security::authz::PolicyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("invalid deployment: {0}")]
    Deployment(String),
    #[error("client of the users endpoint: {0}")]
    UsersClient(#[from] ClientError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A built server, bound but not yet serving.
pub struct Application {
    settings: Settings,
    listeners: Listeners,
    metrics: Metrics,
    credentials: Credentials,
    backends: Backends,
}

/// The bound sockets and their real addresses.
struct Listeners {
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    metrics: TcpListener,
    metrics_addr: SocketAddr,
    /// The debug pages' listener (unless `debug.enabled = false`).
    debug: Option<(TcpListener, SocketAddr)>,
}

/// Who may connect and call: TLS for new handshakes, the token verifier, the policy, and
/// what was loaded (so a reload only swaps what changed).
struct Credentials {
    acceptor: SharedAcceptor,
    /// The credential files as they were when loaded (see [`reload::Loaded`]).
    loaded: reload::Loaded,
    verifier: TokenVerifier,
    /// Digest of the JWK set fetched at start-up (with `auth.jwks_url`).
    jwks_digest: Option<[u8; 32]>,
    policy: PolicyHandle,
}

/// Where the services keep and find their data.
struct Backends {
    store: Arc<dyn Store>,
    users: UserDirectory,
    files: Option<FileApi>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("grpc_addr", &self.listeners.grpc_addr)
            .field("metrics_addr", &self.listeners.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Loads TLS material and keys, opens the store `database_url` names (SQLite in the
    /// data directory by default) and binds the gRPC listener.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let (backend, system) = open_store(&settings).await?;
        Self::build_with_store(settings, backend, system).await
    }

    /// As [`Application::build`], over the given storage backend (named `system` in
    /// the store spans).
    pub async fn build_with_store(
        settings: Settings,
        backend: Arc<dyn Store>,
        system: &'static str,
    ) -> Result<Self, StartupError> {
        settings.debug.check().map_err(StartupError::Deployment)?;
        let credentials = reload::Loaded::read(
            &settings.server_cert(),
            &settings.server_key(),
            &settings.client_ca(),
            &settings.crl(),
            &settings.jwt_keys_file(),
            settings.auth.policy.as_deref(),
        );
        let tls = tls::server_config(
            &ServerTlsFiles {
                cert: &settings.server_cert(),
                key: &settings.server_key(),
                client_ca: &settings.client_ca(),
                crl: Some(&settings.crl()),
            },
            settings.tls.allow_tls12,
        )?;
        let (keys, jwks_digest) = jwks::initial_keys(&settings).await?;
        let verifier = TokenVerifier::new(
            keys,
            &VerifierSettings {
                issuer: settings.auth.issuer.clone(),
                audience: settings.auth.audience.clone(),
                leeway: Duration::from_secs(settings.auth.leeway_secs),
                max_token_bytes: settings.auth.max_token_bytes,
                cache_capacity: settings.auth.cache_capacity,
            },
        );
        let metrics = Metrics::new();
        let policy = match &settings.auth.policy {
            Some(path) => {
                let policy = Policy::from_file(path, &metrics)?;
                tracing::info!(path = %path.display(), "authorization policy loaded");
                policy
            }
            None => Policy::builtin(&metrics),
        };
        let policy = PolicyHandle::new(policy);
        let store: Arc<dyn Store> =
            Arc::new(TracedStore::new(backend, system).with_metrics(&metrics));
        // Seeds only an empty store, atomically (replicas may start together).
        if settings.demo_data && settings.serves(ServiceKind::Users) {
            let n = store::load_demo_users(store.as_ref(), crate::service::now()).await?;
            if n > 0 {
                tracing::info!(users = n, "loaded demo data");
            }
        }
        let users = user_directory(&settings, &metrics)?;
        let files = if settings.serves(ServiceKind::Files) {
            let limits = FileLimits {
                max_bytes: settings.files.max_bytes,
                chunk_bytes: settings.files.chunk_bytes,
            };
            Some(FileApi::new(&settings.data_dir, limits).map_err(|source| {
                StartupError::DataDir {
                    path: settings.data_dir.clone(),
                    source,
                }
            })?)
        } else {
            None
        };
        reload::watch_expiries(
            &metrics,
            &settings.server_cert(),
            &settings.client_ca(),
            &settings.crl(),
        );
        let (listener, grpc_addr) = bind(settings.listen).await?;
        let (metrics_listener, metrics_addr) = bind(settings.metrics_listen).await?;
        let debug = if settings.debug.enabled {
            Some(bind(settings.debug.listen).await?)
        } else {
            None
        };
        Ok(Self {
            settings,
            listeners: Listeners {
                grpc: listener,
                grpc_addr,
                metrics: metrics_listener,
                metrics_addr,
                debug,
            },
            metrics,
            credentials: Credentials {
                acceptor: Arc::new(parking_lot::RwLock::new(TlsAcceptor::from(tls))),
                loaded: credentials,
                verifier,
                jwks_digest,
                policy,
            },
            backends: Backends {
                store,
                users,
                files,
            },
        })
    }

    /// The address the gRPC listener is bound to (the real port when 0 was asked for).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr
    }

    /// The address of the plain-HTTP `/metrics` listener.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.listeners.metrics_addr
    }

    /// The address of the debug pages' listener (`None` with `debug.enabled = false`).
    pub fn debug_addr(&self) -> Option<SocketAddr> {
        self.listeners.debug.as_ref().map(|(_, addr)| *addr)
    }

    /// The server's metrics (what `/metrics` renders).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Serves until `shutdown` completes, then marks health NOT_SERVING, stops accepting,
    /// and waits up to the grace period for in-flight calls. Every background task has
    /// ended when this returns, whether it returns `Ok` or an error.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let mut supervisor = Supervisor::new();
        let result = self.serve(shutdown, &mut supervisor).await;
        // /metrics stays up until here, so the last scrape sees the drained server.
        supervisor.shutdown().await;
        match &result {
            Ok(()) => tracing::info!("server stopped"),
            Err(e) => tracing::error!(error = %e, "server stopped with an error"),
        }
        result
    }

    async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        supervisor: &mut Supervisor,
    ) -> Result<(), StartupError> {
        let Self {
            settings,
            listeners:
                Listeners {
                    grpc: listener,
                    grpc_addr,
                    metrics: metrics_listener,
                    metrics_addr,
                    debug: debug_listener,
                },
            metrics,
            credentials:
                Credentials {
                    acceptor,
                    loaded: credentials,
                    verifier,
                    jwks_digest,
                    policy,
                },
            backends:
                Backends {
                    store,
                    users: user_directory,
                    files,
                },
        } = self;
        let limits = &settings.server;

        let serve_users = settings.serves(ServiceKind::Users);
        let serve_orders = settings.serves(ServiceKind::Orders);
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut store_services = Vec::new();
        if serve_users {
            store_services.push(<UserServiceServer<UserApi> as NamedService>::NAME);
        }
        if serve_orders {
            store_services.push(<OrderServiceServer<OrderApi> as NamedService>::NAME);
        }
        let mut other_services = Vec::new();
        if files.is_some() {
            other_services.push(<FileServiceServer<FileApi> as NamedService>::NAME);
        }
        // SERVING now; NOT_SERVING while the store does not answer, and from shutdown on.
        let readiness = Readiness::new(health, store_services, other_services).await;
        supervisor.adopt(readiness.spawn_probe(
            store.clone(),
            &metrics,
            Duration::from_secs(settings.tls.expiry_margin_secs),
        ));
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        // The generated servers share no trait for these settings, hence a macro: every
        // Jisu service accepts and (when asked) sends gzip/zstd, within the size limits.
        macro_rules! api_server {
            ($server:expr) => {
                $server
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd)
                    .send_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Zstd)
                    .max_decoding_message_size(limits.max_decoding_message_bytes)
                    .max_encoding_message_size(limits.max_encoding_message_bytes)
            };
        }
        // Open streams end with UNAVAILABLE as soon as shutdown starts.
        let streams = Shutdown::new();
        let users = serve_users.then(|| {
            api_server!(UserServiceServer::new(
                UserApi::new(store.clone()).with_shutdown(streams.clone())
            ))
        });
        let events = OrderEvents::new(metrics.order_watchers());
        // Changes written by other replicas sharing the database reach watchers here.
        if let Some(changes) = store.changes() {
            supervisor.spawn(events.clone().relay(store.clone(), changes));
        }
        let orders = serve_orders.then(|| {
            api_server!(OrderServiceServer::new(
                OrderApi::new(store, user_directory, events).with_shutdown(streams.clone())
            ))
        });
        let files = files
            .map(|api| api_server!(FileServiceServer::new(api.with_shutdown(streams.clone()))));

        // Credentials on disk are watched: new handshakes get a reloaded set.
        let reloader = reload::spawn(
            reload::Reloadable {
                cert: settings.server_cert(),
                key: settings.server_key(),
                client_ca: settings.client_ca(),
                crl: settings.crl(),
                jwt_public_key: settings.jwt_keys_file(),
                jwt_is_jwks: settings.auth.jwks.is_some(),
                allow_tls12: settings.tls.allow_tls12,
                acceptor: acceptor.clone(),
                verifier: verifier.clone(),
                policy: settings
                    .auth
                    .policy
                    .clone()
                    .map(|path| (path, policy.clone())),
                metrics: metrics.clone(),
            },
            credentials,
        )
        .map_err(|source| StartupError::DataDir {
            path: settings.certs.clone(),
            source,
        })?;
        supervisor.adopt(reloader);
        let incoming = tls_incoming(
            listener,
            acceptor,
            settings.handshake_timeout(),
            limits.max_concurrent_handshakes,
            metrics.clone(),
        );
        supervisor.adopt(metrics.spawn_upkeep());
        let rate_limit = RateLimitLayer::new(
            limits.rate_limit_per_second,
            limits.rate_limit_burst,
            metrics.clone(),
        );
        if let Some(task) = rate_limit.spawn_upkeep() {
            supervisor.adopt(task);
        }
        if let Some(url) = settings.auth.jwks_url.clone() {
            supervisor.adopt(jwks::spawn_refresh(
                url,
                verifier.clone(),
                metrics.clone(),
                (
                    Duration::from_secs(settings.auth.jwks_refresh_secs),
                    Duration::from_secs(settings.auth.jwks_min_refresh_secs),
                ),
                jwks_digest,
            ));
        }
        // Stops (gracefully) only when the supervisor does: after gRPC has drained.
        let serving = readiness.serving();
        let metrics_for_endpoint = metrics.clone();
        supervisor.spawn_graceful(move |stop| async move {
            let stopped = async move { stop.cancelled().await };
            if let Err(e) =
                metrics_endpoint::serve(metrics_listener, metrics_for_endpoint, serving, stopped)
                    .await
            {
                tracing::error!(error = %e, "the /metrics listener failed");
            }
        });
        let debug = DebugState::new(&settings.debug, &metrics);
        if let Some((listener, addr)) = debug_listener {
            let (state, allow_remote) = (debug.clone(), settings.debug.allow_remote);
            tracing::info!(%addr, "serving the debug pages (/debug/traces, /debug/rpcz)");
            supervisor.spawn_graceful(move |stop| async move {
                let stopped = async move { stop.cancelled().await };
                if let Err(e) = debug_endpoint::serve(listener, state, allow_remote, stopped).await
                {
                    tracing::error!(error = %e, "the debug listener failed");
                }
            });
        }
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = {
            let readiness = readiness.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: health NOT_SERVING, draining calls");
                readiness.stop().await;
                streams.trigger();
                let _ = stopping_tx.send(());
            }
        };

        let mut routes = tonic::service::RoutesBuilder::default();
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        if let Some(users) = users {
            routes.add_service(users);
        }
        if let Some(orders) = orders {
            routes.add_service(orders);
        }
        if let Some(files) = files {
            routes.add_service(files);
        }
        let layers = stack::Layers {
            metrics: metrics.clone(),
            verifier,
            policy,
            rate_limit,
            debug,
        };
        tracing::info!(%grpc_addr, %metrics_addr, "serving gRPC over mutual TLS, /metrics over HTTP");
        let server = stack::serve_grpc(&settings, layers, routes.routes(), incoming, signal);

        let grace = settings.shutdown_grace();
        tokio::select! {
            () = server => {}
            () = async {
                let _ = stopping_rx.await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!(?grace, "grace period over; closing remaining connections"),
        }
        Ok(())
    }
}

/// The storage backend the settings name.
async fn open_store(settings: &Settings) -> Result<(Arc<dyn Store>, &'static str), StartupError> {
    let sqlite = |path: std::path::PathBuf| async move {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StartupError::DataDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let store = SqliteStore::open(&path, settings.database_max_connections).await?;
        tracing::info!(path = %path.display(), "storage: SQLite (WAL, synchronous=FULL)");
        Ok::<(Arc<dyn Store>, &'static str), StartupError>((Arc::new(store), "sqlite"))
    };
    match settings.database_url.as_ref().map(|u| u.expose()) {
        None => sqlite(settings.data_dir.join("jisu.db")).await,
        Some("memory:") => {
            tracing::warn!("storage: in memory; everything is lost at exit");
            Ok((Arc::new(MemoryStore::new()), "memory"))
        }
        Some(url) if url.starts_with("sqlite://") => {
            sqlite(std::path::PathBuf::from(
                url.trim_start_matches("sqlite://"),
            ))
            .await
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let limits = PoolLimits {
                max_connections: settings.database_max_connections,
                acquire_timeout: Duration::from_millis(settings.database_acquire_timeout_ms),
            };
            let store = PostgresStore::connect(url, limits).await?;
            let shown = settings.database_url.as_ref().map(|u| u.redacted());
            tracing::info!(
                url = shown.as_deref().unwrap_or_default(),
                "storage: PostgreSQL"
            );
            Ok((Arc::new(store), "postgresql"))
        }
        Some(_) => Err(StartupError::Deployment(format!(
            "database_url {} is not supported: use postgres://user:password@host/db, \
             sqlite:///path/to/file.db or memory:",
            settings
                .database_url
                .as_ref()
                .map(|u| u.redacted())
                .unwrap_or_default()
        ))),
    }
}

/// Where OrderService finds users: this process, or the `users_endpoint` over mTLS with
/// the server's own certificate (connected lazily, so start-up order does not matter).
fn user_directory(settings: &Settings, metrics: &Metrics) -> Result<UserDirectory, StartupError> {
    if settings.serves(ServiceKind::Users) {
        if let Some(endpoint) = &settings.users_endpoint {
            tracing::warn!(%endpoint, "users_endpoint ignored: this process serves users itself");
        }
        return Ok(UserDirectory::Local);
    }
    if !settings.serves(ServiceKind::Orders) {
        return Ok(UserDirectory::Local);
    }
    let Some(endpoint) = &settings.users_endpoint else {
        return Err(StartupError::Deployment(
            "orders without users needs the UserService to check users with: set \
             --users-endpoint https://host:port (or JISU_USERS_ENDPOINT)"
                .into(),
        ));
    };
    // A comma-separated list balances over several UserService replicas.
    let mut endpoints = endpoint.split(',').map(str::trim).filter(|e| !e.is_empty());
    let mut config = ClientConfig::from_files(
        endpoints.next().unwrap_or_default(),
        &settings.client_ca(),
        &settings.server_cert(),
        &settings.server_key(),
    )?;
    config.more_endpoints = endpoints.map(str::to_owned).collect();
    config.timeout = Duration::from_secs(5);
    config.metrics = Some(metrics.client());
    tracing::info!(%endpoint, "orders check users with a remote UserService");
    Ok(UserDirectory::Remote(JisuClient::lazy(config)?))
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartupError> {
    let bind_err = |source| StartupError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}
