//! Time any call: the model call behind the cache, a SQL query, an HTTP handler.
//!
//! A [`Timer`] is built once per kind of call (a name and static labels) and then wraps each
//! call's future with [`Timer::time`]. It records:
//!
//! * the duration into a [`LatencyHistogram`] of its own (percentiles without any recorder:
//!   [`Timer::snapshot`]) and into `layercache_call_duration_seconds{call,outcome,…}` through
//!   the `metrics` facade;
//! * the outcome: `ok`, `error` (for a `Result` output), `cancelled` (a future dropped before it
//!   finished — counted once, never lost), or a kind of error of your own (`timeout`,
//!   `rate_limited`, …) chosen by [`TimerBuilder::classify`];
//! * the calls in flight, in `layercache_calls_in_flight{call}` and [`Timer::in_flight`]: a call
//!   is in flight from the first time it has to wait (its future returns `Pending`) until it
//!   finishes or is dropped. A call that completes in its first poll (a warm cache hit, a ready
//!   future) never waited, so it is timed and counted but never shows as in flight, and it
//!   costs no gauge update — most of what timing a nanosecond-scale call costs is the two clock
//!   readings.
//!
//! Streams (LLM token streams) are timed with [`Timer::time_stream`]: time to the first item
//! (`layercache_call_first_item_seconds`) and the whole duration. A stream of `Result`s (what
//! LLM clients return) goes through [`Timer::time_try_stream`], which counts a failed item as
//! the call's error.
//!
//! ```
//! use std::time::Duration;
//! use layercache::instrument::Timer;
//!
//! #[derive(Debug)]
//! enum LlmError { RateLimited, Other }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let timer = Timer::builder("chat_completion")
//!     .label("model", "gpt-4o")
//!     .classify(&["rate_limited"], |e: &LlmError| match e {
//!         LlmError::RateLimited => Some("rate_limited"),
//!         LlmError::Other => None, // plain "error"
//!     })
//!     .build();
//!
//! let reply: Result<String, LlmError> = timer.time(async { Ok("hi".to_string()) }).await;
//! assert_eq!(reply.unwrap(), "hi");
//! let _ = timer.time(async { Err::<String, _>(LlmError::RateLimited) }).await;
//!
//! let counts = timer.counts();
//! assert_eq!((counts.ok, counts.error, counts.cancelled), (1, 0, 0));
//! assert_eq!(counts.kinds, vec![("rate_limited", 1)]);
//! assert_eq!(timer.snapshot().count(), 2);
//! assert_eq!(timer.in_flight(), 0);
//! # }
//! ```
//!
//! # Exporting real histograms to Prometheus
//!
//! `metrics-exporter-prometheus` exports histograms as *summaries* unless it is given bucket
//! boundaries, and summaries cannot be aggregated across replicas. Give it buckets that reach
//! LLM-length calls — [`LLM_BUCKETS_SECONDS`] goes from 5 ms to 10 minutes (the defaults of
//! other crates stop at 10 s):
//!
//! ```text
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//! PrometheusBuilder::new()
//!     .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), layercache::instrument::LLM_BUCKETS_SECONDS)?
//!     .install()?;
//! ```
//!
//! `ecosystem/examples/observability.rs` serves `/metrics` that way.

mod histogram;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use ::metrics::{Gauge, Histogram, Label};
use futures_core::Stream;

pub use self::histogram::{LatencyHistogram, LatencySnapshot};
use crate::clock::Stopwatch;
use crate::metrics::local::{self, Local};

/// `layercache_call_duration_seconds{call,outcome,…}`: histogram of timed calls' durations.
pub const CALL_DURATION_SECONDS: &str = "layercache_call_duration_seconds";
/// `layercache_calls_in_flight{call,…}`: gauge of timed calls running now.
pub const CALLS_IN_FLIGHT: &str = "layercache_calls_in_flight";
/// `layercache_call_first_item_seconds{call,…}`: histogram of the time a timed stream took to
/// yield its first item.
pub const CALL_FIRST_ITEM_SECONDS: &str = "layercache_call_first_item_seconds";

/// Bucket boundaries (seconds) for calls that may take minutes, such as LLM requests: 5 ms to
/// 10 min. Use them for every `_seconds` histogram (see the [module docs](self)).
pub const LLM_BUCKETS_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// Local counter slots. Calls that succeeded are not counted apart: they are the histogram's
/// count less the others, which keeps one store off the common path.
const ERROR: usize = 0;
const CANCELLED: usize = 1;
/// Calls (and streams) that had to wait: they entered the in-flight count.
const WAITED: usize = 2;
const CLASSIFIED: usize = 3;
/// Of those, the ones that have finished or were dropped.
const LEFT: usize = 4;

type Classifier = Box<dyn Fn(&dyn Any) -> Option<&'static str> + Send + Sync>;

/// Times calls of one kind; see the [module docs](self). Cloning is cheap and shares the
/// counters.
#[derive(Clone)]
pub struct Timer {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    labels: Vec<Label>,
    histogram: LatencyHistogram,
    first_item: LatencyHistogram,
    local: Local<5>,
    /// Facade handles for `ok`, `error`, `cancelled`.
    durations: [Histogram; 3],
    first_item_seconds: Histogram,
    in_flight: Gauge,
    classify: Option<Classifier>,
    /// Error kinds from the classifier: their facade histogram and count, registered on first use.
    kinds: Mutex<Vec<(&'static str, Histogram, u64)>>,
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("name", &self.inner.name)
            .field("in_flight", &self.in_flight())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

/// Calls a [`Timer`] has seen, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallCounts {
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed with an error the classifier did not name.
    pub error: u64,
    /// Calls dropped before they finished.
    pub cancelled: u64,
    /// Calls that failed with an error the classifier named, by kind.
    pub kinds: Vec<(&'static str, u64)>,
}

/// How a timed call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
    Kind(&'static str),
}

/// Outputs a [`Timer`] can tell success from failure in: `Result` (and `Option`: `None` is an
/// error).
pub trait CallResult {
    #[doc(hidden)]
    fn failure(&self) -> Option<&dyn Any>;
}

impl<T, E: 'static> CallResult for Result<T, E> {
    fn failure(&self) -> Option<&dyn Any> {
        self.as_ref().err().map(|e| e as &dyn Any)
    }
}

impl<T> CallResult for Option<T> {
    fn failure(&self) -> Option<&dyn Any> {
        match self {
            Some(_) => None,
            None => Some(&()),
        }
    }
}

impl Timer {
    /// A builder for a timer of calls named `call` (the `call` label).
    pub fn builder(call: impl Into<String>) -> TimerBuilder {
        TimerBuilder {
            call: call.into(),
            labels: Vec::new(),
            kinds: Vec::new(),
            classify: None,
        }
    }

    /// A timer with no extra labels and no classifier.
    pub fn new(call: impl Into<String>) -> Timer {
        Self::builder(call).build()
    }

    /// The call's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Run `call` and record its duration and outcome (`ok`, `error`, a classified kind, or
    /// `cancelled` if the returned future is dropped first). The clock starts at the first poll.
    pub fn time<'a, F>(&'a self, call: F) -> impl Future<Output = F::Output> + 'a
    where
        F: Future + 'a,
        F::Output: CallResult,
    {
        Timed::<F, ByResult>::new(&self.inner, call)
    }

    /// Like [`time`](Self::time) for a call whose output is not a `Result`: it is `ok` when it
    /// finishes, `cancelled` when dropped first.
    pub fn time_infallible<'a, F>(&'a self, call: F) -> impl Future<Output = F::Output> + 'a
    where
        F: Future + 'a,
    {
        Timed::<F, AlwaysOk>::new(&self.inner, call)
    }

    /// Time a stream (an LLM token stream): the time to its first item and its whole duration,
    /// ending when the stream ends (`ok`) or is dropped first (`cancelled`). Items are not
    /// judged: for a stream of `Result`s use [`time_try_stream`](Self::time_try_stream), which
    /// counts a failed item as an error.
    pub fn time_stream<S>(&self, stream: S) -> TimedStream<S>
    where
        S: Stream,
    {
        TimedStream {
            stream: Box::pin(stream),
            timer: self.clone(),
            state: StreamState::NotStarted,
        }
    }

    /// Time a stream of `Result`s (what LLM clients return): like
    /// [`time_stream`](Self::time_stream), but an `Err` item makes the call's outcome `error`
    /// (or the kind the [classifier](TimerBuilder::classify) names), whether the stream then
    /// ends or the consumer stops there and drops it (the usual `item?`). The first failed item
    /// decides; a stream with none is `ok` at its end and `cancelled` if dropped first.
    ///
    /// ```
    /// use std::pin::Pin;
    /// use std::task::{Context, Poll};
    /// use futures_core::Stream;
    /// use layercache::instrument::Timer;
    ///
    /// /// A token stream that fails part-way (a rate limit, a dropped connection).
    /// struct Chunks(std::vec::IntoIter<Result<&'static str, String>>);
    /// impl Stream for Chunks {
    ///     type Item = Result<&'static str, String>;
    ///     fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
    ///         Poll::Ready(self.0.next())
    ///     }
    /// }
    ///
    /// async fn reply(timer: &Timer) -> Result<String, String> {
    ///     let chunks = Chunks(vec![Ok("Hel"), Ok("lo"), Err("rate limited".into())].into_iter());
    ///     let mut timed = timer.time_try_stream(chunks);
    ///     let mut text = String::new();
    ///     while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut timed).poll_next(cx)).await {
    ///         text.push_str(chunk?); // the stream is dropped at the error
    ///     }
    ///     Ok(text)
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let timer = Timer::new("chat_stream");
    /// assert!(reply(&timer).await.is_err());
    /// assert_eq!((timer.counts().error, timer.counts().cancelled), (1, 0));
    /// # });
    /// ```
    pub fn time_try_stream<S, T, E>(&self, stream: S) -> impl Stream<Item = S::Item>
    where
        S: Stream<Item = std::result::Result<T, E>>,
        E: 'static,
    {
        TimedTryStream(self.time_stream(stream))
    }

    /// Durations of every finished call so far (all outcomes), without any recorder.
    pub fn snapshot(&self) -> LatencySnapshot {
        self.inner.histogram.snapshot()
    }

    /// Durations so far, leaving the timer's histogram empty (for "the last minute" figures).
    pub fn take(&self) -> LatencySnapshot {
        self.inner.histogram.take()
    }

    /// Times to the first item of timed streams.
    pub fn first_item_snapshot(&self) -> LatencySnapshot {
        self.inner.first_item.snapshot()
    }

    /// Calls running now that have had to wait at least once (see the [module docs](self)):
    /// the same figure as the `layercache_calls_in_flight` gauge.
    pub fn in_flight(&self) -> u64 {
        let left = self.inner.local.get(LEFT);
        self.inner.local.get(WAITED).saturating_sub(left)
    }

    /// Calls so far, by outcome.
    pub fn counts(&self) -> CallCounts {
        let local = &self.inner.local;
        let (error, cancelled) = (local.get(ERROR), local.get(CANCELLED));
        let failed = error
            .wrapping_add(cancelled)
            .wrapping_add(local.get(CLASSIFIED));
        CallCounts {
            // Every finished call is in the histogram (whatever was taken from it).
            ok: self.inner.histogram.total().count().saturating_sub(failed),
            error,
            cancelled,
            kinds: self
                .inner
                .kinds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|(_, _, n)| *n > 0)
                .map(|(kind, _, n)| (*kind, *n))
                .collect(),
        }
    }
}

impl Inner {
    fn classified(&self, error: &dyn Any) -> Outcome {
        match self.classify.as_ref().and_then(|c| c(error)) {
            Some(kind) => Outcome::Kind(kind),
            None => Outcome::Error,
        }
    }

    /// A call starts to wait: it is in flight until [`left`](Self::left).
    #[inline]
    fn waits(&self) {
        self.local.incr(WAITED);
        self.in_flight.increment(1.0);
    }

    /// A call that [`waits`](Self::waits) finished or was dropped.
    #[inline]
    fn left(&self, slot: usize) {
        self.local.incr_at(slot, LEFT);
        self.in_flight.decrement(1.0);
    }

    /// Record a call that succeeded: the common path, kept small. `waited`: it entered the
    /// in-flight count.
    #[inline]
    fn record_ok(&self, ns: u64, waited: bool) {
        // Looked up here, not at the start: the call may have moved to another thread.
        let slot = local::slot();
        self.histogram.record_at(slot, ns);
        self.durations[0].record(ns as f64 * 1e-9);
        if waited {
            self.left(slot);
        }
    }

    /// Record a call that ended otherwise (`None`: dropped before it finished).
    #[cold]
    #[inline(never)]
    fn record(&self, outcome: Option<Outcome>, ns: u64, waited: bool) {
        if let Some(Outcome::Ok) = outcome {
            return self.record_ok(ns, waited);
        }
        let slot = local::slot();
        if waited {
            self.left(slot);
        }
        self.histogram.record_at(slot, ns);
        let seconds = ns as f64 * 1e-9;
        match outcome {
            Some(Outcome::Ok) => {}
            Some(Outcome::Error) => {
                self.durations[1].record(seconds);
                self.local.incr_at(slot, ERROR);
            }
            None => {
                self.durations[2].record(seconds);
                self.local.incr_at(slot, CANCELLED);
            }
            Some(Outcome::Kind(kind)) => {
                let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
                match kinds.iter_mut().find(|(k, ..)| *k == kind) {
                    Some((_, histogram, n)) => {
                        histogram.record(seconds);
                        *n += 1;
                    }
                    None => {
                        let histogram = duration_histogram(&self.labels, kind);
                        histogram.record(seconds);
                        kinds.push((kind, histogram, 1));
                    }
                }
                drop(kinds);
                self.local.incr_at(slot, CLASSIFIED);
            }
        }
    }
}

/// How a [`Timed`] call's output is judged.
trait Judge<O> {
    /// `None` for success, else the failure's outcome.
    fn failure(inner: &Inner, output: &O) -> Option<Outcome>;
}

/// [`Timer::time`]: by the output's [`CallResult`].
struct ByResult;
/// [`Timer::time_infallible`]: every output is a success.
struct AlwaysOk;

impl<O: CallResult> Judge<O> for ByResult {
    #[inline]
    fn failure(inner: &Inner, output: &O) -> Option<Outcome> {
        output.failure().map(|error| inner.classified(error))
    }
}

impl<O> Judge<O> for AlwaysOk {
    #[inline]
    fn failure(_: &Inner, _: &O) -> Option<Outcome> {
        None
    }
}

/// Where a [`Timed`] call is.
enum Progress {
    NotStarted,
    /// It has returned `Pending`: counted in flight.
    Waiting(Stopwatch),
    Done,
}

/// Counts a call whose first poll panics (as cancelled); forgotten on every other path.
struct FirstPoll<'a> {
    inner: &'a Inner,
    started: Stopwatch,
    /// The call has waited before: the [`Timed`] future itself records it when dropped.
    waited: bool,
}

impl Drop for FirstPoll<'_> {
    fn drop(&mut self) {
        if !self.waited {
            self.inner.record(None, self.started.elapsed_ns(), false);
        }
    }
}

pin_project_lite::pin_project! {
    /// A timed call (what [`Timer::time`] returns): a plain future rather than an `async`
    /// block, whose generated state machine costs a few ns more a call; records `cancelled`
    /// if dropped while running.
    struct Timed<'a, F, J> {
        #[pin]
        call: F,
        inner: &'a Inner,
        progress: Progress,
        judge: std::marker::PhantomData<fn() -> J>,
    }

    impl<'a, F, J> PinnedDrop for Timed<'a, F, J> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Progress::Waiting(started) = *this.progress {
                this.inner.record(None, started.elapsed_ns(), true);
            }
        }
    }
}

impl<'a, F, J> Timed<'a, F, J> {
    fn new(inner: &'a Inner, call: F) -> Self {
        Timed {
            call,
            inner,
            progress: Progress::NotStarted,
            judge: std::marker::PhantomData,
        }
    }
}

impl<F: Future, J: Judge<F::Output>> Future for Timed<'_, F, J> {
    type Output = F::Output;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = *this.inner;
        let (started, waited) = match *this.progress {
            Progress::Waiting(started) => (started, true),
            // The first poll keeps its start time on the stack: a call that is ready at once
            // never writes it to the future.
            Progress::NotStarted => (Stopwatch::start(), false),
            // Polled again after it finished (a caller's mistake): the call answers for itself.
            Progress::Done => return this.call.poll(cx),
        };
        let unwinding = FirstPoll {
            inner,
            started,
            waited,
        };
        let polled = this.call.poll(cx);
        std::mem::forget(unwinding);
        let output = match polled {
            Poll::Ready(output) => output,
            Poll::Pending => {
                if !waited {
                    inner.waits();
                    *this.progress = Progress::Waiting(started);
                }
                return Poll::Pending;
            }
        };
        let ns = started.elapsed_ns();
        *this.progress = Progress::Done;
        match J::failure(inner, &output) {
            None => inner.record_ok(ns, waited),
            outcome => inner.record(outcome, ns, waited),
        }
        Poll::Ready(output)
    }
}

fn duration_histogram(labels: &[Label], outcome: &'static str) -> Histogram {
    let mut labels = labels.to_vec();
    labels.push(Label::new("outcome", outcome));
    ::metrics::histogram!(CALL_DURATION_SECONDS, labels)
}

/// Builds a [`Timer`]; see [`Timer::builder`].
#[must_use]
pub struct TimerBuilder {
    call: String,
    labels: Vec<(String, String)>,
    kinds: Vec<&'static str>,
    classify: Option<Classifier>,
}

impl fmt::Debug for TimerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerBuilder")
            .field("call", &self.call)
            .field("labels", &self.labels)
            .field("kinds", &self.kinds)
            .field("classify", &self.classify.as_ref().map(|_| "fn"))
            .finish()
    }
}

impl TimerBuilder {
    /// Add a static label to every metric of this timer (for example `model = gpt-4o`). Setting
    /// a key again replaces its value: a series with two labels of one name would make
    /// Prometheus reject the whole scrape. The keys the timer sets itself, `call` and
    /// `outcome`, are not taken (a `tracing` warning says so); name the call with
    /// [`Timer::builder`].
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        if key == "call" || key == "outcome" {
            crate::log_warn!(
                label = key.as_str(),
                "layercache: a Timer sets the `call` and `outcome` labels itself; this label is not taken"
            );
            return self;
        }
        match self.labels.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.labels.push((key, value)),
        }
        self
    }

    /// Name kinds of errors: `classify(&error)` returns the `outcome` label for it, one of
    /// `kinds` (for example `"timeout"` or `"rate_limited"`), or `None` for a plain `"error"`.
    /// Only errors of type `E` are shown to it; others are plain errors. The kinds' series are
    /// registered when the timer is built (a kind not in `kinds` still counts, its series
    /// registered when it first occurs).
    pub fn classify<E: 'static>(
        mut self,
        kinds: &[&'static str],
        classify: impl Fn(&E) -> Option<&'static str> + Send + Sync + 'static,
    ) -> Self {
        self.kinds = kinds.to_vec();
        self.classify = Some(Box::new(move |error: &dyn Any| {
            error.downcast_ref::<E>().and_then(&classify)
        }));
        self
    }

    /// Build the timer, registering its metrics with the recorder installed now.
    pub fn build(self) -> Timer {
        ::metrics::describe_histogram!(
            CALL_DURATION_SECONDS,
            ::metrics::Unit::Seconds,
            "Duration of timed calls, by outcome"
        );
        ::metrics::describe_gauge!(CALLS_IN_FLIGHT, "Timed calls running now");
        ::metrics::describe_histogram!(
            CALL_FIRST_ITEM_SECONDS,
            ::metrics::Unit::Seconds,
            "Time a timed stream took to yield its first item"
        );
        let mut labels = vec![Label::new("call", self.call.clone())];
        labels.extend(self.labels.into_iter().map(|(k, v)| Label::new(k, v)));
        let mut kinds: Vec<(&'static str, Histogram, u64)> = Vec::new();
        for kind in self.kinds {
            if !kinds.iter().any(|(k, ..)| *k == kind) {
                kinds.push((kind, duration_histogram(&labels, kind), 0));
            }
        }
        Timer {
            inner: Arc::new(Inner {
                durations: [
                    duration_histogram(&labels, "ok"),
                    duration_histogram(&labels, "error"),
                    duration_histogram(&labels, "cancelled"),
                ],
                first_item_seconds: ::metrics::histogram!(CALL_FIRST_ITEM_SECONDS, labels.clone()),
                in_flight: ::metrics::gauge!(CALLS_IN_FLIGHT, labels.clone()),
                name: Arc::from(self.call),
                labels,
                histogram: LatencyHistogram::new(),
                first_item: LatencyHistogram::new(),
                local: Local::default(),
                classify: self.classify,
                kinds: Mutex::new(kinds),
            }),
        }
    }
}

enum StreamState {
    NotStarted,
    Running {
        started: Stopwatch,
        first: bool,
        /// The first failed item's outcome ([`Timer::time_try_stream`]).
        failed: Option<Outcome>,
    },
    Done,
}

/// A stream timed by [`Timer::time_stream`]: yields the inner stream's items unchanged.
pub struct TimedStream<S> {
    stream: Pin<Box<S>>,
    timer: Timer,
    state: StreamState,
}

impl<S> fmt::Debug for TimedStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedStream")
            .field("timer", &self.timer.inner.name)
            .finish_non_exhaustive()
    }
}

impl<S: Stream> TimedStream<S> {
    /// Poll the inner stream and time it; `failure` judges each item (`None`: not a failure).
    fn poll_judged(
        &mut self,
        cx: &mut Context<'_>,
        failure: impl FnOnce(&Inner, &S::Item) -> Option<Outcome>,
    ) -> Poll<Option<S::Item>> {
        if let StreamState::NotStarted = self.state {
            // A stream is in flight from its first poll (it may run for minutes).
            self.timer.inner.waits();
            self.state = StreamState::Running {
                started: Stopwatch::start(),
                first: true,
                failed: None,
            };
        }
        let polled = self.stream.as_mut().poll_next(cx);
        if let (
            Poll::Ready(item),
            StreamState::Running {
                started,
                first,
                failed,
            },
        ) = (&polled, &mut self.state)
        {
            let inner = &self.timer.inner;
            match item {
                Some(item) => {
                    if *first {
                        *first = false;
                        let ns = started.elapsed_ns();
                        inner.first_item.record_ns(ns);
                        inner.first_item_seconds.record(ns as f64 * 1e-9);
                    }
                    if failed.is_none() {
                        *failed = failure(inner, item);
                    }
                }
                None => {
                    let (ns, outcome) = (started.elapsed_ns(), failed.unwrap_or(Outcome::Ok));
                    self.state = StreamState::Done;
                    inner.record(Some(outcome), ns, true);
                }
            }
        }
        polled
    }
}

impl<S: Stream> Stream for TimedStream<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_judged(cx, |_, _| None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

impl<S> Drop for TimedStream<S> {
    fn drop(&mut self) {
        if let StreamState::Running {
            started, failed, ..
        } = self.state
        {
            // Dropped after a failed item (a consumer's `?`) is that failure, else cancelled.
            self.timer.inner.record(failed, started.elapsed_ns(), true);
        }
    }
}

/// A stream of `Result`s timed by [`Timer::time_try_stream`].
struct TimedTryStream<S>(TimedStream<S>);

impl<S, T, E> Stream for TimedTryStream<S>
where
    S: Stream<Item = std::result::Result<T, E>>,
    E: 'static,
{
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_judged(cx, |inner, item| {
            item.as_ref().err().map(|e| inner.classified(e))
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}
