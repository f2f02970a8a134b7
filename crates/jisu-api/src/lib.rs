//! `jisu-api`: the `jisucloud.v1` contract for Rust — the generated protobuf types and
//! gRPC stubs ([`pb`], compiled from the workspace's `proto/` with a pure-Rust compiler),
//! and what every layer knows about the API. The server, the client and the CLI read it;
//! it reads none of them.
//!
//! - the method table: every method's service, name, call shape, scope and idempotency;
//!   path parsing and lookups;
//! - the metadata and header names of the wire contract, each written once;
//! - `grpc-timeout` parsing, and the clock in Unix seconds.
//!
//! Health and reflection need only mutual TLS. Every Jisu method needs a valid token and
//! its scope. A path in neither table is refused before any service sees it (fail closed:
//! a method added to a proto cannot be served until it has a row here, and a test checks
//! the table against the compiled descriptor set).

#![forbid(unsafe_code)]

pub mod pb;

use std::{
    collections::HashMap,
    sync::LazyLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// `authorization: Bearer <token>` on every call.
pub const AUTHORIZATION: &str = "authorization";
/// The caller's deadline (gRPC over HTTP/2).
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
/// How long a refused caller should wait before trying again (gRPC A6), in ms.
pub const RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";
/// CreateOrder's idempotency key, as metadata (the request field wins).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// ListUsers' trailer: the `page_token` of the next page.
pub const NEXT_PAGE_TOKEN: &str = "x-next-page-token";
/// Every response's trace id (W3C, 32 hex digits), errors included.
pub const TRACE_ID: &str = "x-trace-id";

/// The caller's `grpc-timeout` in request headers (or a `MetadataMap`'s `as_ref()`), if
/// present and readable.
pub fn grpc_timeout(headers: &tonic::codegen::http::HeaderMap) -> Option<Duration> {
    // Named once: a `&str` name is parsed (and its case checked) again at every lookup.
    const NAME: tonic::codegen::http::HeaderName =
        tonic::codegen::http::HeaderName::from_static(GRPC_TIMEOUT);
    headers
        .get(NAME)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timeout)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(raw: &str) -> Option<Duration> {
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(timeout)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every gRPC code, in numeric order, with the label go-grpc-prometheus (and so every
/// dashboard) uses for it.
pub const CODES: [(tonic::Code, &str); 17] = [
    (tonic::Code::Ok, "OK"),
    (tonic::Code::Cancelled, "Canceled"),
    (tonic::Code::Unknown, "Unknown"),
    (tonic::Code::InvalidArgument, "InvalidArgument"),
    (tonic::Code::DeadlineExceeded, "DeadlineExceeded"),
    (tonic::Code::NotFound, "NotFound"),
    (tonic::Code::AlreadyExists, "AlreadyExists"),
    (tonic::Code::PermissionDenied, "PermissionDenied"),
    (tonic::Code::ResourceExhausted, "ResourceExhausted"),
    (tonic::Code::FailedPrecondition, "FailedPrecondition"),
    (tonic::Code::Aborted, "Aborted"),
    (tonic::Code::OutOfRange, "OutOfRange"),
    (tonic::Code::Unimplemented, "Unimplemented"),
    (tonic::Code::Internal, "Internal"),
    (tonic::Code::Unavailable, "Unavailable"),
    (tonic::Code::DataLoss, "DataLoss"),
    (tonic::Code::Unauthenticated, "Unauthenticated"),
];

/// The label value of a gRPC code.
pub fn code_label(code: tonic::Code) -> &'static str {
    CODES[code as usize].1
}

/// What a method requires beyond mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// mTLS only (health checks, reflection).
    Public,
    /// A valid token carrying this scope.
    Scope(&'static str),
    /// Not a method this server knows: refused (UNIMPLEMENTED) before auth and handlers.
    Unknown,
}

/// gRPC call shapes, as go-grpc-prometheus labels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl CallType {
    pub fn label(self) -> &'static str {
        match self {
            CallType::Unary => "unary",
            CallType::ClientStream => "client_stream",
            CallType::ServerStream => "server_stream",
            CallType::BidiStream => "bidi_stream",
        }
    }
}

/// One Jisu method: its service, name, shape and required scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub service: &'static str,
    pub name: &'static str,
    pub call_type: CallType,
    pub scope: &'static str,
    /// Safe to send again: the same request gives the same answer and changes nothing.
    /// Clients retry only these (and calls carrying an idempotency key).
    pub idempotent: bool,
}

pub const USER_SERVICE: &str = "jisucloud.v1.UserService";
pub const ORDER_SERVICE: &str = "jisucloud.v1.OrderService";
pub const FILE_SERVICE: &str = "jisucloud.v1.FileService";

const fn m(
    service: &'static str,
    name: &'static str,
    call_type: CallType,
    scope: &'static str,
) -> Method {
    Method {
        service,
        name,
        call_type,
        scope,
        idempotent: false,
    }
}

/// A read-only method: [`Method::idempotent`].
const fn read(
    service: &'static str,
    name: &'static str,
    call_type: CallType,
    scope: &'static str,
) -> Method {
    Method {
        idempotent: true,
        ..m(service, name, call_type, scope)
    }
}

/// Every Jisu method and its scope.
pub const METHODS: &[Method] = &[
    read(USER_SERVICE, "GetUser", CallType::Unary, "users:read"),
    read(
        USER_SERVICE,
        "ListUsers",
        CallType::ServerStream,
        "users:read",
    ),
    read(USER_SERVICE, "BatchGetUsers", CallType::Unary, "users:read"),
    m(USER_SERVICE, "CreateUser", CallType::Unary, "users:write"),
    m(USER_SERVICE, "UpdateUser", CallType::Unary, "users:write"),
    m(USER_SERVICE, "DeleteUser", CallType::Unary, "users:write"),
    read(ORDER_SERVICE, "GetOrder", CallType::Unary, "orders:read"),
    m(
        ORDER_SERVICE,
        "StreamOrderUpdates",
        CallType::ServerStream,
        "orders:read",
    ),
    m(
        ORDER_SERVICE,
        "CreateOrder",
        CallType::Unary,
        "orders:write",
    ),
    m(
        ORDER_SERVICE,
        "UpdateOrderStatus",
        CallType::Unary,
        "orders:write",
    ),
    m(
        ORDER_SERVICE,
        "CancelOrder",
        CallType::Unary,
        "orders:write",
    ),
    m(
        ORDER_SERVICE,
        "TrackOrders",
        CallType::BidiStream,
        "orders:read",
    ),
    m(
        FILE_SERVICE,
        "Upload",
        CallType::ClientStream,
        "files:write",
    ),
    m(FILE_SERVICE, "GetUpload", CallType::Unary, "files:write"),
    m(
        FILE_SERVICE,
        "Download",
        CallType::ServerStream,
        "files:read",
    ),
];

pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
pub const REFLECTION_V1_SERVICE: &str = "grpc.reflection.v1.ServerReflection";
pub const REFLECTION_V1ALPHA_SERVICE: &str = "grpc.reflection.v1alpha.ServerReflection";

/// The standard services every server offers over mTLS alone (no token, no scope).
pub const PUBLIC_METHODS: &[Method] = &[
    read(HEALTH_SERVICE, "Check", CallType::Unary, ""),
    read(HEALTH_SERVICE, "Watch", CallType::ServerStream, ""),
    read(
        REFLECTION_V1_SERVICE,
        "ServerReflectionInfo",
        CallType::BidiStream,
        "",
    ),
    read(
        REFLECTION_V1ALPHA_SERVICE,
        "ServerReflectionInfo",
        CallType::BidiStream,
        "",
    ),
];

/// Every method this server can serve: the Jisu API, then the public ones.
pub fn all_methods() -> impl Iterator<Item = &'static Method> {
    METHODS.iter().chain(PUBLIC_METHODS)
}

/// Splits `/pkg.Service/Method` into its service and method.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The name a table gives the paths outside it (`grpc_method="unknown"`).
pub const UNKNOWN: &str = "unknown";

/// One `T` per served method, in [`all_methods`] order (so found by [`served_index`]), and
/// one shared by every path outside the table: the shape of each per-method table
/// (metrics, rpcz windows, exemplars, span attributes).
#[derive(Debug)]
pub struct PerMethod<T> {
    methods: Box<[T]>,
    unknown: T,
}

impl<T> PerMethod<T> {
    /// Builds each entry from its method; `None` builds the unknown paths' entry.
    pub fn new(mut entry: impl FnMut(Option<&'static Method>) -> T) -> Self {
        Self {
            methods: all_methods().map(|m| entry(Some(m))).collect(),
            unknown: entry(None),
        }
    }

    /// The entry of the method at `index` ([`served_index`]; `None`: unknown).
    pub fn at(&self, index: Option<usize>) -> &T {
        index
            .and_then(|i| self.methods.get(i))
            .unwrap_or(&self.unknown)
    }

    /// The entry of `service`/`method` by name (the unknown paths' outside the table).
    pub fn named(&self, service: &str, method: &str) -> &T {
        self.at(all_methods().position(|m| m.service == service && m.name == method))
    }

    /// Every entry, the unknown paths' last.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.methods.iter().chain([&self.unknown])
    }
}

/// Request path -> (position in [`all_methods`], method).
type PathTable = HashMap<String, (usize, &'static Method), foldhash::fast::FixedState>;

/// Every served method by request path (`/package.Service/Method`), with its position in
/// [`all_methods`]: one hash lookup per call instead of parsing the path and scanning the
/// tables. Looked up twice per call (metrics, auth), so with a fast fixed-seed hash
/// instead of SipHash: the map is built once and never grows, so a path crafted to
/// collide costs at most a compare with each of its few dozen keys.
static BY_PATH: LazyLock<PathTable> = LazyLock::new(|| {
    all_methods()
        .enumerate()
        .map(|(i, m)| (format!("/{}/{}", m.service, m.name), (i, m)))
        .collect()
});

/// The position of a request path's method in [`all_methods`] (Jisu's methods first,
/// then the public ones), if this server serves it: tables of per-method state are
/// indexed by it.
pub fn served_index(path: &str) -> Option<usize> {
    BY_PATH.get(path).map(|&(i, _)| i)
}

/// The table entry for a request path, if it is a Jisu method.
pub fn method(path: &str) -> Option<&'static Method> {
    BY_PATH
        .get(path)
        .filter(|&&(i, _)| i < METHODS.len())
        .map(|&(_, m)| m)
}

/// The table entry for any served path: a Jisu method or a public one.
pub fn served_method(path: &str) -> Option<&'static Method> {
    BY_PATH.get(path).map(|&(_, m)| m)
}

/// What a request path requires.
pub fn access(path: &str) -> Access {
    access_at(served_index(path))
}

/// What the method at `index` ([`served_index`]) requires.
pub fn access_at(index: Option<usize>) -> Access {
    match index {
        Some(i) if i < METHODS.len() => Access::Scope(METHODS[i].scope),
        Some(_) => Access::Public,
        None => Access::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout_units() {
        for (raw, expect) in [
            ("250m", Duration::from_millis(250)),
            ("10S", Duration::from_secs(10)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("500u", Duration::from_micros(500)),
            ("7n", Duration::from_nanos(7)),
            ("99999999S", Duration::from_secs(99_999_999)),
        ] {
            assert_eq!(parse_timeout(raw), Some(expect), "{raw}");
        }
        for bad in ["", "m", "12x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn table_covers_scopes_and_refuses_the_unknown() {
        assert_eq!(
            access("/jisucloud.v1.UserService/GetUser"),
            Access::Scope("users:read")
        );
        assert_eq!(
            access("/jisucloud.v1.UserService/DeleteUser"),
            Access::Scope("users:write")
        );
        assert_eq!(
            access("/jisucloud.v1.OrderService/CreateOrder"),
            Access::Scope("orders:write")
        );
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Public);
        assert_eq!(
            access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::Public
        );
        assert_eq!(access("/grpc.health.v1.Health/Watch"), Access::Public);
        assert_eq!(access("/jisucloud.v1.UserService/Nope"), Access::Unknown);
        assert_eq!(access("/grpc.health.v1.Health/Nope"), Access::Unknown);
        assert_eq!(access("/grpc.health.v1.Health"), Access::Unknown);
        // Positions index per-method tables: each path finds its own.
        for (i, m) in all_methods().enumerate() {
            let path = format!("/{}/{}", m.service, m.name);
            assert_eq!(served_index(&path), Some(i), "{path}");
            assert!(std::ptr::eq(served_method(&path).unwrap(), m));
        }
        assert_eq!(served_index("/jisucloud.v1.UserService/Nope"), None);
        assert_eq!(access("garbage"), Access::Unknown);
        let idempotent: Vec<&str> = METHODS
            .iter()
            .filter(|m| m.idempotent)
            .map(|m| m.name)
            .collect();
        assert_eq!(
            idempotent,
            ["GetUser", "ListUsers", "BatchGetUsers", "GetOrder"]
        );
    }

    /// Every RPC in the compiled descriptor set has a row (with its call shape) and every
    /// row is a real RPC: a method added to a proto cannot ship without a scope.
    #[test]
    fn the_table_equals_the_compiled_api() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut compiled = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for rpc in &service.method {
                    let call_type = match (
                        rpc.client_streaming.unwrap_or(false),
                        rpc.server_streaming.unwrap_or(false),
                    ) {
                        (false, false) => CallType::Unary,
                        (true, false) => CallType::ClientStream,
                        (false, true) => CallType::ServerStream,
                        (true, true) => CallType::BidiStream,
                    };
                    compiled.push((
                        format!("{}.{}", file.package(), service.name()),
                        rpc.name().to_owned(),
                        call_type,
                    ));
                }
            }
        }
        let mut table: Vec<(String, String, CallType)> = METHODS
            .iter()
            .map(|m| (m.service.to_owned(), m.name.to_owned(), m.call_type))
            .collect();
        compiled.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        table.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(table, compiled);
        assert!(METHODS.iter().all(|m| !m.scope.is_empty()));
    }
}
