//! Who may call what, decided before any handler runs: the bearer token (UNAUTHENTICATED
//! when missing, invalid, or bound to another client certificate — RFC 8705 `cnf`), then
//! the authorization policy (PERMISSION_DENIED; see [`crate::security::authz`]).
//!
//! The verified [`Principal`] is put into the request extensions for handlers and logs.
//! The deciding rule goes to the span (`jisu.authz.decision`, `jisu.authz.rule`), the
//! metric and, for a deny, the log — never to the caller.
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
    api::{self, Access},
    error::Error,
    security::{
        authz::{Call, PolicyHandle},
        jwt::{AuthFailure, Principal, TokenVerifier, token_text, unix_now},
    },
    telemetry::metrics::Metrics,
    transport::Peer,
};

/// `jisu_auth_failures_total{reason}` of paths outside the method table.
const UNKNOWN_METHOD_LABEL: &str = "unknown_method";

/// Adds [`Auth`] to a service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    checks: Arc<Checks>,
}

/// What every call is checked against, behind one `Arc`: hyper clones the whole service
/// stack for each request, and a verifier's clone alone is a dozen reference counts (its
/// key set, its cache and the cache's channels).
#[derive(Debug)]
struct Checks {
    verifier: TokenVerifier,
    policy: PolicyHandle,
    metrics: Metrics,
}

impl AuthLayer {
    pub fn new(verifier: TokenVerifier, policy: PolicyHandle, metrics: Metrics) -> Self {
        // Probes of unknown paths show from the first scrape (0), not from the first probe.
        metrics
            .counter(
                "jisu_auth_failures_total",
                &[("reason", UNKNOWN_METHOD_LABEL)],
            )
            .increment(0);
        Self {
            checks: Arc::new(Checks {
                verifier,
                policy,
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            checks: self.checks.clone(),
        }
    }
}

/// Checks the token and scope of every call (see the module docs).
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    checks: Arc<Checks>,
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
        let peer = req.extensions().get::<Arc<Peer>>().cloned();
        let checks = &*self.checks;
        let checked = authorize(
            &checks.verifier,
            &checks.policy,
            req.uri().path(),
            req.headers(),
            peer.as_deref(),
        );
        match checked {
            Ok(Some(principal)) => {
                // The call's record keeps the subject for its span (`enduser.id`).
                jisu_client::children::with_current(|c| c.set_subject(&principal.subject));
                req.extensions_mut().insert(principal);
                Either::Left(self.inner.call(req))
            }
            Ok(None) => Either::Left(self.inner.call(req)),
            Err((err, label)) => {
                checks
                    .metrics
                    .counter("jisu_auth_failures_total", &[("reason", label)])
                    .increment(1);
                let identity = peer.as_ref().map_or("-", |p| p.identity.as_str());
                tracing::info!(path = %req.uri().path(), peer = identity, error = %err, "call refused");
                Either::Right(ready(Ok(Status::from(err).into_http())))
            }
        }
    }
}

/// Decides one call: `Ok(None)` for public methods (health, reflection), the principal
/// when the token is good, bound to this connection's certificate if it says so, and the
/// policy allows the call; a refusal comes with its bounded metric label. `peer` is the
/// connection's client certificate (absent only for callers outside the mTLS stack).
pub fn authorize(
    verifier: &TokenVerifier,
    policy: &PolicyHandle,
    path: &str,
    headers: &HeaderMap,
    peer: Option<&Peer>,
) -> Result<Option<Arc<Principal>>, (Error, &'static str)> {
    // One lookup of the path: what it requires, and its policy rules.
    let index = api::served_index(path);
    let scope = match api::access_at(index) {
        Access::Public => return Ok(None),
        Access::Scope(scope) => scope,
        // Fail closed: no token, policy or handler is consulted for a path outside the
        // table (what reflection lists is exactly the table).
        Access::Unknown => {
            let err = Error::Refused {
                code: tonic::Code::Unimplemented,
                reason: "UNKNOWN_METHOD",
                message: format!("{path} is not a method of this server"),
            };
            return Err((err, UNKNOWN_METHOD_LABEL));
        }
    };
    let refuse = |failure: AuthFailure| {
        let err = Error::Unauthenticated {
            reason: failure.reason(),
            message: failure.to_string(),
        };
        (err, failure.label())
    };
    let principal = bearer(headers)
        .and_then(|token| match peer {
            // Per connection: a byte compare with the last token it presented.
            Some(p) => verifier.verify_memoized(&p.token, token, unix_now()),
            None => token_text(token).and_then(|token| verifier.verify(token, unix_now())),
        })
        .map_err(refuse)?;
    // RFC 8705: a certificate-bound token is good only over a connection presenting that
    // certificate.
    if let Some(bound) = &principal.cert_thumbprint
        && peer.is_none_or(|p| &p.cert_sha256 != bound)
    {
        return Err(refuse(AuthFailure::CertificateMismatch));
    }
    let policy = policy.current();
    let decision = policy.decide_at(
        index,
        &Call {
            method: path.trim_start_matches('/'),
            caller: peer.map_or("", |p| p.identity.as_str()),
            subject: &principal.subject,
            issuer: &principal.issuer,
            audiences: &principal.audiences,
            scopes: &principal.scopes,
        },
    );
    jisu_client::children::with_current(|c| c.set_authz(decision.allowed, &decision.rule));
    if decision.allowed {
        return Ok(Some(principal));
    }
    tracing::info!(path, rule = %decision.rule, subject = %principal.subject, "denied by the authorization policy");
    // Under the built-in policy the scope a method needs is public (the API reference);
    // under a policy file nothing about the rules is told.
    if !policy.builtin || principal.has_scope(scope) {
        let err = Error::PermissionDenied {
            reason: "POLICY_DENIED",
            message: "the authorization policy does not allow this call".into(),
        };
        Err((err, "policy_denied"))
    } else {
        let err = Error::PermissionDenied {
            reason: "MISSING_SCOPE",
            message: format!("this method needs the scope `{scope}`"),
        };
        Err((err, "missing_scope"))
    }
}

/// The token from `authorization: Bearer <token>`, as the header's bytes: whether they
/// are text is checked by the verifier ([`token_text`]) only when they are not the
/// connection's last verified token (a ~500-byte scan per call saved).
fn bearer(headers: &HeaderMap) -> Result<&[u8], AuthFailure> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthFailure::Missing)?
        .as_bytes();
    let space = value
        .iter()
        .position(|&b| b == b' ')
        .ok_or(AuthFailure::Malformed)?;
    let (scheme, token) = (&value[..space], &value[space + 1..]);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthFailure::Malformed);
    }
    match token.trim_ascii() {
        [] => Err(AuthFailure::Missing),
        token => Ok(token),
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use tower::ServiceExt as _;
    use tower_layer::Layer as _;

    use super::*;
    use crate::security::{
        authz::Policy,
        certs::jwt_key_pair,
        jwt::{KeySet, TokenIssuer, VerifierSettings},
    };

    fn layer() -> (AuthLayer, TokenIssuer) {
        let pem = jwt_key_pair().unwrap();
        let verifier = TokenVerifier::new(
            KeySet::from_pem(pem.cert.as_bytes()).unwrap(),
            &VerifierSettings {
                issuer: "jisu".into(),
                audience: "jisucloud".into(),
                leeway: Duration::from_secs(30),
                max_token_bytes: 4096,
                cache_capacity: 10,
            },
        );
        let metrics = Metrics::new();
        let policy = PolicyHandle::new(Policy::builtin(&metrics));
        let issuer = TokenIssuer::from_pem(pem.key.as_bytes(), "jisu", "jisucloud").unwrap();
        (AuthLayer::new(verifier, policy, metrics), issuer)
    }

    /// The handler behind auth: reaching it means auth let the call through.
    fn handler() -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<String>, Infallible>>,
    > + Clone {
        tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new("handled".to_owned()))
        })
    }

    fn call(path: &str, token: Option<&str>) -> Request<()> {
        let mut req = Request::builder().uri(path).body(()).unwrap();
        if let Some(t) = token {
            req.headers_mut().insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        req
    }

    fn refusal(response: &Response<String>) -> (tonic::Code, String) {
        use tonic_types::StatusExt as _;
        let status = Status::from_header_map(response.headers()).expect("a refusal");
        let reason = status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default();
        (status.code(), reason)
    }

    #[tokio::test]
    async fn unknown_paths_never_reach_a_handler_whatever_the_token() {
        let (auth, issuer) = layer();
        let token = issuer.issue("alice", "users:read users:write", Duration::from_secs(60));
        for path in ["/jisucloud.v1.UserService/DropTables", "/x.Y/Z", "garbage"] {
            for token in [None, Some(token.as_str())] {
                let response = auth
                    .layer(handler())
                    .oneshot(call(path, token))
                    .await
                    .unwrap();
                assert_eq!(
                    refusal(&response),
                    (tonic::Code::Unimplemented, "UNKNOWN_METHOD".into()),
                    "{path}"
                );
            }
        }
        // A known method with its scope gets through; without a token it does not.
        let ok = auth
            .layer(handler())
            .oneshot(call("/jisucloud.v1.UserService/GetUser", Some(&token)))
            .await
            .unwrap();
        assert_eq!(ok.into_body(), "handled");
        let anonymous = auth
            .layer(handler())
            .oneshot(call("/jisucloud.v1.UserService/GetUser", None))
            .await
            .unwrap();
        assert_eq!(
            refusal(&anonymous),
            (tonic::Code::Unauthenticated, "TOKEN_MISSING".into())
        );
    }

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
        assert_eq!(bearer(&headers("bearer abc")), Ok(&b"abc"[..]));
        assert_eq!(bearer(&headers("BEARER \tabc ")), Ok(&b"abc"[..]));
    }
}
