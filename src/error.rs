//! The library's error type and its single mapping to `tonic::Status`.
//!
//! Every refusal carries a `google.rpc.ErrorInfo` (domain [`DOMAIN`]) with a stable
//! `reason`; INVALID_ARGUMENT also carries a `google.rpc.BadRequest`. Internal details are
//! logged here, never sent to the caller.
use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Jisu error.
pub const DOMAIN: &str = "jisucloud.v1";

/// One invalid request field, as `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `items[2].quantity`.
    pub field: String,
    /// What is wrong and what would be accepted.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Errors a call can end with. `reason` strings are stable API (`ErrorInfo.reason`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{message}")]
    NotFound {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    AlreadyExists {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
    },
    /// Any other refusal the caller can act on (RESOURCE_EXHAUSTED, DATA_LOSS,
    /// OUT_OF_RANGE, ABORTED, ...), with its stable reason.
    #[error("{message}")]
    Refused {
        code: Code,
        reason: &'static str,
        message: String,
    },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Anything the caller cannot fix. The source is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

fn summary(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn refused(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Error::Refused {
            code,
            reason,
            message: message.into(),
        }
    }

    /// A single-field INVALID_ARGUMENT.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let info = |code: Code, reason: &str, message: String| {
            Status::with_error_details(
                code,
                message,
                ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new()),
            )
        };
        match err {
            Error::InvalidArgument(violations) => {
                let message = format!("invalid request: {}", summary(&violations));
                let mut details = ErrorDetails::new();
                details.set_error_info("INVALID_ARGUMENT", DOMAIN, HashMap::new());
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound { reason, message } => info(Code::NotFound, reason, message),
            Error::AlreadyExists { reason, message } => info(Code::AlreadyExists, reason, message),
            Error::FailedPrecondition { reason, message } => {
                info(Code::FailedPrecondition, reason, message)
            }
            Error::Unauthenticated { reason, message } => {
                info(Code::Unauthenticated, reason, message)
            }
            Error::PermissionDenied { reason, message } => {
                info(Code::PermissionDenied, reason, message)
            }
            Error::Refused {
                code,
                reason,
                message,
            } => info(code, reason, message),
            Error::Unavailable(detail) => {
                tracing::warn!(%detail, "service unavailable");
                info(
                    Code::Unavailable,
                    "UNAVAILABLE",
                    "the service is temporarily unavailable; retry with backoff".into(),
                )
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                info(Code::Internal, "INTERNAL", "internal error".into())
            }
        }
    }
}
