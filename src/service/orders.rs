//! `jisucloud.v1.OrderService`: orders placed by users.
use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{UserDirectory, now, store_error, validate::Violations};
use crate::{
    pb::{
        CreateOrderRequest, GetOrderRequest, Order, OrderItem, StreamOrderUpdatesRequest,
        order_service_server::OrderService,
    },
    store::{NewOrder, Store},
};

pub const MAX_ITEMS: usize = 1000;
pub const MAX_QUANTITY: i32 = 1_000_000;
pub const MAX_PRICE: f64 = 1e12;

/// The OrderService handlers over a [`Store`].
#[derive(Clone)]
pub struct OrderApi {
    store: Arc<dyn Store>,
    users: UserDirectory,
}

impl std::fmt::Debug for OrderApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderApi").finish_non_exhaustive()
    }
}

impl OrderApi {
    pub fn new(store: Arc<dyn Store>, users: UserDirectory) -> Self {
        Self { store, users }
    }
}

fn validate_items(v: &mut Violations, items: &[OrderItem]) {
    if items.is_empty() {
        v.add("items", "at least one item is required");
    } else if items.len() > MAX_ITEMS {
        v.add(
            "items",
            format!("has {} items; at most {MAX_ITEMS}", items.len()),
        );
        return;
    }
    for (i, item) in items.iter().enumerate() {
        if item.product_id.trim().is_empty() {
            v.add(format!("items[{i}].product_id"), "is required");
        }
        if item.quantity <= 0 || item.quantity > MAX_QUANTITY {
            v.add(
                format!("items[{i}].quantity"),
                format!(
                    "must be between 1 and {MAX_QUANTITY}, got {}",
                    item.quantity
                ),
            );
        }
        if !item.price.is_finite() || item.price < 0.0 || item.price > MAX_PRICE {
            v.add(
                format!("items[{i}].price"),
                format!(
                    "must be a finite number between 0 and {MAX_PRICE}, got {}",
                    item.price
                ),
            );
        }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let (metadata, _, req) = request.into_parts();
        let mut v = Violations::default();
        v.id("user_id", &req.user_id);
        validate_items(&mut v, &req.items);
        v.finish()?;
        self.users.check(&req.user_id, &metadata).await?;
        let total_amount = req
            .items
            .iter()
            .map(|i| i.price * f64::from(i.quantity))
            .sum();
        let new = NewOrder {
            user_id: req.user_id.clone(),
            items: req.items,
            total_amount,
            check_user: self.users.is_local(),
        };
        let order = self
            .store
            .create_order(new, now())
            .await
            .map_err(|e| store_error(e, &req.user_id))?;
        tracing::info!(order_id = %order.order_id, user_id = %order.user_id, "order created");
        Ok(Response::new(order))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let id = request.into_inner().order_id;
        let mut v = Violations::default();
        v.id("order_id", &id);
        v.finish()?;
        let order = self
            .store
            .order(&id)
            .await
            .map_err(|e| store_error(e, &id))?;
        Ok(Response::new(order))
    }

    type StreamOrderUpdatesStream = Pin<Box<dyn Stream<Item = Result<Order, Status>> + Send>>;

    async fn stream_order_updates(
        &self,
        request: Request<StreamOrderUpdatesRequest>,
    ) -> Result<Response<Self::StreamOrderUpdatesStream>, Status> {
        let id = request.into_inner().order_id;
        let mut v = Violations::default();
        v.id("order_id", &id);
        v.finish()?;
        let order = self
            .store
            .order(&id)
            .await
            .map_err(|e| store_error(e, &id))?;
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(order)))))
    }
}
