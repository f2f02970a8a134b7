//! A token for user A reaches only A's record and orders: B's answer NOT_FOUND exactly as
//! missing ones do, ordering for B is PERMISSION_DENIED; an `admin` token reaches all.

use std::time::Duration;

use crate::common::{ALL_SCOPES, Calls, TestServer, assert_status};
use jisu::{
    client::JisuClient,
    pb::{
        BatchGetUsersRequest, CancelOrderRequest, CreateOrderRequest, CreateUserRequest,
        DeleteUserRequest, GetOrderRequest, GetUserRequest, ListUsersRequest, OrderItem,
        StreamOrderUpdatesRequest, TrackOrdersRequest, UpdateUserRequest, order_event,
        track_orders_request,
    },
};
use tonic::Code;

fn order_for(user: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        user_id: user.into(),
        items: vec![OrderItem {
            product_id: "P1".into(),
            product_name: "Widget".into(),
            quantity: 1,
            price: 5.0,
        }],
        idempotency_key: String::new(),
    }
}

#[tokio::test]
async fn a_users_token_reaches_only_that_users_data() {
    let server = TestServer::start().await;
    let service = server.client(ALL_SCOPES).await;
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let user = service
            .users()
            .create_user(CreateUserRequest {
                name: name.into(),
                email: format!("{name}@jisu.dev"),
                phone: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(user.id);
    }
    let (alice_id, bob_id) = (ids[0].clone(), ids[1].clone());
    let bobs_order = service
        .orders()
        .create_order(order_for(&bob_id))
        .await
        .unwrap()
        .into_inner();
    let server = &server;
    let as_user = |sub: &str, scopes: &str| {
        let token = server.token_for(sub, scopes);
        async move { server.client_with_token(Some(token)).await }
    };
    let alice: JisuClient = as_user(&alice_id, ALL_SCOPES).await;

    // Her own record and orders: fine.
    alice
        .users()
        .get_user(GetUserRequest {
            user_id: alice_id.clone(),
        })
        .await
        .unwrap();
    let hers = alice
        .orders()
        .create_order(order_for(&alice_id))
        .await
        .unwrap()
        .into_inner();
    alice
        .orders()
        .get_order(GetOrderRequest {
            order_id: hers.order_id.clone(),
        })
        .await
        .unwrap();

    // Bob's record looks exactly like a user that does not exist.
    let theirs = alice
        .users()
        .get_user(GetUserRequest {
            user_id: bob_id.clone(),
        })
        .await;
    let missing = alice.get_user("USER9999").await;
    let (theirs, missing) = (theirs.unwrap_err(), missing.unwrap_err());
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(
        theirs.message().replace(&bob_id, "ID"),
        missing.message().replace("USER9999", "ID"),
        "no difference between someone else's and nobody's"
    );
    let update = alice
        .users()
        .update_user(UpdateUserRequest {
            user_id: bob_id.clone(),
            name: Some("pwned".into()),
            ..Default::default()
        })
        .await;
    assert_status(update, Code::NotFound, "USER_NOT_FOUND");
    let delete = alice
        .users()
        .delete_user(DeleteUserRequest {
            user_id: bob_id.clone(),
        })
        .await;
    assert_status(delete, Code::NotFound, "USER_NOT_FOUND");
    let batch = alice
        .users()
        .batch_get_users(BatchGetUsersRequest {
            user_ids: vec![alice_id.clone(), bob_id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        batch
            .users
            .iter()
            .map(|u| u.id.as_str())
            .collect::<Vec<_>>(),
        [alice_id.as_str()]
    );
    let mut list = alice
        .users()
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut listed = Vec::new();
    while let Some(u) = list.message().await.unwrap() {
        listed.push(u.id);
    }
    assert_eq!(listed, std::slice::from_ref(&alice_id));
    let create = alice
        .users()
        .create_user(CreateUserRequest {
            name: "sock puppet".into(),
            email: "puppet@jisu.dev".into(),
            phone: String::new(),
        })
        .await;
    assert_status(create, Code::PermissionDenied, "END_USER_TOKEN");

    // Bob's orders: invisible and untouchable; no ordering in his name.
    assert_status(
        alice.orders().create_order(order_for(&bob_id)).await,
        Code::PermissionDenied,
        "NOT_OWNER",
    );
    let get = alice
        .orders()
        .get_order(GetOrderRequest {
            order_id: bobs_order.order_id.clone(),
        })
        .await;
    assert_status(get, Code::NotFound, "ORDER_NOT_FOUND");
    let stream = alice
        .orders()
        .stream_order_updates(StreamOrderUpdatesRequest {
            order_id: bobs_order.order_id.clone(),
        })
        .await;
    assert_status(stream.map(drop), Code::NotFound, "ORDER_NOT_FOUND");
    let cancel = alice
        .orders()
        .cancel_order(CancelOrderRequest {
            order_id: bobs_order.order_id.clone(),
            reason: String::new(),
        })
        .await;
    assert_status(cancel, Code::NotFound, "ORDER_NOT_FOUND");
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(TrackOrdersRequest {
        action: Some(track_orders_request::Action::Subscribe(
            bobs_order.order_id.clone(),
        )),
    })
    .await
    .unwrap();
    let mut track = alice
        .orders()
        .track_orders(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let event = tokio::time::timeout(Duration::from_secs(5), track.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event.event {
        Some(order_event::Event::Error(e)) => assert_eq!(e.code, "NOT_FOUND"),
        other => panic!("Bob's order leaked to Alice's TrackOrders: {other:?}"),
    }
    drop(tx);
    let still = service
        .orders()
        .get_order(GetOrderRequest {
            order_id: bobs_order.order_id.clone(),
        })
        .await;
    assert_eq!(
        still.unwrap().into_inner().status,
        "PENDING",
        "nothing changed"
    );

    // The same subject with the admin scope reaches everyone.
    let admin = as_user(&alice_id, &format!("{ALL_SCOPES} admin")).await;
    admin
        .users()
        .get_user(GetUserRequest {
            user_id: bob_id.clone(),
        })
        .await
        .unwrap();
    admin
        .orders()
        .get_order(GetOrderRequest {
            order_id: bobs_order.order_id,
        })
        .await
        .unwrap();
}
