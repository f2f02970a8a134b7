//! Test harness, one concern per file: [`server`] (the real `Application` over mTLS, typed
//! calls), [`binary`] (the real `jisu serve` process), [`scrape`] (`/metrics`),
//! [`assertions`], [`faulty`] (a misbehaving store), [`tls_probe`] (raw handshakes) and
//! [`postgres`] (throwaway databases).
use std::path::Path;

pub mod assertions;
pub mod binary;
pub mod faulty;
pub mod postgres;
pub mod scrape;
pub mod server;
pub mod tls_probe;

pub use assertions::*;
pub use binary::*;
pub use faulty::*;
pub use scrape::*;
pub use server::*;

pub const ALL_SCOPES: &str =
    "users:read users:write orders:read orders:write files:read files:write";

pub const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// A third-party tool from the venv `scripts/test` installs (`.venv`), or from `env`.
/// Missing, it fails the test: it never skips.
pub fn tool(env: &str, venv_bin: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(MANIFEST).join(".venv/bin").join(venv_bin));
    assert!(
        path.exists(),
        "{} not found: run scripts/test (it installs the interop tools) or set {env}",
        path.display()
    );
    path
}
