//! Who is calling and how we know: TLS configs and peer identity, certificates minted with
//! rcgen, JWT issuing and verification, the authorization policy, and credential reload.
//! (The method table lives in [`crate::api`].)
pub mod authz;
pub mod certs;
pub mod jwks;
pub mod jwt;
pub mod reload;
pub mod revocation;
pub mod tls;
