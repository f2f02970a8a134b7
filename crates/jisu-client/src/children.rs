//! The work inside one call — storage operations, calls to other services — recorded
//! cheaply whether or not the call's trace is sampled: a name, two instants and a few
//! static labels pushed onto the call's own buffer. When the call turns out to be worth
//! keeping (it failed, it was slow), the server turns them into child spans; otherwise
//! the buffer is dropped with the call and nothing else was spent.
//!
//! The buffer of the call being served is found through a thread-local that [`InCall`]
//! sets around each poll of the call's future and response body, so code deep in a
//! handler records into it without being handed anything. Work a handler moves to
//! another task (`tokio::spawn`) is not seen.
use std::{
    cell::RefCell,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use http::Response;
use http_body::{Body, Frame};
use opentelemetry::trace::{SpanContext, SpanId, TraceId};
use parking_lot::Mutex;
use tonic::Code;

/// Most children one call keeps; later ones are counted, not stored, so a long stream
/// cannot grow a call's memory without bound.
pub const MAX_CHILDREN: usize = 64;

/// One piece of work inside a call.
#[derive(Debug, Clone)]
pub struct Child {
    pub what: ChildKind,
    /// When it started, and how long it took.
    pub start: Instant,
    pub took: Duration,
}

#[derive(Debug, Clone)]
pub enum ChildKind {
    /// A storage operation (`db.system.name`, `db.operation.name`); `failed` when the
    /// backend itself failed (not a miss or a conflict).
    Store {
        system: &'static str,
        operation: &'static str,
        failed: bool,
    },
    /// A call to another service, with the span id it was propagated with (the callee's
    /// SERVER span names it as parent) and its final code.
    Call {
        service: &'static str,
        method: &'static str,
        span_id: [u8; 8],
        server: Arc<str>,
        port: Option<u16>,
        code: Code,
    },
}

impl Child {
    /// The span name: `store get_user`, or the callee's `pkg.Service/Method`.
    pub fn name(&self) -> String {
        match &self.what {
            ChildKind::Store { operation, .. } => format!("store {operation}"),
            ChildKind::Call {
                service, method, ..
            } => format!("{service}/{method}"),
        }
    }

    /// The gRPC code of a call child (`None` for storage work).
    pub fn code(&self) -> Option<Code> {
        match &self.what {
            ChildKind::Call { code, .. } => Some(*code),
            ChildKind::Store { .. } => None,
        }
    }
}

/// The children of one call, and the call's own trace context: the ids its spans get
/// if it is exported or kept, which its log lines carry, and which calls it makes to
/// other services continue (no span object exists while the call runs).
#[derive(Debug)]
pub struct Children {
    inner: Mutex<Recorded>,
    /// The call's own span context (trace id, its span id, sampled flag, trace state).
    trace: SpanContext,
    /// What the caller propagated besides the span context (baggage), passed on to the
    /// calls this one makes; `None` when the caller sent none.
    propagated: Option<opentelemetry::Context>,
}

/// What a call recorded: its children, how many more were left out, who made it (the
/// token's `sub`, once authenticated), and the authorization decision.
#[derive(Debug, Default)]
pub struct Recorded {
    pub children: Vec<Child>,
    pub dropped: u32,
    pub subject: Option<Arc<str>>,
    /// Allowed or not, and by which rule.
    pub authz: Option<(bool, Arc<str>)>,
}

impl Children {
    /// The buffer of a call whose own span context is `trace`; `propagated` is the
    /// caller's context (baggage), when it sent one.
    pub fn new(trace: SpanContext, propagated: Option<opentelemetry::Context>) -> Self {
        Self {
            inner: Mutex::default(),
            trace,
            propagated,
        }
    }

    /// The call's own span context.
    pub fn trace(&self) -> &SpanContext {
        &self.trace
    }

    /// The context a call made from this one propagates: this call's trace, under the
    /// new span id `span_id` (the CLIENT span's), with the caller's baggage.
    pub fn outgoing(&self, span_id: SpanId) -> opentelemetry::Context {
        use opentelemetry::trace::TraceContextExt as _;
        let t = &self.trace;
        let sc = SpanContext::new(
            t.trace_id(),
            span_id,
            t.trace_flags(),
            false,
            t.trace_state().clone(),
        );
        self.propagated
            .clone()
            .unwrap_or_default()
            .with_remote_span_context(sc)
    }

    pub fn push(&self, child: Child) {
        let mut r = self.inner.lock();
        if r.children.len() < MAX_CHILDREN {
            r.children.push(child);
        } else {
            r.dropped += 1;
        }
    }

    /// Notes who made the call, for a kept call's `enduser.id`.
    pub fn set_subject(&self, subject: &Arc<str>) {
        self.inner.lock().subject = Some(subject.clone());
    }

    /// Notes the authorization decision, for the call's span.
    pub fn set_authz(&self, allowed: bool, rule: &Arc<str>) {
        self.inner.lock().authz = Some((allowed, rule.clone()));
    }

    /// Takes what was recorded.
    pub fn take(&self) -> Recorded {
        std::mem::take(&mut *self.inner.lock())
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Children>>> = const { RefCell::new(None) };
}

/// The buffer of the call being polled on this thread, if any.
pub fn current() -> Option<Arc<Children>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// The trace id and span id of the call being polled on this thread (for log lines).
pub fn current_ids() -> Option<(TraceId, SpanId)> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|c| (c.trace.trace_id(), c.trace.span_id()))
    })
}

/// A new random span id (never the invalid all-zero one).
pub fn new_span_id() -> SpanId {
    SpanId::from(rand::random::<u64>().max(1))
}

/// A new random trace id (never the invalid all-zero one).
pub fn new_trace_id() -> TraceId {
    TraceId::from(rand::random::<u128>().max(1))
}

/// Runs `f` on the current call's buffer, if any.
pub fn with_current(f: impl FnOnce(&Children)) {
    CURRENT.with(|c| {
        if let Some(children) = &*c.borrow() {
            f(children);
        }
    });
}

/// Records a child into the current call's buffer (`child` is only built when there is
/// one).
pub fn record(child: impl FnOnce() -> Child) {
    CURRENT.with(|c| {
        if let Some(children) = &*c.borrow() {
            children.push(child());
        }
    });
}

/// Runs `f` with `slot` as the current buffer, and puts it back afterwards (also when
/// `f` panics). Moves only: no reference count is touched per poll.
fn scoped<R>(slot: &mut Option<Arc<Children>>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a> {
        slot: &'a mut Option<Arc<Children>>,
        previous: Option<Arc<Children>>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let previous = self.previous.take();
            *self.slot = CURRENT.with(|c| c.replace(previous));
        }
    }
    let previous = CURRENT.with(|c| c.replace(slot.take()));
    let _restore = Restore { slot, previous };
    f()
}

pin_project_lite::pin_project! {
    /// A call's response future or body, polled with its buffer current.
    #[derive(Debug)]
    pub struct InCall<T> {
        #[pin]
        inner: T,
        children: Option<Arc<Children>>,
    }
}

impl<T> InCall<T> {
    pub fn new(inner: T, children: Arc<Children>) -> Self {
        Self {
            inner,
            children: Some(children),
        }
    }
}

/// Runs `f` (creating a call's future, say) with `children` current.
pub fn enter<R>(children: &Arc<Children>, f: impl FnOnce() -> R) -> R {
    scoped(&mut Some(children.clone()), f)
}

/// The response future: the body it yields keeps the buffer current too (streamed
/// responses do their work while the body is polled).
impl<F, B, E> Future for InCall<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<InCall<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let result = ready!(scoped(this.children, || inner.poll(cx)));
        let children = this.children.clone();
        Poll::Ready(result.map(|response| {
            response.map(|body| InCall {
                inner: body,
                children,
            })
        }))
    }
}

impl<B: Body> Body for InCall<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let inner = this.inner;
        scoped(this.children, || inner.poll_frame(cx))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(op: &'static str) -> Child {
        Child {
            what: ChildKind::Store {
                system: "memory",
                operation: op,
                failed: false,
            },
            start: Instant::now(),
            took: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn work_inside_the_call_lands_in_its_buffer_and_nowhere_else() {
        let trace = |id: u128| {
            SpanContext::new(
                TraceId::from(id),
                SpanId::from(1),
                Default::default(),
                false,
                Default::default(),
            )
        };
        let mine = Arc::new(Children::new(trace(1), None));
        let other = Arc::new(Children::new(trace(2), None));
        let fut = InCall::new(
            async {
                assert_eq!(current_ids().unwrap().0, TraceId::from(1));
                record(|| store("get_user"));
                tokio::task::yield_now().await;
                record(|| store("list_users"));
                Ok::<_, ()>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
            },
            mine.clone(),
        );
        // Between polls, on the same thread, another call's work goes to its own buffer.
        let second = InCall::new(
            async {
                assert_eq!(current_ids().unwrap().0, TraceId::from(2));
                record(|| store("create_order"));
                Ok::<_, ()>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
            },
            other.clone(),
        );
        let (a, b) = tokio::join!(fut, second);
        a.unwrap();
        b.unwrap();
        record(|| store("outside"));
        assert!(current().is_none());
        assert!(current_ids().is_none());
        let names = |c: &Children| {
            c.take()
                .children
                .iter()
                .map(Child::name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&mine), ["store get_user", "store list_users"]);
        assert_eq!(names(&other), ["store create_order"]);
    }

    #[test]
    fn a_call_keeps_at_most_max_children() {
        let c = Children::new(SpanContext::empty_context(), None);
        for _ in 0..MAX_CHILDREN + 5 {
            c.push(store("get_user"));
        }
        let taken = c.take();
        assert_eq!((taken.children.len(), taken.dropped), (MAX_CHILDREN, 5));
    }
}
