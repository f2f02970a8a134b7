//! JWT bearer auth over real mTLS: every token case and every method's scope.

use std::time::Duration;

use crate::common::{ALL_SCOPES, Calls, TestServer, assert_status};
use base64::Engine;
use futures::future::BoxFuture;
use jisu::{
    client::JisuClient,
    pb::{
        BatchGetUsersRequest, CreateOrderRequest, CreateUserRequest, DeleteUserRequest,
        GetOrderRequest, GetUserRequest, ListUsersRequest, OrderItem, StreamOrderUpdatesRequest,
        UpdateUserRequest,
    },
    security::{
        certs::jwt_key_pair,
        jwt::{Claims, TokenIssuer, unix_now},
    },
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::{Code, Status};

async fn get_user(server: &TestServer, token: Option<String>) -> Result<(), Status> {
    let client = server.client_with_token(token).await;
    client.get_user("USER0001").await.map(|_| ())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn every_bad_token_is_unauthenticated_with_its_reason() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let issuer = &server.issuer;
    let good = || issuer.claims("tester", "users:read", Duration::from_secs(300));
    let now = unix_now();

    let valid = server.token("users:read");
    // Change the first signature character (the last one may only hold padding bits).
    let sig_start = valid.rfind('.').unwrap() + 1;
    let mut bad_signature = valid.clone();
    let first = &valid[sig_start..sig_start + 1];
    bad_signature.replace_range(
        sig_start..sig_start + 1,
        if first == "A" { "B" } else { "A" },
    );

    let other_key = jwt_key_pair().unwrap();
    let other_issuer =
        TokenIssuer::from_pem(other_key.key.as_bytes(), "jisu", "jisucloud").unwrap();

    let public_pem = std::fs::read(server.dir().join("jwt.pub")).unwrap();
    let hs256_with_public_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good(),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&serde_json::to_vec(&good()).unwrap())
    );
    let no_sub = {
        let mut claims = serde_json::to_value(good()).unwrap();
        claims.as_object_mut().unwrap().remove("sub");
        jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(&std::fs::read(server.dir().join("jwt.key")).unwrap())
                .unwrap(),
        )
        .unwrap()
    };

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "TOKEN_MISSING"),
        ("not a jwt", Some("abc.def".into()), "TOKEN_MALFORMED"),
        (
            "expired beyond leeway",
            Some(issuer.sign(&Claims {
                exp: now - 120,
                ..good()
            })),
            "TOKEN_EXPIRED",
        ),
        (
            "not valid yet",
            Some(issuer.sign(&Claims {
                nbf: Some(now + 300),
                ..good()
            })),
            "TOKEN_NOT_YET_VALID",
        ),
        ("alg none", Some(alg_none), "TOKEN_MALFORMED"),
        (
            "HS256 with the public key",
            Some(hs256_with_public_key),
            "TOKEN_WRONG_ALGORITHM",
        ),
        (
            "tampered signature",
            Some(bad_signature),
            "TOKEN_BAD_SIGNATURE",
        ),
        (
            "signed by another key",
            Some(other_issuer.issue("tester", "users:read", Duration::from_secs(60))),
            "TOKEN_BAD_SIGNATURE",
        ),
        (
            "wrong issuer",
            Some(issuer.sign(&Claims {
                iss: "evil".into(),
                ..good()
            })),
            "TOKEN_WRONG_ISSUER",
        ),
        (
            "wrong audience",
            Some(issuer.sign(&Claims {
                aud: "other".into(),
                ..good()
            })),
            "TOKEN_WRONG_AUDIENCE",
        ),
        ("no sub", Some(no_sub), "TOKEN_MISSING_CLAIM"),
        ("oversized", Some("a".repeat(9000)), "TOKEN_TOO_LARGE"),
    ];
    for (name, token, reason) in cases {
        let status = assert_status(
            get_user(&server, token).await,
            Code::Unauthenticated,
            reason,
        );
        // The message helps without echoing the token.
        assert!(
            status.message().contains("token"),
            "{name}: {}",
            status.message()
        );
    }

    // Inside the 30 s leeway an expired token still works; a valid one works.
    get_user(
        &server,
        Some(issuer.sign(&Claims {
            exp: now - 10,
            ..good()
        })),
    )
    .await
    .expect("expired within leeway");
    get_user(&server, Some(valid)).await.expect("valid token");
    server.stop().await;
}

#[tokio::test]
async fn the_authorization_header_needs_the_bearer_scheme() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let client = server.client_with_token(None).await;
    let mut req = tonic::Request::new(GetUserRequest {
        user_id: "USER0001".into(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Basic {}", server.token(ALL_SCOPES))
            .parse()
            .unwrap(),
    );
    assert_status(
        client.users().get_user(req).await,
        Code::Unauthenticated,
        "TOKEN_MALFORMED",
    );
    server.stop().await;
}

type Call = fn(JisuClient) -> BoxFuture<'static, Result<(), Status>>;

/// Every method, with the scope it needs.
fn methods() -> Vec<(&'static str, &'static str, Call)> {
    vec![
        ("GetUser", "users:read", |c| {
            Box::pin(async move { c.get_user("USER0001").await.map(drop) })
        }),
        ("ListUsers", "users:read", |c| {
            Box::pin(async move {
                c.users()
                    .list_users(ListUsersRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("BatchGetUsers", "users:read", |c| {
            Box::pin(async move {
                c.users()
                    .batch_get_users(BatchGetUsersRequest {
                        user_ids: vec!["USER0001".into()],
                    })
                    .await
                    .map(drop)
            })
        }),
        ("CreateUser", "users:write", |c| {
            Box::pin(async move {
                let email = format!("u{}@x.io", rand::random::<u32>());
                c.users()
                    .create_user(CreateUserRequest {
                        name: "n".into(),
                        email,
                        phone: String::new(),
                    })
                    .await
                    .map(drop)
            })
        }),
        ("UpdateUser", "users:write", |c| {
            Box::pin(async move {
                c.users()
                    .update_user(UpdateUserRequest {
                        user_id: "USER0002".into(),
                        name: Some("x".into()),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        }),
        ("DeleteUser", "users:write", |c| {
            Box::pin(async move {
                // Deleting an unknown id: NOT_FOUND proves the call got past auth.
                match c
                    .users()
                    .delete_user(DeleteUserRequest {
                        user_id: "USER0999".into(),
                    })
                    .await
                {
                    Err(s) if s.code() == Code::NotFound => Ok(()),
                    other => other.map(drop),
                }
            })
        }),
        ("CreateOrder", "orders:write", |c| {
            Box::pin(async move {
                c.orders()
                    .create_order(CreateOrderRequest {
                        user_id: "USER0001".into(),
                        items: vec![OrderItem {
                            product_id: "p".into(),
                            quantity: 1,
                            price: 1.0,
                            ..Default::default()
                        }],
                        idempotency_key: String::new(),
                    })
                    .await
                    .map(drop)
            })
        }),
        ("GetOrder", "orders:read", |c| {
            Box::pin(async move {
                match c
                    .orders()
                    .get_order(GetOrderRequest {
                        order_id: "ORD00000000".into(),
                    })
                    .await
                {
                    Err(s) if s.code() == Code::NotFound => Ok(()),
                    other => other.map(drop),
                }
            })
        }),
        ("StreamOrderUpdates", "orders:read", |c| {
            Box::pin(async move {
                match c
                    .orders()
                    .stream_order_updates(StreamOrderUpdatesRequest {
                        order_id: "ORD00000000".into(),
                    })
                    .await
                {
                    Err(s) if s.code() == Code::NotFound => Ok(()),
                    other => other.map(drop),
                }
            })
        }),
    ]
}

#[tokio::test]
async fn each_method_needs_exactly_its_scope() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let all: Vec<&str> = ALL_SCOPES.split(' ').collect();
    for (name, scope, call) in methods() {
        let others: Vec<&str> = all.iter().copied().filter(|s| *s != scope).collect();
        let without = server.client(&others.join(" ")).await;
        let status = assert_status(call(without).await, Code::PermissionDenied, "MISSING_SCOPE");
        assert!(
            status.message().contains(scope),
            "{name}: {}",
            status.message()
        );

        let with_only = server.client(scope).await;
        call(with_only)
            .await
            .unwrap_or_else(|s| panic!("{name} with {scope}: {s:?}"));
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_methods_are_refused_before_auth_and_handlers() {
    let server = TestServer::start().await;
    let client = server.client_with_token(None).await;
    let call = |path: &'static str, token: Option<String>| {
        let channel = client.channel();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            let mut req = tonic::Request::new(GetUserRequest::default());
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            grpc.unary::<GetUserRequest, GetUserRequest, _>(
                req,
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
        }
    };
    // Fail closed: whatever the token, a path outside the method table never reaches a
    // service (the router would also say UNIMPLEMENTED, but without this reason).
    for path in [
        "/jisucloud.v1.UserService/DropAllTables",
        "/grpc.health.v1.Health/Nope",
        "/evil.Service/Method",
    ] {
        assert_status(
            call(path, None).await,
            Code::Unimplemented,
            "UNKNOWN_METHOD",
        );
        assert_status(
            call(path, Some(server.token(ALL_SCOPES))).await,
            Code::Unimplemented,
            "UNKNOWN_METHOD",
        );
    }
    server.stop().await;
}
