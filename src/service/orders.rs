//! `jisucloud.v1.OrderService`: orders placed by users.
use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{
    OrderEvents, UserDirectory, now,
    order_events::is_terminal,
    ownership::Viewer,
    store_error,
    streams::{Shutdown, guard},
    validate::Violations,
};
use crate::{
    error::Error,
    pb::{
        CancelOrderRequest, CreateOrderRequest, GetOrderRequest, Order, OrderEvent, OrderItem,
        StreamOrderUpdatesRequest, TrackError, TrackOrdersRequest, UpdateOrderStatusRequest,
        order_event, order_service_server::OrderService, track_orders_request,
    },
    store::{NewOrder, Store, StoreError},
};

pub const MAX_ITEMS: usize = 1000;
pub const MAX_QUANTITY: i32 = 1_000_000;
pub const MAX_PRICE: f64 = 1e12;
pub const MAX_CANCEL_REASON: usize = 500;
/// Subscriptions one `TrackOrders` stream may hold.
pub const MAX_TRACKED: usize = 1000;
/// Events a `TrackOrders` stream holds for a client that does not read.
const TRACK_BUFFER: usize = 16;

/// The state each forward step requires: `to` is allowed only from `from`.
const STEPS: [(&str, &str); 4] = [
    ("PAID", "PENDING"),
    ("PROCESSING", "PAID"),
    ("SHIPPED", "PROCESSING"),
    ("DELIVERED", "SHIPPED"),
];
const CANCELLABLE: [&str; 2] = ["PENDING", "PAID"];

/// The OrderService handlers over a [`Store`].
#[derive(Clone)]
pub struct OrderApi {
    store: Arc<dyn Store>,
    users: UserDirectory,
    events: OrderEvents,
    shutdown: Shutdown,
}

impl std::fmt::Debug for OrderApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderApi").finish_non_exhaustive()
    }
}

impl OrderApi {
    pub fn new(store: Arc<dyn Store>, users: UserDirectory, events: OrderEvents) -> Self {
        Self {
            store,
            users,
            events,
            shutdown: Shutdown::default(),
        }
    }

    /// Streams end with UNAVAILABLE when `shutdown` triggers.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Stores a status change and pushes it to the order's watchers. An end user may
    /// change only their own orders (others: NOT_FOUND).
    async fn transition(
        &self,
        viewer: &Viewer,
        id: &str,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
    ) -> Result<Order, Status> {
        if *viewer != Viewer::Unrestricted {
            self.owned_order(viewer, id).await?;
        }
        let order = self
            .store
            .transition_order(id, from, to, reason, now())
            .await
            .map_err(|e| store_error(e, id))?;
        self.events.publish(&order);
        tracing::info!(order_id = %id, status = %to, "order status changed");
        Ok(order)
    }

    /// The order, if this viewer may see it; NOT_FOUND as for a missing order otherwise.
    async fn owned_order(&self, viewer: &Viewer, id: &str) -> Result<Order, Status> {
        let order = self.store.order(id).await.map_err(|e| store_error(e, id))?;
        if !viewer.owns(&order) {
            return Err(store_error(StoreError::OrderNotFound, id).into());
        }
        Ok(order)
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
        let (metadata, extensions, req) = request.into_parts();
        let mut v = Violations::default();
        v.id("user_id", &req.user_id);
        validate_items(&mut v, &req.items);
        let key = if req.idempotency_key.is_empty() {
            metadata
                .get(crate::api::IDEMPOTENCY_KEY)
                .map(|k| k.to_str().unwrap_or_default().to_owned())
        } else {
            Some(req.idempotency_key.clone())
        };
        if let Some(k) = &key
            && (k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()))
        {
            v.add(
                "idempotency_key",
                "must be 1 to 128 printable ASCII characters",
            );
        }
        v.finish()?;
        Viewer::of(&extensions).may_order_for(&req.user_id)?;
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
            idempotency_key: key,
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
        let viewer = Viewer::of(request.extensions());
        let id = request.into_inner().order_id;
        let mut v = Violations::default();
        v.id("order_id", &id);
        v.finish()?;
        Ok(Response::new(self.owned_order(&viewer, &id).await?))
    }

    type StreamOrderUpdatesStream = Pin<Box<dyn Stream<Item = Result<Order, Status>> + Send>>;

    async fn stream_order_updates(
        &self,
        request: Request<StreamOrderUpdatesRequest>,
    ) -> Result<Response<Self::StreamOrderUpdatesStream>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let id = req.order_id;
        let mut v = Violations::default();
        v.id("order_id", &id);
        v.finish()?;
        // Watch first, then read: a change lands in one or the other.
        let watch = self.events.watch(&id);
        let order = self.owned_order(&Viewer::of(&extensions), &id).await?;
        watch.seed(&order);
        let updates = futures::StreamExt::map(watch.into_stream(), Ok);
        Ok(Response::new(Box::pin(guard(
            updates,
            &metadata,
            &self.shutdown,
        ))))
    }

    async fn update_order_status(
        &self,
        request: Request<UpdateOrderStatusRequest>,
    ) -> Result<Response<Order>, Status> {
        let viewer = Viewer::of(request.extensions());
        let req = request.into_inner();
        let mut v = Violations::default();
        v.id("order_id", &req.order_id);
        let from = STEPS.iter().find(|(to, _)| *to == req.status).map(|s| s.1);
        if from.is_none() {
            let hint = if req.status == "CANCELLED" {
                "use CancelOrder to cancel"
            } else {
                "must be PAID, PROCESSING, SHIPPED or DELIVERED"
            };
            v.add("status", format!("{hint}, got {:?}", req.status));
        }
        v.finish()?;
        let from = from.unwrap_or_default();
        let order = self
            .transition(&viewer, &req.order_id, &[from], &req.status, None)
            .await?;
        Ok(Response::new(order))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let viewer = Viewer::of(request.extensions());
        let req = request.into_inner();
        let mut v = Violations::default();
        v.id("order_id", &req.order_id);
        if req.reason.chars().count() > MAX_CANCEL_REASON {
            v.add("reason", format!("at most {MAX_CANCEL_REASON} characters"));
        }
        v.finish()?;
        let order = self
            .transition(
                &viewer,
                &req.order_id,
                &CANCELLABLE,
                "CANCELLED",
                Some(req.reason.trim()),
            )
            .await?;
        Ok(Response::new(order))
    }

    type TrackOrdersStream = Pin<Box<dyn Stream<Item = Result<OrderEvent, Status>> + Send>>;

    async fn track_orders(
        &self,
        request: Request<tonic::Streaming<TrackOrdersRequest>>,
    ) -> Result<Response<Self::TrackOrdersStream>, Status> {
        let (metadata, extensions, incoming) = request.into_parts();
        let tracker = Tracker {
            viewer: Viewer::of(&extensions),
            store: self.store.clone(),
            events: self.events.clone(),
            incoming,
            subscriptions: tokio_stream::StreamMap::new(),
            pending: std::collections::VecDeque::new(),
            client_done: false,
        };
        let events = futures::stream::unfold(tracker, |mut t| async move {
            let item = t.next_event().await?;
            Some((item, t))
        });
        Ok(Response::new(Box::pin(guard(
            events,
            &metadata,
            &self.shutdown,
        ))))
    }
}

/// The state of one `TrackOrders` stream. Driven by the response being read, so a client
/// that stops reading stops the work (and its watches skip to the latest state).
struct Tracker {
    /// Whose orders this stream may follow (others look unknown).
    viewer: Viewer,
    store: Arc<dyn Store>,
    events: OrderEvents,
    incoming: tonic::Streaming<TrackOrdersRequest>,
    subscriptions: tokio_stream::StreamMap<String, Pin<Box<dyn Stream<Item = Order> + Send>>>,
    /// In-band errors waiting to be sent (bounded by the requests read).
    pending: std::collections::VecDeque<OrderEvent>,
    client_done: bool,
}

fn track_error(order_id: &str, code: &str, message: impl Into<String>) -> OrderEvent {
    OrderEvent {
        event: Some(order_event::Event::Error(TrackError {
            order_id: order_id.to_owned(),
            code: code.to_owned(),
            message: message.into(),
        })),
    }
}

impl Tracker {
    /// The next event to send; `None` ends the stream with OK.
    async fn next_event(&mut self) -> Option<Result<OrderEvent, Status>> {
        use futures::StreamExt;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.client_done && self.subscriptions.is_empty() {
                return None;
            }
            // Requests are read only while few errors are queued: a client that floods
            // bad subscriptions without reading is held by flow control.
            let read_requests = !self.client_done && self.pending.len() < TRACK_BUFFER;
            tokio::select! {
                request = self.incoming.next(), if read_requests => match request {
                    Some(Ok(request)) => self.handle(request).await,
                    Some(Err(status)) => return Some(Err(status)),
                    None => self.client_done = true,
                },
                Some((_, order)) = self.subscriptions.next(), if !self.subscriptions.is_empty() => {
                    if is_terminal(&order.status) {
                        self.subscriptions.remove(&order.order_id);
                    }
                    return Some(Ok(OrderEvent { event: Some(order_event::Event::Order(order)) }));
                }
            }
        }
    }

    async fn handle(&mut self, request: TrackOrdersRequest) {
        match request.action {
            Some(track_orders_request::Action::Subscribe(id)) => self.subscribe(id).await,
            Some(track_orders_request::Action::Unsubscribe(id)) => {
                self.subscriptions.remove(&id);
            }
            None => self.pending.push_back(track_error(
                "",
                "INVALID_ARGUMENT",
                "a TrackOrdersRequest needs subscribe or unsubscribe",
            )),
        }
    }

    async fn subscribe(&mut self, id: String) {
        let mut v = Violations::default();
        v.id("subscribe", &id);
        if let Err(Error::InvalidArgument(violations)) = v.finish() {
            let message = violations
                .first()
                .map(|f| f.description.clone())
                .unwrap_or_default();
            self.pending
                .push_back(track_error(&id, "INVALID_ARGUMENT", message));
            return;
        }
        if self.subscriptions.contains_key(&id) {
            return;
        }
        if self.subscriptions.len() >= MAX_TRACKED {
            self.pending.push_back(track_error(
                &id,
                "RESOURCE_EXHAUSTED",
                format!("at most {MAX_TRACKED} subscriptions per stream"),
            ));
            return;
        }
        let watch = self.events.watch(&id);
        let found = match self.store.order(&id).await {
            Ok(order) if !self.viewer.owns(&order) => Err(StoreError::OrderNotFound),
            other => other,
        };
        match found {
            Ok(order) => {
                watch.seed(&order);
                self.subscriptions.insert(id, watch.into_stream());
            }
            Err(StoreError::OrderNotFound) => self.pending.push_back(track_error(
                &id,
                "NOT_FOUND",
                format!("order {id:?} not found"),
            )),
            Err(e) => {
                tracing::warn!(error = %e, order_id = %id, "subscription failed");
                self.pending.push_back(track_error(
                    &id,
                    "UNAVAILABLE",
                    "the order could not be read; subscribe again later",
                ));
            }
        }
    }
}
