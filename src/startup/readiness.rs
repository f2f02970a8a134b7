//! Health that follows the database and the server certificate. A probe runs every
//! second: while the store does not answer, the services that need it (and the server as
//! a whole, `""`, which the Jisu client's balancer checks) are NOT_SERVING, so balancers
//! steer away; when it answers again they are SERVING again, by themselves. Within
//! `tls.expiry_margin_secs` of the server certificate's expiry everything is NOT_SERVING
//! (before clients start failing their handshakes, not after), until a rotated
//! certificate is loaded. Once shutdown starts everything stays NOT_SERVING. The probe
//! also keeps the store gauges fresh: `jisu_store_up` and `jisu_store_pool_connections`.
use std::{sync::Arc, time::Duration};

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{store::Store, telemetry::metrics::Metrics};

/// How often the store is probed, and how long a probe may take before it counts as down.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The server's health, shared by the store probe and shutdown.
#[derive(Clone)]
pub(crate) struct Readiness {
    state: Arc<tokio::sync::Mutex<State>>,
    /// The overall status, for `/ready` on the metrics listener.
    serving: Arc<std::sync::atomic::AtomicBool>,
}

struct State {
    reporter: HealthReporter,
    serving: Arc<std::sync::atomic::AtomicBool>,
    /// Services whose calls need the store.
    store_services: Vec<&'static str>,
    /// Services that work without it (files).
    other_services: Vec<&'static str>,
    store_up: bool,
    /// False within the expiry margin of the server certificate.
    cert_ok: bool,
    stopping: bool,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").finish_non_exhaustive()
    }
}

impl Readiness {
    /// Marks every service SERVING.
    pub(crate) async fn new(
        reporter: HealthReporter,
        store_services: Vec<&'static str>,
        other_services: Vec<&'static str>,
    ) -> Self {
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = State {
            reporter,
            serving: serving.clone(),
            store_services,
            other_services,
            store_up: true,
            cert_ok: true,
            stopping: false,
        };
        state.apply().await;
        Self {
            state: Arc::new(tokio::sync::Mutex::new(state)),
            serving,
        }
    }

    /// True while the server as a whole is SERVING.
    pub(crate) fn serving(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.serving.clone()
    }

    /// Everything NOT_SERVING, for good.
    pub(crate) async fn stop(&self) {
        let mut state = self.state.lock().await;
        state.stopping = true;
        state.apply().await;
    }

    async fn certificate_checked(&self, ok: bool, expires_in: i64) {
        let mut state = self.state.lock().await;
        if state.cert_ok != ok {
            state.cert_ok = ok;
            if ok {
                tracing::info!(
                    expires_in_secs = expires_in,
                    "server certificate renewed: SERVING"
                );
            } else {
                tracing::error!(
                    expires_in_secs = expires_in,
                    "server certificate about to expire: NOT_SERVING until a new one is loaded"
                );
            }
            state.apply().await;
        }
    }

    async fn store_answered(&self, up: bool) {
        let mut state = self.state.lock().await;
        if state.store_up != up {
            state.store_up = up;
            if up {
                tracing::info!("storage answers again: SERVING");
            } else {
                tracing::warn!("storage does not answer: NOT_SERVING until it does");
            }
            state.apply().await;
        }
    }

    /// Probes `store` until the task is aborted.
    pub(crate) fn spawn_probe(
        &self,
        store: Arc<dyn Store>,
        metrics: &Metrics,
        expiry_margin: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let readiness = self.clone();
        let metrics = metrics.clone();
        let up_gauge = metrics.gauge("jisu_store_up", &[]);
        let in_use = metrics.gauge("jisu_store_pool_connections", &[("state", "in_use".into())]);
        let idle = metrics.gauge("jisu_store_pool_connections", &[("state", "idle".into())]);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PROBE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let up = match tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "storage probe failed");
                        false
                    }
                    Err(_) => false,
                };
                up_gauge.set(if up { 1.0 } else { 0.0 });
                if let Some(pool) = store.pool_stats() {
                    in_use.set(f64::from(pool.open.saturating_sub(pool.idle)));
                    idle.set(f64::from(pool.idle));
                }
                readiness.store_answered(up).await;
                if let Some(not_after) = metrics.certificate_not_after("server") {
                    let left = not_after - time::OffsetDateTime::now_utc().unix_timestamp();
                    let ok = left > expiry_margin.as_secs() as i64;
                    readiness.certificate_checked(ok, left).await;
                }
            }
        })
    }
}

impl State {
    async fn apply(&self) {
        let status = |ok: bool| {
            if ok && !self.stopping {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let cert = self.cert_ok;
        for name in &self.store_services {
            self.reporter
                .set_service_status(*name, status(cert && self.store_up))
                .await;
        }
        for name in &self.other_services {
            self.reporter.set_service_status(*name, status(cert)).await;
        }
        let all = status(cert && self.store_up);
        self.reporter.set_service_status("", all).await;
        self.serving.store(
            all == ServingStatus::Serving,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}
