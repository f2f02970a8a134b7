//! Which methods need which scope: the built-in authorization table.
//!
//! Health and reflection need only mutual TLS. Every Jisu method needs a valid token and
//! its scope. Paths the table does not know still need a valid token (default deny), and
//! then get UNIMPLEMENTED from the router.

/// What a method requires beyond mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// mTLS only (health checks, reflection).
    Public,
    /// A valid token carrying this scope.
    Scope(&'static str),
    /// A valid token; used for paths outside the table.
    Authenticated,
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

const PUBLIC_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Splits `/pkg.Service/Method` into its service and method.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The table entry for a request path, if it is a Jisu method.
pub fn method(path: &str) -> Option<&'static Method> {
    let (service, name) = split_path(path)?;
    METHODS
        .iter()
        .find(|m| m.service == service && m.name == name)
}

/// What a request path requires.
pub fn access(path: &str) -> Access {
    if let Some(m) = method(path) {
        return Access::Scope(m.scope);
    }
    match split_path(path) {
        Some((service, _)) if PUBLIC_SERVICES.contains(&service) => Access::Public,
        _ => Access::Authenticated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_scopes_and_defaults_to_authenticated() {
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
        assert_eq!(
            access("/jisucloud.v1.UserService/Nope"),
            Access::Authenticated
        );
        assert_eq!(access("/grpc.health.v1.Health"), Access::Authenticated);
        assert_eq!(access("garbage"), Access::Authenticated);
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
}
