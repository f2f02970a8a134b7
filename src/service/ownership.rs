//! Ownership. A token issued to an end user — its `sub` is a user id such as `USER0042` —
//! reaches only that user's record and orders: other users' records and orders answer
//! NOT_FOUND, exactly as if they did not exist (nothing about them leaks), and placing an
//! order for someone else or creating users is PERMISSION_DENIED. Tokens with the `admin`
//! scope, and tokens for services and operators (any other subject), are not restricted.
use std::sync::Arc;

use crate::{error::Error, pb::Order, security::jwt::Principal, store::user_number};

/// The scope that lifts ownership checks.
pub const ADMIN_SCOPE: &str = "admin";

/// Whose data a call may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Anyone's: services, operators, `admin` tokens (and calls without a token, which
    /// only in-process callers can make).
    Unrestricted,
    /// Only this user's (the user's number).
    User(u64),
}

impl Viewer {
    /// The viewer of a call, from the principal the auth layer put in its extensions.
    pub fn of(extensions: &http::Extensions) -> Self {
        match extensions.get::<Arc<Principal>>() {
            Some(p) if !p.has_scope(ADMIN_SCOPE) => {
                user_number(&p.subject).map_or(Viewer::Unrestricted, Viewer::User)
            }
            _ => Viewer::Unrestricted,
        }
    }

    /// May see and change user `id` (`USER0042` and `USER00042` are the same user).
    pub fn sees_user(&self, id: &str) -> bool {
        match self {
            Viewer::Unrestricted => true,
            Viewer::User(me) => user_number(id) == Some(*me),
        }
    }

    /// May see and change this order.
    pub fn owns(&self, order: &Order) -> bool {
        self.sees_user(&order.user_id)
    }

    /// Refuses what an end user's token may not do at all.
    pub fn may_create_users(&self) -> Result<(), Error> {
        match self {
            Viewer::Unrestricted => Ok(()),
            Viewer::User(_) => Err(Error::PermissionDenied {
                reason: "END_USER_TOKEN",
                message: "an end user's token cannot create users; use a service or admin token"
                    .into(),
            }),
        }
    }

    /// Refuses an order placed for another user.
    pub fn may_order_for(&self, user_id: &str) -> Result<(), Error> {
        if self.sees_user(user_id) {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            reason: "NOT_OWNER",
            message: "an end user's token can place orders only for that user".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(sub: &str, scopes: &[&str]) -> Viewer {
        let mut ext = http::Extensions::new();
        ext.insert(Arc::new(Principal {
            subject: sub.into(),
            issuer: "jisu".into(),
            audiences: vec![],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: u64::MAX,
            not_before: None,
            cert_thumbprint: None,
        }));
        Viewer::of(&ext)
    }

    #[test]
    fn end_users_see_themselves_only_and_admins_and_services_everyone() {
        let alice = viewer("USER0042", &["users:read"]);
        assert!(alice.sees_user("USER0042") && alice.sees_user("USER00042"));
        assert!(!alice.sees_user("USER0043") && !alice.sees_user("garbage"));
        assert!(alice.may_create_users().is_err());
        assert_eq!(viewer("USER0042", &["admin"]), Viewer::Unrestricted);
        assert_eq!(viewer("svc-billing", &[]), Viewer::Unrestricted);
        assert_eq!(Viewer::of(&http::Extensions::new()), Viewer::Unrestricted);
    }
}
