//! Who is calling and how we know: TLS configs and peer identity, certificates minted with
//! rcgen, JWT issuing and verification, the method → scope policy, and credential reload.
pub mod authz;
pub mod certs;
pub mod jwks;
pub mod jwt;
pub mod policy;
pub mod reload;
pub mod revocation;
pub mod tls;
