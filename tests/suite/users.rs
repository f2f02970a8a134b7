//! UserService over real mTLS: every RPC's success and error paths.

use crate::common::{ALL_SCOPES, TestServer, assert_status, violated_fields};
use futures::StreamExt;
use jisu::pb::{
    BatchGetUsersRequest, CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest,
    UpdateUserRequest, User, user_service_client::UserServiceClient,
};
use tonic::{Code, codec::CompressionEncoding};

fn new_user(name: &str, email: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: name.into(),
        email: email.into(),
        phone: "+86 138-0000-0000".into(),
    }
}

type Client = UserServiceClient<jisu::client::Authed>;

async fn list(users: &mut Client, req: ListUsersRequest) -> (Vec<User>, Option<String>) {
    let mut stream = users.list_users(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(u) = stream.next().await {
        out.push(u.unwrap());
    }
    let next = stream.trailers().await.unwrap().and_then(|t| {
        t.get("x-next-page-token")
            .map(|v| v.to_str().unwrap().to_owned())
    });
    (out, next)
}

#[tokio::test]
async fn create_get_update_delete_round_trip() {
    let server = TestServer::start().await;
    let mut users = server.client(ALL_SCOPES).await.users();

    let created = users
        .create_user(new_user("Ada", "ada@jisu.dev"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.id, "USER0001");
    assert_eq!(created.status, "ACTIVE");
    assert!(created.created_at > 0);
    assert_eq!(created.created_at, created.updated_at);

    let got = users
        .get_user(GetUserRequest {
            user_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    // Only the fields that are set change; an empty phone clears it.
    let updated = users
        .update_user(UpdateUserRequest {
            user_id: created.id.clone(),
            phone: Some(String::new()),
            status: Some("SUSPENDED".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Ada");
    assert_eq!(updated.email, "ada@jisu.dev");
    assert_eq!(updated.phone, "");
    assert_eq!(updated.status, "SUSPENDED");
    assert!(updated.updated_at >= created.updated_at);

    let deleted = users
        .delete_user(DeleteUserRequest {
            user_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.success);
    assert_status(
        users
            .get_user(GetUserRequest {
                user_id: created.id.clone(),
            })
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    assert_status(
        users
            .delete_user(DeleteUserRequest {
                user_id: created.id,
            })
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    server.stop().await;
}

#[tokio::test]
async fn ids_come_from_a_counter_and_are_never_reused() {
    let server = TestServer::start().await;
    let mut users = server.client(ALL_SCOPES).await.users();
    let a = users
        .create_user(new_user("A", "a@x.io"))
        .await
        .unwrap()
        .into_inner();
    let b = users
        .create_user(new_user("B", "b@x.io"))
        .await
        .unwrap()
        .into_inner();
    users
        .delete_user(DeleteUserRequest {
            user_id: b.id.clone(),
        })
        .await
        .unwrap();
    let c = users
        .create_user(new_user("C", "c@x.io"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!([a.id, b.id, c.id], ["USER0001", "USER0002", "USER0003"]);
    server.stop().await;
}

#[tokio::test]
async fn create_validates_fields_with_bad_request_details() {
    let server = TestServer::start().await;
    let mut users = server.client(ALL_SCOPES).await.users();

    let status = assert_status(
        users
            .create_user(CreateUserRequest {
                name: "  ".into(),
                email: "not-an-email".into(),
                phone: "call me".into(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["name", "email", "phone"]);
    assert!(status.message().contains("email"), "{}", status.message());

    let status = assert_status(
        users.create_user(new_user("x", "")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["email"]);

    users
        .create_user(new_user("Ada", "ada@jisu.dev"))
        .await
        .unwrap();
    assert_status(
        users.create_user(new_user("Other", "ADA@jisu.dev")).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    server.stop().await;
}

#[tokio::test]
async fn update_errors_name_the_problem() {
    let server = TestServer::start().await;
    let mut users = server.client(ALL_SCOPES).await.users();
    let a = users
        .create_user(new_user("A", "a@x.io"))
        .await
        .unwrap()
        .into_inner();
    users.create_user(new_user("B", "b@x.io")).await.unwrap();

    assert_status(
        users
            .update_user(UpdateUserRequest {
                user_id: "USER0999".into(),
                name: Some("x".into()),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    assert_status(
        users
            .update_user(UpdateUserRequest {
                user_id: a.id.clone(),
                email: Some("b@x.io".into()),
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    let status = assert_status(
        users
            .update_user(UpdateUserRequest {
                user_id: a.id.clone(),
                email: Some("nope".into()),
                status: Some("DELETED".into()),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["email", "status"]);
    // Nothing changed after the refusals.
    let still = users
        .get_user(GetUserRequest {
            user_id: a.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still, a);
    let status = assert_status(
        users
            .get_user(GetUserRequest {
                user_id: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["user_id"]);
    server.stop().await;
}

#[tokio::test]
async fn list_pages_through_demo_data_in_stable_order() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let mut users = server.client(ALL_SCOPES).await.users();

    // Default page size 10.
    let (first, next) = list(&mut users, ListUsersRequest::default()).await;
    assert_eq!(first.len(), 10);
    assert_eq!(first[0].id, "USER0001");
    assert_eq!(next.as_deref(), Some("USER0010"));

    // Follow the trailer token to the end: every user once, in id order.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = list(
            &mut users,
            ListUsersRequest {
                page_size: 30,
                page_token: token.clone(),
                status: String::new(),
            },
        )
        .await;
        seen.extend(page.into_iter().map(|u| u.id));
        match next {
            Some(t) => token = t,
            None => break,
        }
    }
    let expected: Vec<String> = (1..=100).map(|i| format!("USER{i:04}")).collect();
    assert_eq!(seen, expected);

    // A user id resumes after that user (what a client does after a broken stream).
    let (resumed, _) = list(
        &mut users,
        ListUsersRequest {
            page_size: 2,
            page_token: "USER0042".into(),
            status: String::new(),
        },
    )
    .await;
    let ids: Vec<_> = resumed.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["USER0043", "USER0044"]);
    server.stop().await;
}

#[tokio::test]
async fn list_filters_by_status_and_rejects_bad_arguments() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let mut users = server.client(ALL_SCOPES).await.users();
    for id in ["USER0003", "USER0050", "USER0099"] {
        users
            .update_user(UpdateUserRequest {
                user_id: id.into(),
                status: Some("INACTIVE".into()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let (inactive, next) = list(
        &mut users,
        ListUsersRequest {
            page_size: 100,
            page_token: String::new(),
            status: "INACTIVE".into(),
        },
    )
    .await;
    let ids: Vec<_> = inactive.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["USER0003", "USER0050", "USER0099"]);
    assert_eq!(next, None);

    for (req, field) in [
        (
            ListUsersRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListUsersRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            ListUsersRequest {
                status: "active".into(),
                ..Default::default()
            },
            "status",
        ),
    ] {
        let status = assert_status(
            users.list_users(req).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), [field]);
    }
    server.stop().await;
}

#[tokio::test]
async fn list_page_size_is_capped_at_1000() {
    let server = TestServer::start().await;
    let client = server.client(ALL_SCOPES).await;
    let creates = (0..1001).map(|i| {
        let mut users = client.users();
        async move {
            users
                .create_user(new_user("u", &format!("u{i}@x.io")))
                .await
                .unwrap();
        }
    });
    futures::stream::iter(creates)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut users = client.users();
    let (page, next) = list(
        &mut users,
        ListUsersRequest {
            page_size: 5000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(page.len(), 1000);
    assert_eq!(next.as_deref(), Some("USER1000"));
    server.stop().await;
}

#[tokio::test]
async fn batch_get_omits_unknown_ids_and_caps_the_batch() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let mut users = server.client(ALL_SCOPES).await.users();
    let found = users
        .batch_get_users(BatchGetUsersRequest {
            user_ids: vec![
                "USER0007".into(),
                "USER9999".into(),
                "nonsense".into(),
                "USER0002".into(),
                "USER0007".into(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = found.users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["USER0007", "USER0002"]);

    let status = assert_status(
        users
            .batch_get_users(BatchGetUsersRequest {
                user_ids: (0..1001).map(|i| format!("USER{i:04}")).collect(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["user_ids"]);
    server.stop().await;
}

#[tokio::test]
async fn compressed_requests_are_accepted_and_responses_compressed_on_request() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let client = server.client(ALL_SCOPES).await;
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut users = client
            .users()
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let reply = users
            .get_user(GetUserRequest {
                user_id: "USER0001".into(),
            })
            .await
            .unwrap();
        let used = reply
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(used.as_deref(), Some(encoding.to_string().as_str()));
        assert_eq!(reply.into_inner().id, "USER0001");
    }
    // Without asking, the response is not compressed.
    let reply = client
        .users()
        .get_user(GetUserRequest {
            user_id: "USER0001".into(),
        })
        .await
        .unwrap();
    assert!(reply.metadata().get("grpc-encoding").is_none());
    server.stop().await;
}
