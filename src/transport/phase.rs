//! What a connection is told from outside its own task: finish (GOAWAY, its calls end),
//! or close now. Its maximum age, the server's drain and the rapid-reset guard all speak
//! through this one signal; the connection reads it with one atomic load per poll
//! (`startup::serve`), so nothing is checked on each read or write.
use std::{
    sync::atomic::{AtomicU8, Ordering},
    task::Context,
};

use futures::task::AtomicWaker;

/// What a connection has been told, in order: a later word never goes back to an earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Told {
    /// Serve on.
    Open = 0,
    /// Send GOAWAY and end when the calls in flight have (maximum age, or the server drains).
    Finish = 1,
    /// Close now: the grace after its maximum age is over.
    GraceOver = 2,
    /// Close now: most of its recent calls were cancelled (rapid reset).
    RapidReset = 3,
}

impl Told {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Told::Open,
            1 => Told::Finish,
            2 => Told::GraceOver,
            _ => Told::RapidReset,
        }
    }
}

/// One connection's [`Told`], and the task to wake when it changes.
#[derive(Debug, Default)]
pub struct Phase {
    told: AtomicU8,
    waker: AtomicWaker,
}

impl Phase {
    /// Tells the connection `told` (unless it was told something later already) and wakes it.
    pub fn tell(&self, told: Told) {
        self.told.fetch_max(told as u8, Ordering::AcqRel);
        self.waker.wake();
    }

    /// What the connection has been told so far.
    pub fn told(&self) -> Told {
        Told::from_u8(self.told.load(Ordering::Acquire))
    }

    /// What the connection has been told, registering `cx`'s task to be woken when that
    /// changes (registered before the load, so a change in between still wakes it).
    pub fn observe(&self, cx: &Context<'_>) -> Told {
        self.waker.register(cx.waker());
        self.told()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::AtomicUsize};

    use super::*;

    #[test]
    fn the_connection_is_woken_when_told_and_never_goes_back() {
        struct Count(AtomicUsize);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(this: &Arc<Self>) {
                this.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = futures::task::waker(count.clone());
        let cx = Context::from_waker(&waker);
        let phase = Phase::default();
        assert_eq!(phase.observe(&cx), Told::Open);
        phase.tell(Told::RapidReset);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken when told");
        assert_eq!(phase.observe(&cx), Told::RapidReset);
        // A drain after a rapid reset does not reopen the connection to finish gracefully.
        phase.tell(Told::Finish);
        assert_eq!(phase.told(), Told::RapidReset);
    }
}
