//! OrderService over real mTLS: success and error paths.

use crate::common::{ALL_SCOPES, TestServer, assert_status, violated_fields};
use futures::StreamExt;
use jisu::pb::{CreateOrderRequest, GetOrderRequest, OrderItem, StreamOrderUpdatesRequest};
use tonic::Code;

fn item(product: &str, quantity: i32, price: f64) -> OrderItem {
    OrderItem {
        product_id: product.into(),
        product_name: format!("{product} name"),
        quantity,
        price,
    }
}

#[tokio::test]
async fn create_computes_total_and_get_and_stream_return_it() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let client = server.client(ALL_SCOPES).await;
    let mut orders = client.orders();
    let order = orders
        .create_order(CreateOrderRequest {
            user_id: "USER0001".into(),
            items: vec![
                item("P1", 2, 9.5),
                item("P2", 3, 0.0),
                item("P3", 1, 100.25),
            ],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.total_amount, 119.25);
    assert_eq!(order.status, "PENDING");
    assert_eq!(order.items.len(), 3);
    assert_eq!(order.order_id.len(), 11);
    assert!(order.order_id.starts_with("ORD"));
    assert!(
        order.order_id[3..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)),
        "{}",
        order.order_id
    );

    let got = orders
        .get_order(GetOrderRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, order);

    let mut stream = orders
        .stream_order_updates(StreamOrderUpdatesRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // The current state first; the stream then follows changes (tests/streaming.rs).
    assert_eq!(stream.next().await.unwrap().unwrap(), order);
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn create_refuses_unknown_users_and_bad_items() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let mut orders = server.client(ALL_SCOPES).await.orders();

    assert_status(
        orders
            .create_order(CreateOrderRequest {
                user_id: "USER0999".into(),
                items: vec![item("P1", 1, 1.0)],
                idempotency_key: String::new(),
            })
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let status = assert_status(
        orders
            .create_order(CreateOrderRequest {
                user_id: "USER0001".into(),
                items: vec![],
                idempotency_key: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["items"]);

    let status = assert_status(
        orders
            .create_order(CreateOrderRequest {
                user_id: String::new(),
                items: vec![
                    item("P1", 1, 1.0),
                    item("P2", 0, 1.0),
                    item("P3", -4, -0.5),
                    item("", 1, f64::NAN),
                    item("P5", 1, f64::INFINITY),
                ],
                idempotency_key: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        violated_fields(&status),
        [
            "user_id",
            "items[1].quantity",
            "items[2].quantity",
            "items[2].price",
            "items[3].product_id",
            "items[3].price",
            "items[4].price",
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_orders_are_not_found() {
    let server = TestServer::start().await;
    let mut orders = server.client(ALL_SCOPES).await.orders();
    assert_status(
        orders
            .get_order(GetOrderRequest {
                order_id: "ORD00000000".into(),
            })
            .await,
        Code::NotFound,
        "ORDER_NOT_FOUND",
    );
    assert_status(
        orders
            .stream_order_updates(StreamOrderUpdatesRequest {
                order_id: "ORD00000000".into(),
            })
            .await,
        Code::NotFound,
        "ORDER_NOT_FOUND",
    );
    server.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_makes_create_order_safe_to_retry() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let mut orders = server.client(ALL_SCOPES).await.orders();
    let request = |user: &str, key: &str| CreateOrderRequest {
        user_id: user.into(),
        items: vec![OrderItem {
            product_id: "P".into(),
            product_name: String::new(),
            quantity: 1,
            price: 1.0,
        }],
        idempotency_key: key.into(),
    };
    let first = orders
        .create_order(request("USER0001", "k-1"))
        .await
        .unwrap()
        .into_inner();
    let again = orders
        .create_order(request("USER0001", "k-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "the same key gives the same order");
    // The key in metadata works the same way.
    let mut with_metadata = tonic::Request::new(request("USER0001", ""));
    with_metadata
        .metadata_mut()
        .insert("idempotency-key", "k-1".parse().unwrap());
    assert_eq!(
        orders
            .create_order(with_metadata)
            .await
            .unwrap()
            .into_inner(),
        first
    );
    // Keys belong to their user; no key means a new order each time.
    let other = orders
        .create_order(request("USER0002", "k-1"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.order_id, first.order_id);
    let a = orders.create_order(request("USER0001", "")).await.unwrap();
    let b = orders.create_order(request("USER0001", "")).await.unwrap();
    assert_ne!(a.get_ref().order_id, b.get_ref().order_id);
    let status = assert_status(
        orders.create_order(request("USER0001", "bad key\n")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(violated_fields(&status), ["idempotency_key"]);
}
