//! A store that misbehaves on purpose, for fault tests.
/// A MemoryStore whose `user()` misbehaves on purpose: panics for one id, or answers
/// "unavailable" for every id.
pub struct FaultyStore {
    inner: jisu::store::MemoryStore,
    panic_on: Option<&'static str>,
    stuck_on: Option<&'static str>,
    unavailable: bool,
}

impl FaultyStore {
    pub fn panic_on(id: &'static str) -> Self {
        Self {
            inner: jisu::store::MemoryStore::new(),
            panic_on: Some(id),
            stuck_on: None,
            unavailable: false,
        }
    }
    /// Reading user `id` never completes (a hung backend).
    pub fn stuck_on(id: &'static str) -> Self {
        Self {
            inner: jisu::store::MemoryStore::new(),
            panic_on: None,
            stuck_on: Some(id),
            unavailable: false,
        }
    }
    pub fn unavailable() -> Self {
        Self {
            inner: jisu::store::MemoryStore::new(),
            panic_on: None,
            stuck_on: None,
            unavailable: true,
        }
    }
}

mod store_impl {
    use jisu::{
        pb::{Order, User},
        store::{NewOrder, NewUser, Store, StoreError, UserPage, UserPatch},
    };

    #[tonic::async_trait]
    impl Store for super::FaultyStore {
        async fn create_user(&self, user: NewUser, now: i64) -> Result<User, StoreError> {
            self.inner.create_user(user, now).await
        }
        async fn user(&self, id: &str) -> Result<User, StoreError> {
            if self.panic_on == Some(id) {
                panic!("simulated bug reading {id}");
            }
            if self.stuck_on == Some(id) {
                std::future::pending::<()>().await;
            }
            if self.unavailable {
                return Err(StoreError::Unavailable("simulated outage".into()));
            }
            self.inner.user(id).await
        }
        async fn update_user(
            &self,
            id: &str,
            patch: UserPatch,
            now: i64,
        ) -> Result<User, StoreError> {
            self.inner.update_user(id, patch, now).await
        }
        async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
            self.inner.delete_user(id).await
        }
        async fn list_users(
            &self,
            after: Option<&str>,
            status: Option<&str>,
            limit: usize,
        ) -> Result<UserPage, StoreError> {
            self.inner.list_users(after, status, limit).await
        }
        async fn users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
            self.inner.users(ids).await
        }
        async fn create_order(&self, order: NewOrder, now: i64) -> Result<Order, StoreError> {
            self.inner.create_order(order, now).await
        }
        async fn order(&self, id: &str) -> Result<Order, StoreError> {
            if self.panic_on == Some(id) {
                panic!("simulated bug reading {id}");
            }
            self.inner.order(id).await
        }
        async fn transition_order(
            &self,
            id: &str,
            from: &[&str],
            to: &str,
            cancel_reason: Option<&str>,
            now: i64,
        ) -> Result<Order, StoreError> {
            self.inner
                .transition_order(id, from, to, cancel_reason, now)
                .await
        }
        async fn user_count(&self) -> Result<usize, StoreError> {
            self.inner.user_count().await
        }
        async fn seed_users(&self, users: Vec<NewUser>, now: i64) -> Result<usize, StoreError> {
            self.inner.seed_users(users, now).await
        }
    }
}
