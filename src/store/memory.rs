//! A concurrent in-memory [`Store`]: one lock around ordered maps, so every operation is
//! atomic and `ListUsers` order is stable. Order ids are random, retried on collision.
use std::collections::{BTreeMap, HashMap};

use parking_lot::RwLock;
use rand::Rng;

use super::{NewOrder, NewUser, Store, StoreError, UserPage, UserPatch, user_id, user_number};
use crate::pb::{Order, User};

/// The in-memory backend. Data lives as long as the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    users: BTreeMap<u64, User>,
    /// Lower-cased email → user number, for uniqueness.
    emails: HashMap<String, u64>,
    last_user: u64,
    orders: HashMap<String, Order>,
    /// (user id, idempotency key) → the order it created.
    idempotency: HashMap<(String, String), String>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn email_key(email: &str) -> String {
    email.to_ascii_lowercase()
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn create_user(&self, new: NewUser, now: i64) -> Result<User, StoreError> {
        let mut inner = self.inner.write();
        let key = email_key(&new.email);
        if inner.emails.contains_key(&key) {
            return Err(StoreError::EmailTaken);
        }
        inner.last_user += 1;
        let n = inner.last_user;
        let user = User {
            id: user_id(n),
            name: new.name,
            email: new.email,
            phone: new.phone,
            status: "ACTIVE".into(),
            created_at: now,
            updated_at: now,
        };
        inner.emails.insert(key, n);
        inner.users.insert(n, user.clone());
        Ok(user)
    }

    async fn user(&self, id: &str) -> Result<User, StoreError> {
        let n = user_number(id).ok_or(StoreError::UserNotFound)?;
        self.inner
            .read()
            .users
            .get(&n)
            .cloned()
            .ok_or(StoreError::UserNotFound)
    }

    async fn update_user(&self, id: &str, patch: UserPatch, now: i64) -> Result<User, StoreError> {
        let n = user_number(id).ok_or(StoreError::UserNotFound)?;
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        let current = inner.users.get(&n).ok_or(StoreError::UserNotFound)?;
        let new_email_key = match &patch.email {
            Some(email) if email_key(email) != email_key(&current.email) => {
                let key = email_key(email);
                if inner.emails.contains_key(&key) {
                    return Err(StoreError::EmailTaken);
                }
                Some(key)
            }
            _ => None,
        };
        let user = inner.users.get_mut(&n).ok_or(StoreError::UserNotFound)?;
        if let Some(key) = new_email_key {
            inner.emails.remove(&email_key(&user.email));
            inner.emails.insert(key, n);
        }
        if let Some(name) = patch.name {
            user.name = name;
        }
        if let Some(email) = patch.email {
            user.email = email;
        }
        if let Some(phone) = patch.phone {
            user.phone = phone;
        }
        if let Some(status) = patch.status {
            user.status = status;
        }
        user.updated_at = now;
        Ok(user.clone())
    }

    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        let n = user_number(id).ok_or(StoreError::UserNotFound)?;
        let mut inner = self.inner.write();
        let user = inner.users.remove(&n).ok_or(StoreError::UserNotFound)?;
        inner.emails.remove(&email_key(&user.email));
        Ok(())
    }

    async fn list_users(
        &self,
        after: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<UserPage, StoreError> {
        let start = after.and_then(user_number).map_or(0, |n| n + 1);
        let inner = self.inner.read();
        let mut matching = inner
            .users
            .range(start..)
            .map(|(_, u)| u)
            .filter(|u| status.is_none_or(|s| u.status == s));
        let users: Vec<User> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        Ok(UserPage { users, more })
    }

    async fn users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        let inner = self.inner.read();
        let mut seen = std::collections::HashSet::new();
        Ok(ids
            .iter()
            .filter_map(|id| user_number(id))
            .filter(|n| seen.insert(*n))
            .filter_map(|n| inner.users.get(&n).cloned())
            .collect())
    }

    async fn create_order(&self, new: NewOrder, now: i64) -> Result<Order, StoreError> {
        let mut inner = self.inner.write();
        let key = new
            .idempotency_key
            .as_ref()
            .map(|k| (new.user_id.clone(), k.clone()));
        if let Some(first) = key.as_ref().and_then(|k| inner.idempotency.get(k))
            && let Some(order) = inner.orders.get(first)
        {
            return Ok(order.clone());
        }
        if new.check_user {
            let n = user_number(&new.user_id).ok_or(StoreError::UserNotFound)?;
            if !inner.users.contains_key(&n) {
                return Err(StoreError::UserNotFound);
            }
        }
        let mut rng = rand::rng();
        let order_id = loop {
            let id = format!("ORD{:08X}", rng.random::<u32>());
            if !inner.orders.contains_key(&id) {
                break id;
            }
        };
        let order = Order {
            order_id: order_id.clone(),
            user_id: new.user_id,
            items: new.items,
            total_amount: new.total_amount,
            status: "PENDING".into(),
            created_at: now,
            updated_at: now,
            cancel_reason: String::new(),
        };
        inner.orders.insert(order_id.clone(), order.clone());
        if let Some(key) = key {
            inner.idempotency.insert(key, order_id);
        }
        Ok(order)
    }

    async fn transition_order(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        cancel_reason: Option<&str>,
        now: i64,
    ) -> Result<Order, StoreError> {
        let mut inner = self.inner.write();
        let order = inner.orders.get_mut(id).ok_or(StoreError::OrderNotFound)?;
        if !from.contains(&order.status.as_str()) {
            return Err(StoreError::IllegalTransition {
                from: order.status.clone(),
            });
        }
        order.status = to.to_owned();
        order.updated_at = now;
        if let Some(reason) = cancel_reason {
            order.cancel_reason = reason.to_owned();
        }
        Ok(order.clone())
    }

    async fn order(&self, id: &str) -> Result<Order, StoreError> {
        self.inner
            .read()
            .orders
            .get(id)
            .cloned()
            .ok_or(StoreError::OrderNotFound)
    }

    async fn user_count(&self) -> Result<usize, StoreError> {
        Ok(self.inner.read().users.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_user(email: &str) -> NewUser {
        NewUser {
            name: "n".into(),
            email: email.into(),
            phone: String::new(),
        }
    }

    #[tokio::test]
    async fn ids_are_never_reused_after_delete() {
        let store = MemoryStore::new();
        let a = store.create_user(new_user("a@x.io"), 1).await.unwrap();
        let b = store.create_user(new_user("b@x.io"), 1).await.unwrap();
        store.delete_user(&b.id).await.unwrap();
        let c = store.create_user(new_user("c@x.io"), 1).await.unwrap();
        assert_eq!((a.id.as_str(), c.id.as_str()), ("USER0001", "USER0003"));
    }

    #[tokio::test]
    async fn email_uniqueness_ignores_case_and_follows_updates() {
        let store = MemoryStore::new();
        let a = store.create_user(new_user("a@x.io"), 1).await.unwrap();
        assert_eq!(
            store.create_user(new_user("A@X.io"), 1).await.unwrap_err(),
            StoreError::EmailTaken
        );
        let patch = UserPatch {
            email: Some("new@x.io".into()),
            ..Default::default()
        };
        store.update_user(&a.id, patch, 2).await.unwrap();
        // The old address is free again, the new one is taken.
        store.create_user(new_user("a@x.io"), 3).await.unwrap();
        assert_eq!(
            store
                .create_user(new_user("new@x.io"), 3)
                .await
                .unwrap_err(),
            StoreError::EmailTaken
        );
    }

    #[tokio::test]
    async fn list_pages_in_id_order_past_four_digits() {
        let store = MemoryStore::new();
        store.inner.write().last_user = 9998;
        for i in 0..4 {
            store
                .create_user(new_user(&format!("{i}@x.io")), 1)
                .await
                .unwrap();
        }
        let page = store.list_users(None, None, 3).await.unwrap();
        let ids: Vec<_> = page.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["USER9999", "USER10000", "USER10001"]);
        assert!(page.more);
        let rest = store.list_users(Some("USER10001"), None, 3).await.unwrap();
        assert_eq!(rest.users.len(), 1);
        assert!(!rest.more);
    }
}
