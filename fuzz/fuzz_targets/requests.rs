//! Every request message of the API, decoded from arbitrary bytes and — when it decodes —
//! handed to the real service handler over a fresh in-memory store. Any panic is a bug:
//! bad input must become a status.
#![no_main]

use std::sync::{Arc, OnceLock};

use jisu::{
    pb::{self, order_service_server::OrderService, user_service_server::UserService},
    service::{OrderApi, OrderEvents, UserApi, UserDirectory},
    store::{MemoryStore, Store},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn call<T, F, R>(body: &[u8], handler: F)
where
    T: Message + Default,
    F: FnOnce(tonic::Request<T>) -> R,
    R: std::future::Future,
{
    if let Ok(message) = T::decode(body) {
        runtime().block_on(handler(tonic::Request::new(message)));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    runtime().block_on(async {
        let _ = jisu::store::load_demo_users(store.as_ref(), 0).await;
    });
    let users = UserApi::new(store.clone());
    let orders = OrderApi::new(
        store,
        UserDirectory::Local,
        OrderEvents::new(metrics::Gauge::noop()),
    );
    match which % 9 {
        0 => call(body, |r: tonic::Request<pb::CreateUserRequest>| {
            users.create_user(r)
        }),
        1 => call(body, |r: tonic::Request<pb::GetUserRequest>| {
            users.get_user(r)
        }),
        2 => call(body, |r: tonic::Request<pb::UpdateUserRequest>| {
            users.update_user(r)
        }),
        3 => call(body, |r: tonic::Request<pb::DeleteUserRequest>| {
            users.delete_user(r)
        }),
        4 => call(body, |r: tonic::Request<pb::BatchGetUsersRequest>| {
            users.batch_get_users(r)
        }),
        5 => call(body, |r: tonic::Request<pb::ListUsersRequest>| {
            users.list_users(r)
        }),
        6 => call(body, |r: tonic::Request<pb::CreateOrderRequest>| {
            orders.create_order(r)
        }),
        7 => call(body, |r: tonic::Request<pb::UpdateOrderStatusRequest>| {
            orders.update_order_status(r)
        }),
        _ => call(body, |r: tonic::Request<pb::CancelOrderRequest>| {
            orders.cancel_order(r)
        }),
    }
    // The remaining request types only decode (their handlers stream or need a peer).
    let _ = pb::GetOrderRequest::decode(body);
    let _ = pb::StreamOrderUpdatesRequest::decode(body);
    let _ = pb::TrackOrdersRequest::decode(body);
    let _ = pb::UploadRequest::decode(body);
    let _ = pb::DownloadRequest::decode(body);
    let _ = pb::GetUploadRequest::decode(body);
});
