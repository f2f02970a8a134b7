//! The one owner of a server's background tasks (store probe, change relay, credential
//! watcher, JWKS refresh, metric upkeep, the `/metrics` listener): they end on every exit
//! path of [`super::Application::run_until_stopped`], an error included, not only after a
//! clean drain. Shaped like tokio's own advice: a `JoinSet` plus a cancellation token.
use std::future::Future;

use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Owns background tasks; [`Supervisor::shutdown`] ends and awaits them all, and dropping
/// it (a panic, an early return) aborts them.
#[derive(Debug, Default)]
pub struct Supervisor {
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

/// Aborts the task it names when dropped (a task adopted from a `JoinHandle`, a
/// connection's timers).
pub(super) struct AbortOnDrop(pub AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it finishes or the supervisor stops.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Runs a task that stops itself, gracefully, when handed token is cancelled (a
    /// listener that finishes what it is answering).
    pub fn spawn_graceful<F>(&mut self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.stop.clone()));
    }

    /// Takes ownership of a task another module spawned: on shutdown it is aborted and
    /// awaited, so it has ended when [`Supervisor::shutdown`] returns.
    pub fn adopt(&mut self, mut handle: JoinHandle<()>) {
        let stop = self.stop.clone();
        let guard = AbortOnDrop(handle.abort_handle());
        self.tasks.spawn(async move {
            let _guard = guard;
            tokio::select! {
                () = stop.cancelled() => {
                    handle.abort();
                    let _ = (&mut handle).await;
                }
                _ = &mut handle => {}
            }
        });
    }

    /// Cancels every task and waits until each has ended.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn shutdown_ends_spawned_and_adopted_tasks() {
        let held = Arc::new(());
        let mut supervisor = Supervisor::new();
        let h = held.clone();
        supervisor.spawn(async move {
            let _h = h;
            std::future::pending::<()>().await;
        });
        let h = held.clone();
        supervisor.adopt(tokio::spawn(async move {
            let _h = h;
            std::future::pending::<()>().await;
        }));
        assert_eq!(Arc::strong_count(&held), 3);
        supervisor.shutdown().await;
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "a task outlived the supervisor"
        );
    }
}
