//! How OrderService learns that an order's user exists: from its own store when UserService
//! runs in the same process, or by calling the UserService that owns the users over mTLS,
//! with the caller's own token (so a call chain is authorized as the caller, and traced as
//! one trace).
use tonic::{Code, Request, metadata::MetadataMap};

use crate::{client::JisuClient, error::Error, pb::GetUserRequest};

/// Where users live, seen from OrderService.
#[derive(Debug, Clone)]
pub enum UserDirectory {
    /// Users are in the same store; the store refuses an order for an unknown user.
    Local,
    /// Users are served by another Jisu process.
    Remote(JisuClient),
}

/// Metadata forwarded from the incoming call to the UserService call.
const FORWARDED: [&str; 2] = [crate::api::AUTHORIZATION, crate::api::GRPC_TIMEOUT];

impl UserDirectory {
    /// Whether the store itself must check the user (it holds them).
    pub fn is_local(&self) -> bool {
        matches!(self, UserDirectory::Local)
    }

    /// Checks that `user_id` exists, as the caller whose metadata is `incoming`.
    pub async fn check(&self, user_id: &str, incoming: &MetadataMap) -> Result<(), Error> {
        let UserDirectory::Remote(client) = self else {
            return Ok(());
        };
        let mut request = Request::new(GetUserRequest {
            user_id: user_id.to_owned(),
        });
        for key in FORWARDED {
            if let Some(value) = incoming.get(key) {
                request.metadata_mut().insert(key, value.clone());
            }
        }
        match client.users().get_user(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(remote_error(user_id, &status)),
        }
    }
}

/// Maps UserService's answer to what the OrderService caller sees: its own mistakes keep
/// their code, anything else is UNAVAILABLE (retryable) with the detail logged.
fn remote_error(user_id: &str, status: &tonic::Status) -> Error {
    match status.code() {
        Code::NotFound => Error::NotFound {
            reason: "USER_NOT_FOUND",
            message: format!("user {user_id:?} not found"),
        },
        Code::PermissionDenied => Error::PermissionDenied {
            reason: "USER_CHECK_DENIED",
            message: "placing an order checks its user with UserService: the token also needs \
                      the users:read scope"
                .into(),
        },
        Code::Unauthenticated => Error::Unauthenticated {
            reason: "USER_CHECK_UNAUTHENTICATED",
            message: "UserService did not accept the token this call was made with".into(),
        },
        Code::InvalidArgument => Error::invalid("user_id", status.message().to_owned()),
        code => Error::Unavailable(format!(
            "UserService answered {code:?} checking user {user_id:?}: {}",
            status.message()
        )),
    }
}
