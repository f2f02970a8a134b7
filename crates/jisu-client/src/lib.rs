//! `jisu-client`: the typed Jisu client other Rust services depend on — an mTLS channel,
//! a bearer token on every call, a default deadline, balancing over replicas, circuit
//! breakers and safe retries ([`resilience`]), and a CLIENT span per call whose W3C context
//! goes out in the headers, plus the `grpc_client_*` metrics when given a recorder
//! ([`metrics::ClientMetrics`]). Used by `jisu call`, by OrderService to reach a remote
//! UserService, and by the tests. It depends on `jisu-api`, not on the server.
#![forbid(unsafe_code)]
use std::{path::Path, time::Duration};

pub mod call;
pub mod children;
pub mod files;
pub mod metrics;
pub mod resilience;
pub mod telemetry;

pub use resilience::{Resilience, Resilient};

use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use jisu_api::pb::{
    order_service_client::OrderServiceClient, user_service_client::UserServiceClient,
};

use crate::{
    metrics::ClientMetrics,
    telemetry::{ClientTelemetry, ClientTelemetryLayer, ServerAddress},
};

/// Errors while setting up a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: expected https://host:port")]
    Endpoint(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the token is not a valid header value")]
    Token,
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
}

/// Where and how to connect.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host:port`.
    pub endpoint: String,
    /// More replicas of the same service: calls are balanced over all of them.
    pub more_endpoints: Vec<String>,
    /// Balancing, health, circuit breaking and retries.
    pub resilience: Resilience,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The bearer token sent on every call, when set.
    pub token: Option<String>,
    /// Deadline of calls that do not set their own.
    pub timeout: Duration,
    /// Name to verify the server certificate against (default: the endpoint's host).
    pub server_name: Option<String>,
    /// Where `grpc_client_*` series go (none: no client metrics).
    pub metrics: Option<ClientMetrics>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl ClientConfig {
    /// Trusts `<dir>/ca.pem` and presents `<dir>/<name>.pem` / `<name>.key`.
    pub fn from_certs_dir(endpoint: &str, dir: &Path, name: &str) -> Result<Self, ClientError> {
        Self::from_files(
            endpoint,
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
    }

    /// Trusts the CA bundle `ca` and presents `cert` / `key`.
    pub fn from_files(
        endpoint: &str,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            endpoint: endpoint.to_owned(),
            more_endpoints: Vec::new(),
            resilience: Resilience::default(),
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            token: None,
            timeout: Duration::from_secs(10),
            server_name: None,
            metrics: None,
        })
    }

    /// Every endpoint, the first one first.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.endpoint.as_str())
            .chain(self.more_endpoints.iter().map(String::as_str))
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// Adds the bearer token and the default deadline to every call.
#[derive(Debug, Clone)]
pub struct CallCredentials {
    authorization: Option<AsciiMetadataValue>,
    timeout: Duration,
}

impl Interceptor for CallCredentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert(jisu_api::AUTHORIZATION, value.clone());
        }
        if !request.metadata().contains_key(jisu_api::GRPC_TIMEOUT) {
            request.set_timeout(self.timeout);
        }
        Ok(request)
    }
}

/// A connected client.
#[derive(Debug, Clone)]
pub struct JisuClient {
    channel: Traced,
    credentials: CallCredentials,
}

/// The balanced, guarded transport with the client's spans and metrics.
pub type Traced = ClientTelemetry<Resilient>;
/// What the generated clients run on: token and deadline, then telemetry, then the channel.
pub type Authed = InterceptedService<Traced, CallCredentials>;

impl JisuClient {
    /// Connects (TLS handshake included) to every endpoint; fails when none accepts us.
    /// Replicas that are down now are connected later, when they come back.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let mut channels = Vec::new();
        let mut first_error = None;
        let mut peer = None;
        for endpoint in config.endpoints() {
            let (built, p) = Self::endpoint(&config, endpoint)?;
            peer.get_or_insert(p);
            match built.connect().await {
                Ok(channel) => channels.push((endpoint.to_owned(), channel)),
                Err(e) => {
                    first_error.get_or_insert(ClientError::Connect {
                        endpoint: endpoint.to_owned(),
                        detail: error_chain(&e),
                    });
                    channels.push((endpoint.to_owned(), built.connect_lazy()));
                }
            }
        }
        if let Some(err) = first_error
            && channels.len() == 1
        {
            return Err(err);
        }
        Self::over(channels, peer.unwrap_or_default(), &config)
    }

    /// A client that connects on first use (and reconnects after failures): for a server
    /// calling another service that may start later.
    pub fn lazy(config: ClientConfig) -> Result<Self, ClientError> {
        let mut channels = Vec::new();
        let mut peer = None;
        for endpoint in config.endpoints() {
            let (built, p) = Self::endpoint(&config, endpoint)?;
            peer.get_or_insert(p);
            channels.push((endpoint.to_owned(), built.connect_lazy()));
        }
        Self::over(channels, peer.unwrap_or_default(), &config)
    }

    fn endpoint(
        config: &ClientConfig,
        address: &str,
    ) -> Result<(Endpoint, ServerAddress), ClientError> {
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|_| ClientError::Endpoint(address.to_owned()))?;
        let host = endpoint
            .uri()
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .ok_or_else(|| ClientError::Endpoint(address.to_owned()))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&config.ca_pem))
            .identity(Identity::from_pem(&config.cert_pem, &config.key_pem))
            .domain_name(config.server_name.clone().unwrap_or_else(|| host.clone()));
        let peer = ServerAddress {
            host: host.into(),
            port: endpoint.uri().port_u16(),
        };
        // `http://` is plaintext: only for benchmarking the bare variant.
        let endpoint = if endpoint.uri().scheme_str() == Some("http") {
            endpoint
        } else {
            endpoint.tls_config(tls).map_err(|e| ClientError::Connect {
                endpoint: address.to_owned(),
                detail: error_chain(&e),
            })?
        };
        let endpoint = endpoint
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        Ok((endpoint, peer))
    }

    fn over(
        channels: Vec<(String, Channel)>,
        peer: ServerAddress,
        config: &ClientConfig,
    ) -> Result<Self, ClientError> {
        let authorization = config
            .token
            .as_deref()
            .map(|t| MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| ClientError::Token))
            .transpose()?;
        let resilient = Resilient::new(channels, config.resilience.clone(), config.metrics.clone());
        let channel = tower_layer::Layer::layer(
            &ClientTelemetryLayer::new(config.metrics.clone(), peer),
            resilient,
        );
        Ok(Self {
            channel,
            credentials: CallCredentials {
                authorization,
                timeout: config.timeout,
            },
        })
    }

    pub fn users(&self) -> UserServiceClient<Authed> {
        UserServiceClient::with_interceptor(self.channel.clone(), self.credentials.clone())
    }

    pub fn orders(&self) -> OrderServiceClient<Authed> {
        OrderServiceClient::with_interceptor(self.channel.clone(), self.credentials.clone())
    }

    pub fn health(&self) -> tonic_health::pb::health_client::HealthClient<Traced> {
        tonic_health::pb::health_client::HealthClient::new(self.channel.clone())
    }

    /// The traced transport, for clients of other services (no token added).
    pub fn channel(&self) -> Traced {
        self.channel.clone()
    }

    /// The replicas behind this client, with their circuit state and calls served.
    pub fn replicas(&self) -> &[std::sync::Arc<resilience::Replica>] {
        self.channel.inner().replicas()
    }
}

/// An error and its sources on one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    causes(err)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// An error, then its source, its source's source, and so on.
pub(crate) fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}
