//! Write coalescing for a connection: what the HTTP/2 connection writes is held until it
//! flushes, and while other calls on the connection are still being answered its flush
//! waits one turn of the runtime, so the answers of every call that is ready to answer
//! leave in one TLS record and one `writev`.
//!
//! Why: hyper answers each call from the call's own task, which wakes the connection's
//! task; tokio runs a task woken that way next (its LIFO slot), so the connection wrote
//! and flushed every answer on its own. Measured at 64 calls in flight on one connection:
//! one `writev` and one TLS record per call, and on loopback each `writev` also pays the
//! receiving side's TCP work on the server's core. Here, when other calls of the connection
//! are not answered yet, the first flush with something to send wakes the connection's
//! own task and returns `Pending`; tokio puts a task that wakes itself at the back of its
//! run queue, so the calls already able to answer do so first, and the next flush sends
//! them all. When nothing else is ready the task runs again at once (no timer, no wait).
//! With no other call in flight (one call at a time) a flush never waits: the extra poll
//! of the connection cost ~2.4k instructions per call there and bought nothing.
//!
//! A backlog waits its turn too, however long: the turn then lasts as long as the backlog,
//! and answering each call on its own just when the server is behind makes every call
//! dearer, so the backlog grows. Session 18 let a flush wait only while at most 64 calls
//! were unanswered (the first answers of a backlog left sooner: p99 at 70,300 calls/s
//! −10 %); session 19 measured at 81,800 calls/s (70 % of the stack's maximum on that
//! machine) that past the bound each answer took its own `writev` and TLS record (0.1 →
//! 0.2–0.9 writes and 9.9 → 10.1–12.1 µs of CPU per call), which grew the backlog further:
//! in 3 of 6 runs the server never caught up again (p90 35–82 ms against 0.7–1.5 ms
//! unbounded). Coalescing whatever the backlog keeps the cost per call falling as load
//! rises, so an overload drains (BENCHMARKS.md, session 19).
//!
//! What bounds a turn is what the connection reads in it: at most [`READ_PER_TURN`] bytes
//! of requests per poll of the connection's task ([`Turn`]); past it a read returns
//! `Pending` and wakes the task, which runs again after the calls it just accepted. A
//! backlog read whole (a burst after a stall of either side, hundreds of calls) made one
//! turn of milliseconds whose answers all left at its end, the first ones as late as the
//! last; read in turns of a few kilobytes it is answered in batches of a few dozen calls,
//! each as soon as its own turn ends, and the client refills while the server works.
//! Measured against the build before, interleaved, at 70 % of the stack's maximum: p99
//! median 5.69 → 2.90 ms (10 % sampling, 82,200 calls/s, 8 pairs) and 10.25 → 2.95 ms
//! (100 %, 74,500 calls/s, 6 pairs), the same CPU per call; the closed-loop maximum −5 %
//! (BENCHMARKS.md, session 21). Below the bound (~25 GetUser calls with a bearer token)
//! nothing changes: at 82,200 calls/s a turn reads ~9.
use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Past this many bytes held, writes go out without waiting for the flush: large
/// answers (file chunks, long streams) do not gain from waiting, and the hold stays small.
const HOLD: usize = 64 * 1024;

/// Request bytes one turn of the connection's task reads at most (see the module): two of
/// rustls' 4-KiB reads; ~25 GetUser calls with a bearer token. 4 KiB gave the same tail and
/// cost ~6 % of the closed-loop maximum; 16 KiB left more of the tail (BENCHMARKS.md,
/// session 21).
const READ_PER_TURN: usize = 8 * 1024;

/// The hold's memory kept between flushes: a connection that once sent a large batch (a
/// file's chunks) does not keep 64 KiB for the rest of its life.
const RETAIN: usize = 16 * 1024;

pin_project_lite::pin_project! {
    /// `io` with its writes held until a flush (see the module).
    #[derive(Debug)]
    pub(super) struct Corked<T> {
        #[pin]
        io: T,
        held: Vec<u8>,
        // Bytes of `held` already written.
        sent: usize,
        // The current flush already waited its turn.
        waited: bool,
        // The connection's calls whose answer has not started.
        calls: Arc<AtomicUsize>,
        // What this turn of the connection's task has read.
        turn: Arc<Turn>,
    }
}

/// One turn (poll) of a connection's task, for [`Corked`] to bound what it reads in it.
#[derive(Debug, Default)]
pub(super) struct Turn {
    read: AtomicUsize,
}

impl Turn {
    /// A new turn: called each time the connection's task is polled, before the connection.
    pub(super) fn begin(&self) {
        self.read.store(0, Ordering::Relaxed);
    }
}

impl<T> Corked<T> {
    /// `io`, whose flushes wait a turn while `calls` (the connection's calls not yet
    /// answered) is not zero, and which reads at most [`READ_PER_TURN`] bytes in one `turn`.
    pub(super) fn new(io: T, calls: Arc<AtomicUsize>, turn: Arc<Turn>) -> Self {
        Self {
            io,
            held: Vec::new(),
            sent: 0,
            waited: false,
            calls,
            turn,
        }
    }
}

impl<T: AsyncWrite> Corked<T> {
    /// Writes out everything held (the next flush waits its turn again).
    fn poll_send(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        while *this.sent < this.held.len() {
            let n = ready!(this.io.as_mut().poll_write(cx, &this.held[*this.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *this.sent += n;
        }
        this.held.clear();
        if this.held.capacity() > RETAIN {
            *this.held = Vec::new();
        }
        *this.sent = 0;
        *this.waited = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead> AsyncRead for Corked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let read = this.turn.read.load(Ordering::Relaxed);
        let room = READ_PER_TURN.saturating_sub(read);
        if room == 0 {
            // This turn has read its share: the calls it accepted run first (see the module).
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = if buf.remaining() > room {
            let mut part = ReadBuf::new(buf.initialize_unfilled_to(room));
            ready!(this.io.poll_read(cx, &mut part))?;
            let n = part.filled().len();
            buf.advance(n);
            n
        } else {
            let before = buf.filled().len();
            ready!(this.io.poll_read(cx, buf))?;
            buf.filled().len() - before
        };
        this.turn.read.store(read + n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for Corked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.len() + len > HOLD {
            ready!(self.as_mut().poll_send(cx))?;
            if len >= HOLD {
                return self.project().io.poll_write_vectored(cx, bufs);
            }
        }
        let held = self.project().held;
        for b in bufs {
            held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let unanswered = self.calls.load(Ordering::Relaxed);
        if !self.held.is_empty() && !self.waited && unanswered != 0 {
            // One turn of the runtime for the other calls' answers (see the module).
            *self.as_mut().project().waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.as_mut().poll_send(cx))?;
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_send(cx))?;
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::pin,
        sync::{Arc, Mutex},
        task::{Wake, Waker},
    };

    use super::*;

    /// Records each write it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Count(Mutex<usize>);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() += 1;
        }
    }

    #[test]
    fn writes_until_a_flush_leave_together_after_one_turn() {
        let wakes = Arc::new(Count::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let calls = Arc::new(AtomicUsize::new(1));
        let mut io = pin!(Corked::new(
            Writes::default(),
            calls.clone(),
            Arc::default()
        ));
        assert!(matches!(
            io.as_mut().poll_write(&mut cx, b"one"),
            Poll::Ready(Ok(3))
        ));
        assert!(io.as_mut().poll_flush(&mut cx).is_pending(), "waits a turn");
        assert_eq!(*wakes.0.lock().unwrap(), 1, "and wakes itself for it");
        let two = [IoSlice::new(b"tw"), IoSlice::new(b"o")];
        assert!(matches!(
            io.as_mut().poll_write_vectored(&mut cx, &two),
            Poll::Ready(Ok(3))
        ));
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(io.io.0, vec![b"onetwo".to_vec()], "one write");
        // Nothing held: a flush does not wait.
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        // The next flush waits its turn again.
        let _ = io.as_mut().poll_write(&mut cx, b"three");
        assert!(io.as_mut().poll_flush(&mut cx).is_pending());
        // Shutting down sends what is held.
        assert!(io.as_mut().poll_shutdown(&mut cx).is_ready());
        assert_eq!(io.io.0.last().unwrap(), b"three");
        // With no other call in flight, a flush sends at once.
        calls.store(0, Ordering::Relaxed);
        let _ = io.as_mut().poll_write(&mut cx, b"four");
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(io.io.0.last().unwrap(), b"four");
        assert_eq!(*wakes.0.lock().unwrap(), 2, "no wake without other calls");
        // A backlog waits its turn too: answering each call alone would make it grow.
        calls.store(100_000, Ordering::Relaxed);
        let _ = io.as_mut().poll_write(&mut cx, b"five");
        assert!(
            io.as_mut().poll_flush(&mut cx).is_pending(),
            "a backlog waits a turn"
        );
        assert_eq!(*wakes.0.lock().unwrap(), 3);
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(io.io.0.last().unwrap(), b"five");
    }

    #[test]
    fn large_writes_are_not_held() {
        let waker = Waker::from(Arc::new(Count::default()));
        let mut cx = Context::from_waker(&waker);
        let mut io = pin!(Corked::new(
            Writes::default(),
            Arc::new(AtomicUsize::new(1)),
            Arc::default()
        ));
        let _ = io.as_mut().poll_write(&mut cx, b"head");
        let big = vec![7u8; HOLD];
        assert!(matches!(
            io.as_mut().poll_write(&mut cx, &big),
            Poll::Ready(Ok(n)) if n == HOLD
        ));
        assert_eq!(io.io.0.len(), 2, "what was held, then the large write");
        assert_eq!(io.io.0[0], b"head");
        assert!(io.held.is_empty());
        // A large batch held and sent: its memory is not kept.
        for _ in 0..4 {
            let _ = io.as_mut().poll_write(&mut cx, &[1u8; 15 * 1024]);
        }
        assert!(io.held.capacity() > RETAIN);
        io.calls.store(0, Ordering::Relaxed);
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(io.io.0.last().unwrap().len(), 60 * 1024);
        assert!(io.held.capacity() <= RETAIN, "{}", io.held.capacity());
    }

    /// One read of up to `len` bytes: what it read, or `None` when it is pending.
    fn read(io: Pin<&mut Corked<&[u8]>>, cx: &mut Context<'_>, len: usize) -> Option<usize> {
        let mut space = vec![0u8; len];
        let mut buf = ReadBuf::new(&mut space);
        match io.poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Some(buf.filled().len()),
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_turn_reads_at_most_its_share_then_wakes_its_task_for_the_next() {
        let wakes = Arc::new(Count::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let data = vec![7u8; 2 * READ_PER_TURN + 100];
        let turn = Arc::new(Turn::default());
        let mut io = pin!(Corked::new(&data[..], Arc::default(), turn.clone()));
        // A buffer larger than the share is given exactly the share.
        assert_eq!(
            read(io.as_mut(), &mut cx, 3 * READ_PER_TURN),
            Some(READ_PER_TURN)
        );
        assert_eq!(
            read(io.as_mut(), &mut cx, 100),
            None,
            "the turn has read its share"
        );
        assert_eq!(
            *wakes.0.lock().unwrap(),
            1,
            "and wakes its task for the next turn"
        );
        // Smaller reads add up to the share.
        turn.begin();
        let half = READ_PER_TURN / 2;
        assert_eq!(read(io.as_mut(), &mut cx, half), Some(half));
        assert_eq!(read(io.as_mut(), &mut cx, 3 * half), Some(half));
        assert_eq!(read(io.as_mut(), &mut cx, 1), None);
        assert_eq!(*wakes.0.lock().unwrap(), 2);
        // Nothing is lost: the rest, then the end, in the next turns.
        turn.begin();
        assert_eq!(read(io.as_mut(), &mut cx, 3 * READ_PER_TURN), Some(100));
        assert_eq!(read(io.as_mut(), &mut cx, 10), Some(0), "end of stream");
        assert_eq!(*wakes.0.lock().unwrap(), 2);
    }
}
