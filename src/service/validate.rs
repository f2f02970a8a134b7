//! Field checks shared by the services; each failure names the field and the rule.
use crate::{error::FieldViolation, pb::USER_STATUSES};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_EMAIL_BYTES: usize = 254;
pub const MAX_PHONE_CHARS: usize = 32;
pub const MAX_ID_BYTES: usize = 64;

/// Collects violations so one response can name every bad field.
#[derive(Debug, Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// `Err(InvalidArgument)` when anything was added.
    pub fn finish(self) -> Result<(), crate::Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(crate::Error::InvalidArgument(self.0))
        }
    }

    pub fn name(&mut self, field: &str, name: &str) {
        let chars = name.chars().count();
        if name.trim().is_empty() {
            self.add(field, "is required and cannot be blank");
        } else if chars > MAX_NAME_CHARS {
            self.add(
                field,
                format!("is {chars} characters; at most {MAX_NAME_CHARS} allowed"),
            );
        } else if name.chars().any(char::is_control) {
            self.add(field, "cannot contain control characters");
        }
    }

    pub fn email(&mut self, field: &str, email: &str) {
        if email.is_empty() {
            self.add(field, "is required");
        } else if !is_valid_email(email) {
            self.add(
                field,
                "is not a valid email address (expected local@domain.tld)",
            );
        }
    }

    pub fn phone(&mut self, field: &str, phone: &str) {
        let ok = phone.chars().count() <= MAX_PHONE_CHARS
            && phone
                .chars()
                .all(|c| c.is_ascii_digit() || " +-()".contains(c));
        if !ok {
            self.add(
                field,
                format!("may hold only digits, spaces and +-() (at most {MAX_PHONE_CHARS})"),
            );
        }
    }

    pub fn user_status(&mut self, field: &str, status: &str) {
        if !USER_STATUSES.contains(&status) {
            self.add(
                field,
                format!("must be one of {}", USER_STATUSES.join(", ")),
            );
        }
    }

    /// A required id: present and of sane length (unknown ids are NOT_FOUND later).
    pub fn id(&mut self, field: &str, id: &str) {
        if id.is_empty() {
            self.add(field, "is required");
        } else if id.len() > MAX_ID_BYTES {
            self.add(field, format!("is longer than {MAX_ID_BYTES} bytes"));
        }
    }
}

/// A syntactic check (RFC 5321 shapes, no quoted local parts): `local@label.label`.
pub fn is_valid_email(email: &str) -> bool {
    if email.len() > MAX_EMAIL_BYTES || !email.is_ascii() {
        return false;
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && !tld.bytes().all(|b| b.is_ascii_digit()));
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.io", "first.last+tag@sub.example.com", "user1@jisu.com"] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "", "plain", "@b.io", "a@", "a@b", "a@@b.io", "a b@c.io", "a@-b.io", "a@b..io",
            ".a@b.io", "a.@b.io", "a@b.1", "ü@b.io",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn violations_collect_every_field() {
        let mut v = Violations::default();
        v.name("name", " ");
        v.email("email", "nope");
        v.phone("phone", "12ab");
        let fields: Vec<_> = v.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["name", "email", "phone"]);
    }
}
