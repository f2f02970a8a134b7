//! The protos are compiled by the `jisu-api` crate (`crates/jisu-api/build.rs`); this one
//! only tells cargo that the SQL migrations embedded by `sqlx::migrate!` are inputs.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
