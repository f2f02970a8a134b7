//! Live order updates: one `tokio::sync::watch` channel per watched order.
//!
//! A write publishes the new state; every watcher of that order wakes. A watch channel
//! holds one value, so memory per order is constant however many watchers there are, the
//! writer never waits, and a watcher that lags simply reads the latest state next time
//! (states only move forward — see [`rank`] — so a lagging watcher never goes back in time
//! and always sees the terminal state). The channel of an order exists only while someone
//! watches it: the last watcher to leave removes it.
//!
//! Ordering: a watcher registers *before* reading the store, and a writer publishes
//! *after* writing it, so a change is either in what the watcher read or published to it.
//! Concurrent publications are ordered by [`rank`], never by arrival.
use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
};

use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::pb::Order;

/// Position of a status in the state machine; every legal change increases it.
pub fn rank(status: &str) -> u8 {
    match status {
        "PENDING" => 0,
        "PAID" => 1,
        "PROCESSING" => 2,
        "SHIPPED" => 3,
        "DELIVERED" => 4,
        "CANCELLED" => 5,
        _ => 0,
    }
}

/// No change can follow these.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "DELIVERED" | "CANCELLED")
}

type Slot = watch::Sender<Option<Order>>;

/// The registry of watched orders. Cheap to clone.
#[derive(Clone)]
pub struct OrderEvents {
    inner: Arc<Inner>,
}

struct Inner {
    orders: Mutex<HashMap<String, Slot>>,
    watchers: AtomicI64,
    gauge: metrics::Gauge,
}

impl std::fmt::Debug for OrderEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderEvents")
            .field("watchers", &self.watchers())
            .finish_non_exhaustive()
    }
}

fn newer(slot: &mut Option<Order>, order: &Order) -> bool {
    let is_newer = slot
        .as_ref()
        .is_none_or(|cur| rank(&order.status) > rank(&cur.status));
    if is_newer {
        *slot = Some(order.clone());
    }
    is_newer
}

impl OrderEvents {
    /// `gauge` follows the number of open watches (`jisu_order_watchers`).
    pub fn new(gauge: metrics::Gauge) -> Self {
        Self {
            inner: Arc::new(Inner {
                orders: Mutex::new(HashMap::new()),
                watchers: AtomicI64::new(0),
                gauge,
            }),
        }
    }

    /// Open watches, all orders together.
    pub fn watchers(&self) -> i64 {
        self.inner.watchers.load(Ordering::Relaxed)
    }

    /// Orders with at least one watcher.
    pub fn watched_orders(&self) -> usize {
        self.inner.orders.lock().len()
    }

    /// Registers a watcher of order `id`. Read the store after this, then [`Watch::seed`].
    pub fn watch(&self, id: &str) -> Watch {
        let rx = {
            let mut orders = self.inner.orders.lock();
            orders
                .entry(id.to_owned())
                .or_insert_with(|| watch::channel(None).0)
                .subscribe()
        };
        self.inner.watchers.fetch_add(1, Ordering::Relaxed);
        self.inner.gauge.increment(1.0);
        Watch {
            rx,
            id: id.to_owned(),
            events: self.clone(),
        }
    }

    /// Orders with at least one watcher here, by id.
    pub fn watched_ids(&self) -> Vec<String> {
        self.inner.orders.lock().keys().cloned().collect()
    }

    /// Relays changes written by other processes sharing the store (PostgreSQL
    /// LISTEN/NOTIFY) to the watchers here: an announced order that someone here watches
    /// is read and published; after a gap in the feed every watched order is re-read.
    /// Runs until the feed ends.
    pub async fn relay(
        self,
        store: std::sync::Arc<dyn crate::store::Store>,
        mut changes: futures::stream::BoxStream<'static, crate::store::Change>,
    ) {
        use futures::StreamExt as _;
        while let Some(change) = changes.next().await {
            let ids = match change {
                crate::store::Change::Order(id) => {
                    if !self.inner.orders.lock().contains_key(&id) {
                        continue;
                    }
                    vec![id]
                }
                crate::store::Change::Missed => self.watched_ids(),
            };
            for id in ids {
                match store.order(&id).await {
                    Ok(order) => self.publish(&order),
                    Err(e) => {
                        tracing::warn!(order_id = %id, error = %e, "order change not relayed")
                    }
                }
            }
        }
    }

    /// Tells the watchers of this order its new state (after it is stored).
    pub fn publish(&self, order: &Order) {
        if let Some(slot) = self.inner.orders.lock().get(&order.order_id) {
            slot.send_if_modified(|cur| newer(cur, order));
        }
    }
}

/// One watcher's registration; dropping it (or its stream) releases everything.
pub struct Watch {
    rx: watch::Receiver<Option<Order>>,
    id: String,
    events: OrderEvents,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("id", &self.id).finish()
    }
}

impl Watch {
    /// Supplies the state read from the store (ignored if a newer one was published).
    pub fn seed(&self, order: &Order) {
        if let Some(slot) = self.events.inner.orders.lock().get(&self.id) {
            slot.send_if_modified(|cur| newer(cur, order));
        }
    }

    /// The current state, then each newer one; ends after a terminal state.
    pub fn into_stream(self) -> Pin<Box<dyn Stream<Item = Order> + Send>> {
        Box::pin(futures::stream::unfold(
            (self, true, false),
            |(mut watch, first, done)| async move {
                if done {
                    return None;
                }
                if !first {
                    watch.rx.changed().await.ok()?;
                }
                loop {
                    let current = watch.rx.borrow_and_update().clone();
                    if let Some(order) = current {
                        let done = is_terminal(&order.status);
                        return Some((order, (watch, false, done)));
                    }
                    // Not seeded yet: wait for the first value.
                    watch.rx.changed().await.ok()?;
                }
            },
        ))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let inner = &self.events.inner;
        inner.watchers.fetch_sub(1, Ordering::Relaxed);
        inner.gauge.decrement(1.0);
        let mut orders = inner.orders.lock();
        // Ours is still alive here: the last watcher sees a count of one.
        if orders
            .get(&self.id)
            .is_some_and(|slot| slot.receiver_count() <= 1)
        {
            orders.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn order(status: &str) -> Order {
        Order {
            order_id: "ORD00000001".into(),
            status: status.into(),
            ..Order::default()
        }
    }

    #[tokio::test]
    async fn watchers_see_changes_in_order_and_release_on_drop() {
        let events = OrderEvents::new(metrics::Gauge::noop());
        let w = events.watch("ORD00000001");
        w.seed(&order("PENDING"));
        let mut stream = w.into_stream();
        assert_eq!(stream.next().await.unwrap().status, "PENDING");
        events.publish(&order("PAID"));
        assert_eq!(stream.next().await.unwrap().status, "PAID");
        // An older state published late is ignored; a lagging reader gets the latest.
        events.publish(&order("PENDING"));
        events.publish(&order("PROCESSING"));
        events.publish(&order("SHIPPED"));
        assert_eq!(stream.next().await.unwrap().status, "SHIPPED");
        assert_eq!(events.watchers(), 1);
        events.publish(&order("DELIVERED"));
        assert_eq!(stream.next().await.unwrap().status, "DELIVERED");
        assert!(stream.next().await.is_none(), "ends after a terminal state");
        drop(stream);
        assert_eq!(events.watchers(), 0);
        assert_eq!(events.watched_orders(), 0);
    }

    #[tokio::test]
    async fn many_watchers_share_one_slot() {
        let events = OrderEvents::new(metrics::Gauge::noop());
        let watches: Vec<_> = (0..10_000).map(|_| events.watch("ORD00000001")).collect();
        assert_eq!(events.watched_orders(), 1);
        assert_eq!(events.watchers(), 10_000);
        drop(watches);
        assert_eq!(events.watched_orders(), 0);
    }
}
