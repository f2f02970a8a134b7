//! Live order updates over real mTLS: pushed changes seen by several watchers, the state
//! machine, bidirectional tracking, lagging and departing watchers, stream deadlines and
//! stream metrics.

use std::time::Duration;

use crate::common::{ALL_SCOPES, TestServer, assert_status, samples, value};
use futures::StreamExt;
use jisu::{
    client::JisuClient,
    pb::{
        CancelOrderRequest, CreateOrderRequest, CreateUserRequest, Order, OrderEvent, OrderItem,
        StreamOrderUpdatesRequest, TrackOrdersRequest, UpdateOrderStatusRequest, order_event,
        track_orders_request,
    },
};
use tokio::sync::mpsc;
use tonic::Code;

async fn new_order(client: &JisuClient) -> Order {
    let user = client
        .users()
        .create_user(CreateUserRequest {
            name: "Watcher".into(),
            email: format!("w{}@jisu.dev", rand::random::<u32>()),
            phone: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    client
        .orders()
        .create_order(CreateOrderRequest {
            user_id: user.id,
            items: vec![OrderItem {
                product_id: "P1".into(),
                product_name: "widget".into(),
                quantity: 1,
                price: 3.0,
            }],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn set_status(client: &JisuClient, id: &str, status: &str) -> Order {
    client
        .orders()
        .update_order_status(UpdateOrderStatusRequest {
            order_id: id.into(),
            status: status.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn watch(client: &JisuClient, id: &str) -> tonic::Streaming<Order> {
    // A watch lives as long as the test needs it: the client's default 10 s deadline
    // would end the first of a thousand watches on a machine slow to open the rest.
    let mut request = tonic::Request::new(StreamOrderUpdatesRequest {
        order_id: id.into(),
    });
    request.set_timeout(Duration::from_secs(600));
    client
        .orders()
        .stream_order_updates(request)
        .await
        .unwrap()
        .into_inner()
}

async fn watchers(server: &TestServer) -> f64 {
    value(&samples(&server.scrape().await), "jisu_order_watchers", &[])
}

/// Polls /metrics (bounded) until the watcher gauge reads `want`.
async fn wait_for_watchers(server: &TestServer, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = watchers(server).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jisu_order_watchers stayed at {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const STEPS: [&str; 4] = ["PAID", "PROCESSING", "SHIPPED", "DELIVERED"];

#[tokio::test]
async fn several_watchers_see_each_change_pushed_as_it_happens() {
    let server = TestServer::start().await;
    let driver = server.client(ALL_SCOPES).await;
    let order = new_order(&driver).await;
    // Three watchers, each on its own connection.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let client = server.client("orders:read").await;
        let mut stream = watch(&client, &order.order_id).await;
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first, order, "the current state comes first");
        streams.push((client, stream));
    }
    let mut last_update = order.updated_at;
    for step in STEPS {
        let written = set_status(&driver, &order.order_id, step).await;
        for (_, stream) in &mut streams {
            let seen = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("pushed, not polled")
                .unwrap()
                .unwrap();
            assert_eq!(seen, written);
            assert!(seen.updated_at >= last_update);
        }
        last_update = written.updated_at;
    }
    for (_, stream) in &mut streams {
        assert!(
            stream.next().await.is_none(),
            "ends after the terminal state"
        );
        assert!(stream.trailers().await.is_ok(), "ends with OK");
    }
    drop(streams);
    wait_for_watchers(&server, 0.0).await;
}

#[tokio::test]
async fn the_state_machine_refuses_illegal_moves() {
    let server = TestServer::start().await;
    let client = server.client(ALL_SCOPES).await;
    let order = new_order(&client).await;
    let id = order.order_id.as_str();
    let skip = client
        .orders()
        .update_order_status(UpdateOrderStatusRequest {
            order_id: id.into(),
            status: "SHIPPED".into(),
        })
        .await;
    let status = assert_status(skip, Code::FailedPrecondition, "ILLEGAL_TRANSITION");
    assert!(status.message().contains("PENDING"), "{status:?}");
    let cancel_by_update = client
        .orders()
        .update_order_status(UpdateOrderStatusRequest {
            order_id: id.into(),
            status: "CANCELLED".into(),
        })
        .await;
    let status = assert_status(cancel_by_update, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(status.message().contains("CancelOrder"), "{status:?}");
    assert_status(
        client
            .orders()
            .update_order_status(UpdateOrderStatusRequest {
                order_id: "ORD00000000".into(),
                status: "PAID".into(),
            })
            .await,
        Code::NotFound,
        "ORDER_NOT_FOUND",
    );

    // Cancelled from PAID, with its reason; a watcher sees it and its stream ends.
    set_status(&client, id, "PAID").await;
    let mut stream = watch(&client, id).await;
    assert_eq!(stream.next().await.unwrap().unwrap().status, "PAID");
    let cancelled = client
        .orders()
        .cancel_order(CancelOrderRequest {
            order_id: id.into(),
            reason: "changed my mind".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, "CANCELLED");
    assert_eq!(cancelled.cancel_reason, "changed my mind");
    assert_eq!(stream.next().await.unwrap().unwrap(), cancelled);
    assert!(stream.next().await.is_none());
    // Nothing moves a cancelled order.
    assert_status(
        client
            .orders()
            .cancel_order(CancelOrderRequest {
                order_id: id.into(),
                reason: String::new(),
            })
            .await,
        Code::FailedPrecondition,
        "ILLEGAL_TRANSITION",
    );

    // PROCESSING can no longer be cancelled.
    let other = new_order(&client).await;
    set_status(&client, &other.order_id, "PAID").await;
    set_status(&client, &other.order_id, "PROCESSING").await;
    assert_status(
        client
            .orders()
            .cancel_order(CancelOrderRequest {
                order_id: other.order_id.clone(),
                reason: String::new(),
            })
            .await,
        Code::FailedPrecondition,
        "ILLEGAL_TRANSITION",
    );
    // Watching needs orders:read; moving needs orders:write.
    let reader = server.client("orders:read").await;
    assert_status(
        reader
            .orders()
            .update_order_status(UpdateOrderStatusRequest {
                order_id: other.order_id.clone(),
                status: "SHIPPED".into(),
            })
            .await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
}

fn subscribe(id: &str) -> TrackOrdersRequest {
    TrackOrdersRequest {
        action: Some(track_orders_request::Action::Subscribe(id.into())),
    }
}

fn unsubscribe(id: &str) -> TrackOrdersRequest {
    TrackOrdersRequest {
        action: Some(track_orders_request::Action::Unsubscribe(id.into())),
    }
}

async fn next_event(stream: &mut tonic::Streaming<OrderEvent>) -> order_event::Event {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event")
        .expect("stream open")
        .expect("event")
        .event
        .expect("event set")
}

fn as_order(event: order_event::Event) -> Order {
    match event {
        order_event::Event::Order(o) => o,
        other => panic!("expected an order, got {other:?}"),
    }
}

#[tokio::test]
async fn track_orders_subscribes_and_unsubscribes_on_one_stream() {
    let server = TestServer::start().await;
    let driver = server.client(ALL_SCOPES).await;
    let a = new_order(&driver).await;
    let b = new_order(&driver).await;
    let tracker = server.client("orders:read").await;
    let (tx, rx) = mpsc::channel(8);
    let mut events = tracker
        .orders()
        .track_orders(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    tx.send(subscribe(&a.order_id)).await.unwrap();
    assert_eq!(as_order(next_event(&mut events).await), a);
    // An unknown id is an in-band error; the stream stays up.
    tx.send(subscribe("ORD0BADBAD0")).await.unwrap();
    match next_event(&mut events).await {
        order_event::Event::Error(e) => {
            assert_eq!(e.order_id, "ORD0BADBAD0");
            assert_eq!(e.code, "NOT_FOUND");
        }
        other => panic!("expected an error event, got {other:?}"),
    }
    tx.send(subscribe("")).await.unwrap();
    match next_event(&mut events).await {
        order_event::Event::Error(e) => assert_eq!(e.code, "INVALID_ARGUMENT"),
        other => panic!("expected an error event, got {other:?}"),
    }
    tx.send(subscribe(&b.order_id)).await.unwrap();
    assert_eq!(as_order(next_event(&mut events).await), b);
    assert_eq!(watchers(&server).await, 2.0);

    let paid = set_status(&driver, &a.order_id, "PAID").await;
    assert_eq!(as_order(next_event(&mut events).await), paid);
    tx.send(unsubscribe(&a.order_id)).await.unwrap();
    wait_for_watchers(&server, 1.0).await;
    // A no longer reaches this stream; B does.
    set_status(&driver, &a.order_id, "PROCESSING").await;
    let b_paid = set_status(&driver, &b.order_id, "PAID").await;
    assert_eq!(as_order(next_event(&mut events).await), b_paid);
    // The client closes its side: the stream ends once B is over.
    drop(tx);
    let cancelled = driver
        .orders()
        .cancel_order(CancelOrderRequest {
            order_id: b.order_id.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(as_order(next_event(&mut events).await), cancelled);
    assert!(events.next().await.is_none());
    assert!(events.trailers().await.is_ok());
    wait_for_watchers(&server, 0.0).await;

    // Every subscription message was counted as received, every event as sent.
    let m = samples(&server.scrape().await);
    let labels = [("grpc_method", "TrackOrders"), ("grpc_type", "bidi_stream")];
    assert_eq!(value(&m, "grpc_server_msg_received_total", &labels), 5.0);
    assert_eq!(value(&m, "grpc_server_msg_sent_total", &labels), 7.0);
    let mut ok = labels.to_vec();
    ok.push(("grpc_code", "OK"));
    assert_eq!(value(&m, "grpc_server_handled_total", &ok), 1.0);
}

#[tokio::test]
async fn a_lagging_watcher_delays_nobody_and_still_ends_on_the_terminal_state() {
    let server = TestServer::start().await;
    let driver = server.client(ALL_SCOPES).await;
    let order = new_order(&driver).await;
    let lagging_client = server.client("orders:read").await;
    let mut lagging = watch(&lagging_client, &order.order_id).await;
    let live_client = server.client("orders:read").await;
    let mut live = watch(&live_client, &order.order_id).await;
    assert_eq!(live.next().await.unwrap().unwrap().status, "PENDING");
    // The lagging watcher reads nothing while the order goes all the way.
    for step in STEPS {
        tokio::time::timeout(
            Duration::from_secs(5),
            set_status(&driver, &order.order_id, step),
        )
        .await
        .expect("the writer is never held up by a watcher");
        let seen = live.next().await.unwrap().unwrap();
        assert_eq!(seen.status, step);
    }
    // Now it reads: states in order, ending with DELIVERED and OK.
    let mut seen = Vec::new();
    while let Some(order) = lagging.next().await {
        seen.push(order.unwrap().status);
    }
    assert_eq!(seen.first().map(String::as_str), Some("PENDING"));
    assert_eq!(seen.last().map(String::as_str), Some("DELIVERED"));
    let ranks: Vec<u8> = seen
        .iter()
        .map(|s| jisu::service::order_events::rank(s))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[tokio::test]
async fn a_thousand_watchers_on_one_order_all_finish_and_leave_nothing_behind() {
    let server = TestServer::start().await;
    let driver = server.client(ALL_SCOPES).await;
    let order = new_order(&driver).await;
    // 4 connections x 250 streams (the per-connection stream limit is 256).
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.client("orders:read").await);
    }
    let mut streams = Vec::new();
    for i in 0..1000 {
        let mut s = watch(&clients[i % 4], &order.order_id).await;
        assert_eq!(s.next().await.unwrap().unwrap().status, "PENDING");
        streams.push(s);
    }
    assert_eq!(watchers(&server).await, 1000.0);
    for step in STEPS {
        set_status(&driver, &order.order_id, step).await;
    }
    let finals = futures::future::join_all(streams.into_iter().map(|mut s| async move {
        let mut last = None;
        while let Some(o) = s.next().await {
            last = Some(o.unwrap().status);
        }
        last
    }))
    .await;
    assert!(finals.iter().all(|f| f.as_deref() == Some("DELIVERED")));
    wait_for_watchers(&server, 0.0).await;
}

#[tokio::test]
async fn cancelled_and_disconnected_streams_release_their_watches() {
    let server = TestServer::start().await;
    let driver = server.client(ALL_SCOPES).await;
    let order = new_order(&driver).await;
    let client = server.client("orders:read").await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut s = watch(&client, &order.order_id).await;
        s.next().await.unwrap().unwrap();
        open.push(s);
    }
    let (tx, rx) = mpsc::channel(8);
    let mut tracked = client
        .orders()
        .track_orders(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(subscribe(&order.order_id)).await.unwrap();
    next_event(&mut tracked).await;
    assert_eq!(watchers(&server).await, 6.0);
    // Cancelling (dropping) streams releases them at once.
    open.truncate(2);
    wait_for_watchers(&server, 3.0).await;
    // A whole connection going away releases the rest.
    drop((open, tracked, tx, client));
    wait_for_watchers(&server, 0.0).await;
}

#[tokio::test]
async fn a_stream_past_the_callers_deadline_ends_with_deadline_exceeded() {
    let server = TestServer::start().await;
    let driver = server.client(ALL_SCOPES).await;
    let order = new_order(&driver).await;
    let mut request = tonic::Request::new(StreamOrderUpdatesRequest {
        order_id: order.order_id.clone(),
    });
    request.set_timeout(Duration::from_millis(300));
    let mut stream = driver
        .orders()
        .stream_order_updates(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().status, "PENDING");
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().contains("deadline passed"),
        "ended by the server: {status:?}"
    );
    let m = samples(&server.scrape().await);
    assert_eq!(
        value(
            &m,
            "grpc_server_handled_total",
            &[
                ("grpc_method", "StreamOrderUpdates"),
                ("grpc_code", "DeadlineExceeded")
            ]
        ),
        1.0
    );
    wait_for_watchers(&server, 0.0).await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable_at_once() {
    let server = TestServer::start().await;
    let driver = server.client(ALL_SCOPES).await;
    let order = new_order(&driver).await;
    let mut watching = watch(&driver, &order.order_id).await;
    watching.next().await.unwrap().unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut tracked = driver
        .orders()
        .track_orders(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(subscribe(&order.order_id)).await.unwrap();
    next_event(&mut tracked).await;
    // The grace period is 10 s; open streams must not make shutdown wait for it.
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("shutdown does not wait for open streams");
    for status in [
        watching.next().await.unwrap().unwrap_err(),
        tracked.next().await.unwrap().unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"), "{status:?}");
    }
}
