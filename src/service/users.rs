//! `jisucloud.v1.UserService`: user accounts.
use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};

use super::streams::Shutdown;
use super::{now, ownership::Viewer, store_error, validate::Violations};
use crate::{
    pb::{
        BatchGetUsersRequest, BatchGetUsersResponse, CreateUserRequest, DeleteUserRequest,
        DeleteUserResponse, GetUserRequest, ListUsersRequest, UpdateUserRequest, User,
        user_service_server::UserService,
    },
    store::{NewUser, Store, StoreError, UserPage, UserPatch, user_number},
};

pub const DEFAULT_PAGE_SIZE: usize = 10;
pub const MAX_PAGE_SIZE: usize = 1000;
pub const MAX_BATCH_IDS: usize = 1000;
/// The UserService handlers over a [`Store`].
#[derive(Clone)]
pub struct UserApi {
    store: Arc<dyn Store>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for UserApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserApi").finish_non_exhaustive()
    }
}

impl UserApi {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            shutdown: Shutdown::default(),
        }
    }

    /// Streams end with UNAVAILABLE when `shutdown` triggers.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }
}

type UserStream = Pin<Box<dyn Stream<Item = Result<User, Status>> + Send>>;

#[tonic::async_trait]
impl UserService for UserApi {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let viewer = Viewer::of(request.extensions());
        let id = request.into_inner().user_id;
        let mut v = Violations::default();
        v.id("user_id", &id);
        v.finish()?;
        if !viewer.sees_user(&id) {
            return Err(store_error(StoreError::UserNotFound, &id).into());
        }
        let user = self
            .store
            .user(&id)
            .await
            .map_err(|e| store_error(e, &id))?;
        Ok(Response::new(user))
    }

    type ListUsersStream = UserStream;

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<Self::ListUsersStream>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let viewer = Viewer::of(&extensions);
        let mut v = Violations::default();
        let limit = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                v.add("page_size", "cannot be negative");
                0
            }
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        if !req.page_token.is_empty() && user_number(&req.page_token).is_none() {
            v.add(
                "page_token",
                "is not a page token of this API (use the x-next-page-token trailer or a user id)",
            );
        }
        if !req.status.is_empty() {
            v.user_status("status", &req.status);
        }
        v.finish()?;
        let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let status = (!req.status.is_empty()).then_some(req.status.as_str());
        let mut page = self
            .store
            .list_users(after, status, limit)
            .await
            .map_err(|e| store_error(e, ""))?;
        if let Viewer::User(_) = viewer {
            // An end user lists only themselves: one page, at most one user.
            page = match self.store.user(&viewer_id(&viewer)).await {
                Ok(me)
                    if status.is_none_or(|s| s == me.status)
                        && after.and_then(user_number) < user_number(&me.id) =>
                {
                    UserPage {
                        users: vec![me],
                        more: false,
                    }
                }
                Ok(_) | Err(StoreError::UserNotFound) => UserPage {
                    users: vec![],
                    more: false,
                },
                Err(e) => return Err(store_error(e, "").into()),
            };
        }
        // The next token is the last id sent; it goes out in the trailers with OK.
        let trailer = page
            .more
            .then(|| page.users.last().map(|u| u.id.clone()))
            .flatten()
            .map(|last| {
                let mut md = MetadataMap::new();
                if let Ok(value) = last.parse() {
                    md.insert(crate::api::NEXT_PAGE_TOKEN, value);
                }
                Err(Status::with_metadata(Code::Ok, "", md))
            });
        let items = page.users.into_iter().map(Ok).chain(trailer);
        // Produced as the client reads (h2 flow control): at most one page is held.
        Ok(Response::new(Box::pin(super::streams::guard(
            tokio_stream::iter(items),
            &metadata,
            &self.shutdown,
        ))))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        Viewer::of(request.extensions()).may_create_users()?;
        let req = request.into_inner();
        let mut v = Violations::default();
        v.name("name", &req.name);
        v.email("email", &req.email);
        v.phone("phone", &req.phone);
        v.finish()?;
        let new = NewUser {
            name: req.name.trim().to_owned(),
            email: req.email,
            phone: req.phone,
        };
        let user = self
            .store
            .create_user(new, now())
            .await
            .map_err(|e| store_error(e, ""))?;
        tracing::info!(user_id = %user.id, "user created");
        Ok(Response::new(user))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let viewer = Viewer::of(request.extensions());
        let req = request.into_inner();
        let mut v = Violations::default();
        v.id("user_id", &req.user_id);
        if let Some(name) = &req.name {
            v.name("name", name);
        }
        if let Some(email) = &req.email {
            v.email("email", email);
        }
        if let Some(phone) = &req.phone {
            v.phone("phone", phone);
        }
        if let Some(status) = &req.status {
            v.user_status("status", status);
        }
        v.finish()?;
        if !viewer.sees_user(&req.user_id) {
            return Err(store_error(StoreError::UserNotFound, &req.user_id).into());
        }
        let patch = UserPatch {
            name: req.name.map(|n| n.trim().to_owned()),
            email: req.email,
            phone: req.phone,
            status: req.status,
        };
        let user = self
            .store
            .update_user(&req.user_id, patch, now())
            .await
            .map_err(|e| store_error(e, &req.user_id))?;
        Ok(Response::new(user))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let viewer = Viewer::of(request.extensions());
        let id = request.into_inner().user_id;
        let mut v = Violations::default();
        v.id("user_id", &id);
        v.finish()?;
        if !viewer.sees_user(&id) {
            return Err(store_error(StoreError::UserNotFound, &id).into());
        }
        self.store
            .delete_user(&id)
            .await
            .map_err(|e| store_error(e, &id))?;
        tracing::info!(user_id = %id, "user deleted");
        Ok(Response::new(DeleteUserResponse { success: true }))
    }

    async fn batch_get_users(
        &self,
        request: Request<BatchGetUsersRequest>,
    ) -> Result<Response<BatchGetUsersResponse>, Status> {
        let viewer = Viewer::of(request.extensions());
        let ids = request.into_inner().user_ids;
        let mut v = Violations::default();
        if ids.len() > MAX_BATCH_IDS {
            v.add(
                "user_ids",
                format!("has {} ids; at most {MAX_BATCH_IDS} per call", ids.len()),
            );
        }
        v.finish()?;
        // Another user's id is treated like an unknown one: omitted.
        let ids: Vec<String> = ids.into_iter().filter(|id| viewer.sees_user(id)).collect();
        let users = self
            .store
            .users(&ids)
            .await
            .map_err(|e| store_error(e, ""))?;
        Ok(Response::new(BatchGetUsersResponse { users }))
    }
}

/// The id of an end user's own record.
fn viewer_id(viewer: &Viewer) -> String {
    match viewer {
        Viewer::User(n) => crate::store::user_id(*n),
        Viewer::Unrestricted => String::new(),
    }
}
