//! Who is calling and how we know: TLS configs and peer identity, certificates minted with
//! rcgen, JWT issuing and verification, and the method → scope policy.
pub mod certs;
pub mod jwt;
pub mod policy;
pub mod tls;
