//! Bearer-token authentication and per-method scopes, checked before any handler runs.
//!
//! The verified [`Principal`] is put into the request extensions for handlers and logs;
//! a refusal is answered here with UNAUTHENTICATED or PERMISSION_DENIED.
use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use http::{HeaderMap, Request, Response};
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    error::Error,
    security::{
        jwt::{AuthFailure, Principal, TokenVerifier, unix_now},
        policy::{self, Access},
    },
    telemetry::metrics::Metrics,
    transport::Peer,
};

/// Adds [`Auth`] to a service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: TokenVerifier,
    metrics: Metrics,
}

impl AuthLayer {
    pub fn new(verifier: TokenVerifier, metrics: Metrics) -> Self {
        Self { verifier, metrics }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            verifier: self.verifier.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Checks the token and scope of every call (see the module docs).
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    verifier: TokenVerifier,
    metrics: Metrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        match authorize(&self.verifier, req.uri().path(), req.headers()) {
            Ok(Some(principal)) => {
                tracing::Span::current().record("enduser.id", principal.subject.as_str());
                req.extensions_mut().insert(principal);
                Either::Left(self.inner.call(req))
            }
            Ok(None) => Either::Left(self.inner.call(req)),
            Err((err, label)) => {
                self.metrics
                    .counter("jisu_auth_failures_total", &[("reason", label)])
                    .increment(1);
                let identity = req
                    .extensions()
                    .get::<Arc<Peer>>()
                    .map(|p| p.identity.as_str())
                    .unwrap_or("-");
                tracing::info!(path = %req.uri().path(), peer = identity, error = %err, "call refused");
                Either::Right(ready(Ok(Status::from(err).into_http())))
            }
        }
    }
}

/// Decides one call: `Ok(None)` for public methods, the principal when the token and scope
/// are good; a refusal comes with its bounded metric label.
pub fn authorize(
    verifier: &TokenVerifier,
    path: &str,
    headers: &HeaderMap,
) -> Result<Option<Arc<Principal>>, (Error, &'static str)> {
    let required = match policy::access(path) {
        Access::Public => return Ok(None),
        Access::Scope(scope) => Some(scope),
        Access::Authenticated => None,
    };
    let principal = bearer(headers)
        .and_then(|token| verifier.verify(token, unix_now()))
        .map_err(|failure| {
            let err = Error::Unauthenticated {
                reason: failure.reason(),
                message: failure.to_string(),
            };
            (err, failure.label())
        })?;
    if let Some(scope) = required
        && !principal.has_scope(scope)
    {
        let err = Error::PermissionDenied {
            reason: "MISSING_SCOPE",
            message: format!("this method needs the scope `{scope}`"),
        };
        return Err((err, "missing_scope"));
    }
    Ok(Some(principal))
}

/// The token from `authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthFailure::Missing)?;
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    match token.trim() {
        "" => Err(AuthFailure::Missing),
        token => Ok(token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_scheme_is_required_and_case_insensitive() {
        assert_eq!(bearer(&HeaderMap::new()), Err(AuthFailure::Missing));
        assert_eq!(bearer(&headers("Basic abc")), Err(AuthFailure::Malformed));
        assert_eq!(bearer(&headers("Bearer")), Err(AuthFailure::Malformed));
        assert_eq!(bearer(&headers("Bearer  ")), Err(AuthFailure::Missing));
        assert_eq!(bearer(&headers("bearer abc")), Ok("abc"));
    }
}
