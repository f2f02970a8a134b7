//! The store contract: one set of behaviour checks, run against every backend (in memory,
//! SQLite, PostgreSQL) in the same test run. A backend that drifts from the others fails
//! here by name, so the end-to-end suite needs to run only once (on SQLite, the default).
use std::sync::Arc;

use crate::common::postgres::fresh_database;
use jisu::{
    pb::OrderItem,
    store::{MemoryStore, NewOrder, NewUser, SqliteStore, Store, StoreError, UserPatch},
};

const NOW: i64 = 1_700_000_000;

fn user(name: &str, email: &str) -> NewUser {
    NewUser {
        name: name.into(),
        email: email.into(),
        phone: "13800000000".into(),
    }
}

fn order(user_id: &str, key: Option<&str>) -> NewOrder {
    NewOrder {
        user_id: user_id.into(),
        items: vec![OrderItem {
            product_id: "P1".into(),
            product_name: "Widget".into(),
            quantity: 2,
            price: 10.0,
        }],
        total_amount: 20.0,
        check_user: true,
        idempotency_key: key.map(str::to_owned),
    }
}

/// Every check, in order, on one empty store.
async fn contract(store: Arc<dyn Store>) {
    users_get_ids_that_are_never_reused(store.as_ref()).await;
    let fourth = emails_are_unique_ignoring_case(store.as_ref()).await;
    lists_page_in_id_order_and_filter_by_status(store.as_ref(), &fourth).await;
    batches_keep_the_order_asked_each_user_once(store.as_ref(), &fourth).await;
    orders_check_their_user_and_keys_return_the_first_order(store.as_ref(), &fourth).await;
    transitions_are_conditional(store.as_ref()).await;
    racing_writers_have_one_winner(store.clone()).await;
}

async fn users_get_ids_that_are_never_reused(store: &dyn Store) {
    let a = store
        .create_user(user("A", "a@jisu.dev"), NOW)
        .await
        .unwrap();
    let b = store
        .create_user(user("B", "b@jisu.dev"), NOW)
        .await
        .unwrap();
    assert_eq!((a.id.as_str(), b.id.as_str()), ("USER0001", "USER0002"));
    assert_eq!(a.status, "ACTIVE");
    assert_eq!(store.user("USER0001").await.unwrap(), a);
    store.delete_user("USER0002").await.unwrap();
    assert_eq!(
        store.delete_user("USER0002").await,
        Err(StoreError::UserNotFound)
    );
    assert_eq!(store.user("USER0002").await, Err(StoreError::UserNotFound));
    assert_eq!(store.user("not-an-id").await, Err(StoreError::UserNotFound));
    let c = store
        .create_user(user("C", "c@jisu.dev"), NOW)
        .await
        .unwrap();
    assert_eq!(c.id, "USER0003", "a deleted id is never handed out again");
    let patched = store
        .update_user(
            "USER0003",
            UserPatch {
                phone: Some("+86 1".into()),
                status: Some("INACTIVE".into()),
                ..UserPatch::default()
            },
            NOW + 1,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            patched.name.as_str(),
            patched.phone.as_str(),
            patched.status.as_str()
        ),
        ("C", "+86 1", "INACTIVE")
    );
    assert_eq!(patched.updated_at, NOW + 1);
    assert_eq!(
        store
            .update_user("USER0999", UserPatch::default(), NOW)
            .await,
        Err(StoreError::UserNotFound)
    );
}

/// Returns the id of the user it creates last (ids rise, but a refused insert may use one
/// up: PostgreSQL's identity column does).
async fn emails_are_unique_ignoring_case(store: &dyn Store) -> String {
    assert_eq!(
        store.create_user(user("A2", "A@JISU.dev"), NOW).await,
        Err(StoreError::EmailTaken)
    );
    assert_eq!(
        store
            .update_user(
                "USER0003",
                UserPatch {
                    email: Some("a@jisu.DEV".into()),
                    ..UserPatch::default()
                },
                NOW
            )
            .await,
        Err(StoreError::EmailTaken)
    );
    // The email of a deleted user is free again.
    let again = store
        .create_user(user("B again", "b@jisu.dev"), NOW)
        .await
        .unwrap();
    assert!(
        jisu::store::user_number(&again.id) > Some(3),
        "ids only rise: {}",
        again.id
    );
    again.id
}

async fn lists_page_in_id_order_and_filter_by_status(store: &dyn Store, fourth: &str) {
    // Users now: 1 (ACTIVE), 3 (INACTIVE), `fourth` (ACTIVE).
    let page = store.list_users(None, None, 2).await.unwrap();
    let ids: Vec<&str> = page.users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!((ids, page.more), (vec!["USER0001", "USER0003"], true));
    let page = store.list_users(Some("USER0003"), None, 2).await.unwrap();
    let ids: Vec<&str> = page.users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!((ids, page.more), (vec![fourth], false));
    let active = store.list_users(None, Some("ACTIVE"), 10).await.unwrap();
    let ids: Vec<&str> = active.users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["USER0001", fourth]);
    assert_eq!(store.user_count().await.unwrap(), 3);
}

async fn batches_keep_the_order_asked_each_user_once(store: &dyn Store, fourth: &str) {
    let ids: Vec<String> = [fourth, "nope", "USER0001", "USER0002", fourth]
        .map(String::from)
        .into();
    let got = store.users(&ids).await.unwrap();
    let got: Vec<&str> = got.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(got, [fourth, "USER0001"]);
    assert!(store.users(&[]).await.unwrap().is_empty());
}

async fn orders_check_their_user_and_keys_return_the_first_order(store: &dyn Store, fourth: &str) {
    assert_eq!(
        store.create_order(order("USER0002", None), NOW).await,
        Err(StoreError::UserNotFound)
    );
    let unchecked = NewOrder {
        check_user: false,
        ..order("USER9999", None)
    };
    store.create_order(unchecked, NOW).await.unwrap();
    let first = store
        .create_order(order("USER0001", Some("k1")), NOW)
        .await
        .unwrap();
    assert!(first.order_id.starts_with("ORD"), "{}", first.order_id);
    assert_eq!(
        (first.status.as_str(), first.total_amount),
        ("PENDING", 20.0)
    );
    assert_eq!(first.items.len(), 1);
    let again = store
        .create_order(order("USER0001", Some("k1")), NOW + 5)
        .await
        .unwrap();
    assert_eq!(again, first, "the same key returns the first order");
    let other_user = store
        .create_order(order(fourth, Some("k1")), NOW)
        .await
        .unwrap();
    assert_ne!(other_user.order_id, first.order_id, "keys are per user");
    assert_eq!(store.order(&first.order_id).await.unwrap(), first);
    assert_eq!(
        store.order("ORD00000000").await,
        Err(StoreError::OrderNotFound)
    );
}

async fn transitions_are_conditional(store: &dyn Store) {
    let o = store
        .create_order(order("USER0001", None), NOW)
        .await
        .unwrap();
    let paid = store
        .transition_order(&o.order_id, &["PENDING"], "PAID", None, NOW + 1)
        .await
        .unwrap();
    assert_eq!((paid.status.as_str(), paid.updated_at), ("PAID", NOW + 1));
    assert_eq!(
        store
            .transition_order(&o.order_id, &["PENDING"], "PAID", None, NOW + 2)
            .await,
        Err(StoreError::IllegalTransition {
            from: "PAID".into()
        })
    );
    let cancelled = store
        .transition_order(
            &o.order_id,
            &["PENDING", "PAID"],
            "CANCELLED",
            Some("out of stock"),
            NOW + 3,
        )
        .await
        .unwrap();
    assert_eq!(cancelled.cancel_reason, "out of stock");
    assert_eq!(
        store
            .transition_order("ORD00000000", &["PENDING"], "PAID", None, NOW)
            .await,
        Err(StoreError::OrderNotFound)
    );
}

async fn racing_writers_have_one_winner(store: Arc<dyn Store>) {
    // Eight writers, one email: exactly one user.
    let creates = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_user(user(&format!("Racer {i}"), "race@jisu.dev"), NOW)
                .await
        })
    });
    let results = futures::future::join_all(creates).await;
    let won = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let lost = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(StoreError::EmailTaken))))
        .count();
    assert_eq!((won, lost), (1, 7), "{results:?}");
    // Eight writers, one idempotency key: one order, and every writer gets it.
    let orders = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_order(order("USER0001", Some("race-key")), NOW)
                .await
        })
    });
    let ids: std::collections::BTreeSet<String> = futures::future::join_all(orders)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap().order_id)
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

/// On a store of its own: the demo seed goes only into an empty store, in order.
async fn seeding(store: &dyn Store) {
    let users = || vec![user("S1", "s1@jisu.dev"), user("S2", "s2@jisu.dev")];
    assert_eq!(store.seed_users(users(), NOW).await.unwrap(), 2);
    assert_eq!(store.seed_users(users(), NOW).await.unwrap(), 0);
    let page = store.list_users(None, None, 10).await.unwrap();
    let got: Vec<(&str, &str)> = page
        .users
        .iter()
        .map(|u| (u.id.as_str(), u.name.as_str()))
        .collect();
    assert_eq!(got, [("USER0001", "S1"), ("USER0002", "S2")]);
}

async fn sqlite() -> Arc<dyn Store> {
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(
        SqliteStore::open(&dir.join("contract.db"), 4)
            .await
            .unwrap(),
    )
}

async fn postgres() -> (Arc<dyn Store>, Option<crate::common::postgres::PgCluster>) {
    let (url, cluster) = fresh_database().await;
    let limits = jisu::store::postgres::PoolLimits {
        max_connections: 8,
        acquire_timeout: std::time::Duration::from_secs(10),
    };
    let store = jisu::store::PostgresStore::connect(&url, limits)
        .await
        .unwrap();
    (Arc::new(store), cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_contract() {
    contract(Arc::new(MemoryStore::new())).await;
    seeding(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_keeps_the_contract() {
    contract(sqlite().await).await;
    seeding(sqlite().await.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_contract() {
    let (store, _cluster) = postgres().await;
    contract(store).await;
    let (store, _cluster2) = postgres().await;
    seeding(store.as_ref()).await;
}
