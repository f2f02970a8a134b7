//! Credentials that change without a restart: the server certificate and key, the client
//! CA bundle, the client CRL, the JWT verification key and the authorization policy are
//! watched on disk (inotify through the
//! `notify` crate) and re-read on SIGHUP. A new set is validated first (the whole rustls
//! configuration is built from it) and swapped in atomically: new handshakes use it, open
//! connections and streams keep going. A broken file keeps the last good set and is
//! reported — a warning in the log and `jisu_credential_reload_total{kind,result}`.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::Watcher as _;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::{
    security::{
        authz::{Policy, PolicyHandle},
        jwt::{KeySet, TokenVerifier},
        tls::{self, SharedAcceptor},
    },
    telemetry::metrics::Metrics,
};

/// What is watched and what gets replaced.
#[derive(Clone)]
pub struct Reloadable {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// Used once it exists. Once loaded, removing it changes nothing: the last loaded
    /// CRL stays in force (fail closed) until a valid new one appears or the server
    /// restarts.
    pub crl: PathBuf,
    pub jwt_public_key: PathBuf,
    /// `jwt_public_key` is a JWK set (else a PEM key).
    pub jwt_is_jwks: bool,
    pub allow_tls12: bool,
    pub acceptor: SharedAcceptor,
    pub verifier: TokenVerifier,
    /// The policy file and the handle its rules are swapped into (None: built-in policy).
    pub policy: Option<(PathBuf, PolicyHandle)>,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("cert", &self.cert)
            .field("client_ca", &self.client_ca)
            .field("jwt_public_key", &self.jwt_public_key)
            .finish_non_exhaustive()
    }
}

/// What the credential files held when they were last loaded, to reload only what changed.
/// Taken *before* the files are read at start-up, so a change while the server starts is
/// reloaded rather than missed.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    tls: Option<[u8; 32]>,
    /// A CRL is in force (its file existed when the TLS set was loaded).
    crl: bool,
    jwt: Option<[u8; 32]>,
    policy: Option<[u8; 32]>,
}

impl Loaded {
    pub fn read(
        cert: &Path,
        key: &Path,
        client_ca: &Path,
        crl: &Path,
        jwt: &Path,
        policy: Option<&Path>,
    ) -> Self {
        Self {
            tls: tls_digest(cert, key, client_ca, crl),
            crl: crl.exists(),
            jwt: digest(&[jwt]),
            policy: policy.and_then(|p| digest(&[p])),
        }
    }
}

fn digest(paths: &[&Path]) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    for p in paths {
        h.update(std::fs::read(p).ok()?);
    }
    Some(h.finalize().into())
}

/// The TLS files' digest; a CRL that does not exist (yet) differs from an empty one.
fn tls_digest(cert: &Path, key: &Path, client_ca: &Path, crl: &Path) -> Option<[u8; 32]> {
    let crl = std::fs::read(crl).ok();
    let files = digest(&[cert, key, client_ca])?;
    let mut h = Sha256::new();
    h.update(files);
    h.update([u8::from(crl.is_some())]);
    h.update(crl.unwrap_or_default());
    Some(h.finalize().into())
}

impl Reloadable {
    fn count(&self, kind: &'static str, result: &'static str) {
        self.metrics
            .counter(
                "jisu_credential_reload_total",
                &[("kind", kind), ("result", result)],
            )
            .increment(1);
    }

    fn reload(&self, loaded: &mut Loaded) {
        let now = tls_digest(&self.cert, &self.key, &self.client_ca, &self.crl);
        if now.is_some() && now != loaded.tls && loaded.crl && !self.crl.exists() {
            // Removing the CRL must not un-revoke anyone: keep the whole last good set.
            tracing::warn!(
                crl = %self.crl.display(),
                "the CRL was removed: keeping the last loaded one (and the rest of the TLS \
                 set) until a valid CRL appears there again"
            );
            self.count("tls", "error");
            loaded.tls = now;
        } else if now.is_some() && now != loaded.tls {
            let files = tls::ServerTlsFiles {
                cert: &self.cert,
                key: &self.key,
                client_ca: &self.client_ca,
                crl: Some(&self.crl),
            };
            match tls::server_config(&files, self.allow_tls12) {
                Ok(config) => {
                    *self.acceptor.write() = TlsAcceptor::from(config);
                    loaded.tls = now;
                    loaded.crl = self.crl.exists();
                    watch_expiries(&self.metrics, &self.cert, &self.client_ca, &self.crl);
                    tracing::info!(cert = %self.cert.display(), "TLS credentials reloaded");
                    self.count("tls", "ok");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new TLS credentials refused; keeping the last good set");
                    self.count("tls", "error");
                    // Do not retry the same broken bytes on every event.
                    loaded.tls = now;
                }
            }
        }
        let now = digest(&[self.jwt_public_key.as_path()]);
        if now.is_some() && now != loaded.jwt {
            let bytes = std::fs::read(&self.jwt_public_key).unwrap_or_default();
            let keys = if self.jwt_is_jwks {
                KeySet::from_jwks(&bytes)
            } else {
                KeySet::from_pem(&bytes).map_err(|e| e.to_string())
            };
            match keys.map(|keys| self.verifier.replace_keys(keys)) {
                Ok(()) => {
                    tracing::info!(key = %self.jwt_public_key.display(), "JWT verification key reloaded");
                    self.count("jwt", "ok");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new JWT key refused; keeping the last good one");
                    self.count("jwt", "error");
                }
            }
            loaded.jwt = now;
        }
        if let Some((path, handle)) = &self.policy {
            let now = digest(&[path.as_path()]);
            if now.is_some() && now != loaded.policy {
                match Policy::from_file(path, &self.metrics) {
                    Ok(policy) => {
                        handle.replace(policy);
                        tracing::info!(path = %path.display(), "authorization policy reloaded");
                        self.count("policy", "ok");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "new authorization policy refused; keeping the last good one");
                        self.count("policy", "error");
                    }
                }
                loaded.policy = now;
            }
        }
    }
}

/// Exports the remaining lifetime of what the server has loaded (at start-up and after
/// each reload), in `jisu_tls_certificate_expiry_seconds{cert}`: `server` (its
/// certificate), `client_ca` (the soonest-expiring CA of the bundle) and `crl` (the CRL's
/// `nextUpdate`: past it every client of that CA is refused).
pub fn watch_expiries(metrics: &Metrics, cert: &Path, client_ca: &Path, crl: &Path) {
    let soonest = |path: &Path| {
        tls::load_certs(path)
            .ok()
            .and_then(|certs| certs.iter().filter_map(tls::not_after).min())
    };
    if let Some(not_after) = soonest(cert) {
        metrics.watch_certificate("server", not_after);
    }
    if let Some(not_after) = soonest(client_ca) {
        metrics.watch_certificate("client_ca", not_after);
    }
    if let Some(next_update) = crl_next_update(crl) {
        metrics.watch_certificate("crl", next_update);
    }
}

/// The soonest `nextUpdate` of the CRLs at `path`, if there are any.
fn crl_next_update(path: &Path) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    let crls = tls::load_crls(path).ok()?;
    crls.iter()
        .filter_map(|der| {
            let (_, crl) =
                x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
                    .ok()?;
            crl.next_update().map(|t| t.timestamp())
        })
        .min()
}

/// Whether a watcher event can mean a file changed. Opening, reading and closing a file
/// unwritten are events too (inotify's IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE), and a reload
/// reads every file: taken as changes, each reload scheduled the next, five times a second
/// for as long as the server ran. A close after writing is a change (the end of a write).
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}

/// Watches the files' directories and SIGHUP; reloads after a short quiet period (an
/// editor or `cp` writes a file in several steps). Ends when the returned handle is
/// aborted.
pub fn spawn(
    reloadable: Reloadable,
    loaded: Loaded,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| may_change(&e.kind)) {
            let _ = tx.send(());
        }
    })
    .map_err(std::io::Error::other)?;
    let policy = reloadable.policy.as_ref().map(|(path, _)| path);
    let dirs: BTreeSet<PathBuf> = [
        Some(&reloadable.cert),
        Some(&reloadable.key),
        Some(&reloadable.client_ca),
        Some(&reloadable.crl),
        Some(&reloadable.jwt_public_key),
        policy,
    ]
    .into_iter()
    .flatten()
    .filter_map(|p| p.parent().map(Path::to_path_buf))
    .map(|d| {
        if d.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            d
        }
    })
    .collect();
    for dir in &dirs {
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map_err(std::io::Error::other)?;
    }
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let reloadable = Arc::new(reloadable);
    Ok(tokio::spawn(async move {
        let _watcher = watcher; // lives as long as the task
        let mut loaded = loaded;
        // Anything that changed between start-up and now.
        reloadable.reload(&mut loaded);
        loop {
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    // Let a multi-step write finish, then take everything pending at once.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading credentials");
                    // Re-read everything; whether a CRL is in force is a fact, not a digest.
                    loaded = Loaded { crl: loaded.crl, ..Loaded::default() };
                }
            }
            reloadable.reload(&mut loaded);
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use notify::Watcher as _;

    use super::may_change;

    /// What a reload does to the files (reads them) is not a change; a write is. Events
    /// arrive in order, so everything before the write's first change is the read's.
    #[test]
    fn reading_the_files_is_not_a_change_and_writing_them_is() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        std::fs::write(&key, "before").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |e| {
            let _ = tx.send(e);
        })
        .unwrap();
        watcher
            .watch(dir.path(), notify::RecursiveMode::NonRecursive)
            .unwrap();

        std::fs::read(&key).unwrap(); // what every reload does
        std::fs::write(&key, "after").unwrap(); // a rotation

        let mut before_the_change = Vec::new();
        loop {
            let event = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("no event for the write within a minute")
                .unwrap();
            if may_change(&event.kind) {
                assert!(
                    matches!(event.kind, notify::EventKind::Modify(_)),
                    "the first change is not the write: {event:?}"
                );
                break;
            }
            before_the_change.push(event.kind);
        }
        // The read was seen (so this test can tell), and none of it counted as a change.
        assert!(
            !before_the_change.is_empty(),
            "reading the file produced no watcher event"
        );
        assert!(
            before_the_change
                .iter()
                .all(|k| matches!(k, notify::EventKind::Access(_))),
            "{before_the_change:?}"
        );
    }
}
