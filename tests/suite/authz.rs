//! Authorization beyond scopes: a policy file (allow/deny by method, caller certificate
//! and token claims; hot-reloaded; decisions counted per rule) and certificate-bound
//! tokens (RFC 8705).

use std::time::Duration;

use crate::common::{ALL_SCOPES, Calls, TestServer, assert_status, samples, value};
use jisu::{
    client::{ClientConfig, JisuClient},
    security::{certs, jwt::TokenIssuer, tls},
};
use tonic::{Code, Status};

async fn get_user(client: &JisuClient) -> Result<(), Status> {
    client.get_user("USER0001").await.map(drop)
}

/// A client presenting certificate `name` (in the server's certs dir) with `token`.
async fn client_as(server: &TestServer, name: &str, token: String) -> JisuClient {
    let config = ClientConfig::from_certs_dir(&server.endpoint(), server.dir(), name)
        .unwrap()
        .with_token(token);
    JisuClient::connect(config).await.unwrap()
}

fn issuer(server: &TestServer) -> TokenIssuer {
    TokenIssuer::from_file(&server.dir().join("jwt.key"), "jisu", "jisucloud").unwrap()
}

#[tokio::test]
async fn a_certificate_bound_token_is_refused_over_another_certificate() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    certs::issue_client(server.dir(), "mallory", None).unwrap();
    // Minted by the CLI, as a user would.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jisu"))
        .args([
            "token",
            "issue",
            "--sub",
            "alice",
            "--scope",
            "users:read",
            "--certs",
        ])
        .arg(server.dir())
        .arg("--bind-cert")
        .arg(server.dir().join("client.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bound = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    get_user(&client_as(&server, "client", bound.clone()).await)
        .await
        .expect("the bound certificate is accepted");
    let replayed = get_user(&client_as(&server, "mallory", bound).await).await;
    assert_status(replayed, Code::Unauthenticated, "TOKEN_CERT_MISMATCH");

    // The library mints the same binding.
    let thumb =
        tls::cert_thumbprint(&tls::load_certs(&server.dir().join("mallory.pem")).unwrap()[0]);
    let for_mallory =
        issuer(&server).issue_bound("m", "users:read", Duration::from_secs(60), &thumb);
    get_user(&client_as(&server, "mallory", for_mallory.clone()).await)
        .await
        .expect("mallory's own bound token");
    let stolen = get_user(&client_as(&server, "client", for_mallory).await).await;
    assert_status(stolen, Code::Unauthenticated, "TOKEN_CERT_MISMATCH");
    let text = server.scrape().await;
    assert_eq!(
        value(
            &samples(&text),
            "jisu_auth_failures_total",
            &[("reason", "cert_mismatch")]
        ),
        2.0
    );
}

const POLICY: &str = r#"
[[rule]]
name = "partners-no-deletes"
effect = "deny"
methods = ["jisucloud.v1.UserService/Delete*"]
callers = ["partner-*"]

[[rule]]
name = "readers"
effect = "allow"
methods = ["jisucloud.v1.UserService/Get*", "jisucloud.v1.UserService/List*"]
scopes = ["users:read"]

[[rule]]
name = "admins"
effect = "allow"
methods = ["jisucloud.v1.*"]
subjects = ["admin-*"]
"#;

#[tokio::test]
async fn a_policy_file_allows_and_denies_by_rule_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let path = policy.clone();
    let server = TestServer::start_with(move |s| {
        s.demo_data = true;
        s.auth.policy = Some(path);
    })
    .await;
    certs::issue_client(server.dir(), "partner-acme", None).unwrap();
    let issuer = issuer(&server);
    let token = |sub: &str, scopes: &str| issuer.issue(sub, scopes, Duration::from_secs(300));
    let delete = |client: JisuClient| async move {
        client
            .users()
            .delete_user(jisu::pb::DeleteUserRequest {
                user_id: "USER0099".into(),
            })
            .await
            .map(drop)
    };

    // (caller certificate, subject, scopes) → allowed?
    let reader = client_as(&server, "client", token("alice", "users:read")).await;
    get_user(&reader).await.expect("readers: allow");
    let status = assert_status(
        delete(reader).await,
        Code::PermissionDenied,
        "POLICY_DENIED",
    );
    assert!(!status.message().contains("admins") && !status.message().contains("rule"));
    // A scope is not enough where no rule allows: default deny (users:write is in no rule).
    let writer = client_as(&server, "client", token("bob", "users:read users:write")).await;
    assert_status(
        delete(writer).await,
        Code::PermissionDenied,
        "POLICY_DENIED",
    );
    let no_scope = client_as(&server, "client", token("carol", "")).await;
    assert_status(
        get_user(&no_scope).await,
        Code::PermissionDenied,
        "POLICY_DENIED",
    );
    // Deny rules come first: an admin subject over a partner certificate may not delete.
    let partner_admin = client_as(&server, "partner-acme", token("admin-pat", "")).await;
    assert_status(
        delete(partner_admin).await,
        Code::PermissionDenied,
        "POLICY_DENIED",
    );
    let admin = client_as(&server, "client", token("admin-ann", "")).await;
    delete(admin).await.expect("admins: allow");

    let samples_now = samples(&server.scrape().await);
    let decided = |decision: &str, rule: &str| {
        value(
            &samples_now,
            "jisu_authz_decisions_total",
            &[("decision", decision), ("rule", rule)],
        )
    };
    assert_eq!(decided("allow", "readers"), 1.0);
    assert_eq!(decided("deny", "partners-no-deletes"), 1.0);
    assert_eq!(decided("allow", "admins"), 1.0);
    assert_eq!(decided("deny", "default"), 3.0); // reader delete, writer delete, carol

    // Hot reload: readers lose GetUser; a broken file keeps the last good policy.
    std::fs::write(
        &policy,
        POLICY.replace("UserService/Get*", "UserService/Nothing"),
    )
    .unwrap();
    server.wait_for_reload("policy", "ok", 1.0).await;
    let reader = client_as(&server, "client", token("alice", "users:read")).await;
    assert_status(
        get_user(&reader).await,
        Code::PermissionDenied,
        "POLICY_DENIED",
    );
    std::fs::write(&policy, "[[rule]]\nname = \"oops\"\neffect = \"perhaps\"\n").unwrap();
    server.wait_for_reload("policy", "error", 1.0).await;
    assert_status(
        get_user(&reader).await,
        Code::PermissionDenied,
        "POLICY_DENIED",
    );
    let lister = client_as(&server, "client", token("dan", ALL_SCOPES)).await;
    let mut list = lister
        .users()
        .list_users(jisu::pb::ListUsersRequest::default())
        .await
        .expect("the last good policy still allows List*")
        .into_inner();
    assert!(list.message().await.unwrap().is_some());
}
