//! Metric names, the handles each cache registers, and the [`Stats`] snapshot.
//!
//! `layercache` records through the [`metrics`](https://docs.rs/metrics) facade and never installs
//! a recorder: the host application chooses the exporter (Prometheus, StatsD, …). Handles are
//! registered once, when a cache is built, with the recorder current at that moment; the hot path
//! only increments them. Build caches after installing your recorder.
//!
//! Every cache also keeps its own counters, readable with `stats()` whether or not a recorder is
//! installed.

use std::sync::atomic::{AtomicU64, Ordering};

use ::metrics::{Counter, Histogram, Label, Unit};

/// `layercache_requests_total{cache,layer,result=hit|miss|stale}`: lookups per layer and result.
pub const REQUESTS_TOTAL: &str = "layercache_requests_total";
/// `layercache_loads_total{cache,outcome=ok|error|timeout|fail_safe}`: `ok` and `error` count
/// loader runs; `timeout` counts callers that stopped waiting for a load, and `fail_safe` callers
/// answered with a stale value because the load failed or timed out.
pub const LOADS_TOTAL: &str = "layercache_loads_total";
/// `layercache_load_duration_seconds{cache}`: histogram of loader run time.
pub const LOAD_DURATION_SECONDS: &str = "layercache_load_duration_seconds";
/// `layercache_coalesced_total{cache}`: callers that waited on another caller's load.
pub const COALESCED_TOTAL: &str = "layercache_coalesced_total";
/// `layercache_layer_errors_total{cache,layer,op}`: failed layer operations.
pub const LAYER_ERRORS_TOTAL: &str = "layercache_layer_errors_total";
/// `layercache_op_duration_seconds{cache,layer,op}`: histogram of layer operation time.
pub const OP_DURATION_SECONDS: &str = "layercache_op_duration_seconds";
/// `layercache_value_bytes{cache,stage=encoded|stored}`: histogram of value sizes.
pub const VALUE_BYTES: &str = "layercache_value_bytes";
/// `layercache_circuit_open{cache,layer}`: gauge, 1 while a layer's circuit breaker is open.
pub const CIRCUIT_OPEN: &str = "layercache_circuit_open";

/// A point-in-time copy of a cache's counters.
///
/// ```
/// # use layercache::MemoryCache;
/// let cache = MemoryCache::<String>::builder().build().unwrap();
/// let stats = cache.stats();
/// assert_eq!(stats.requests(), 0);
/// assert_eq!(stats.hit_ratio(), 0.0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Lookups answered with a fresh value.
    pub hits: u64,
    /// Lookups that found nothing usable.
    pub misses: u64,
    /// Lookups that found a stale (expired but still kept) value.
    pub stale_hits: u64,
    /// Loader invocations (each counts once however many callers waited on it).
    pub loads: u64,
    /// Loader invocations that failed (returned an error or panicked).
    pub load_errors: u64,
    /// Callers that waited on a load another caller had started, instead of loading themselves.
    pub coalesced: u64,
    /// Failed layer operations (connection errors, timeouts, values that failed to decode).
    pub errors: u64,
    /// Callers that stopped waiting for a load (soft or hard timeout).
    pub timeouts: u64,
    /// Callers answered with a stale value because the load failed or timed out.
    pub fail_safe: u64,
}

impl Stats {
    /// All lookups: hits, stale hits and misses.
    pub fn requests(&self) -> u64 {
        self.hits + self.misses + self.stale_hits
    }

    /// Fresh hits as a fraction of all lookups; 0 when there were none.
    pub fn hit_ratio(&self) -> f64 {
        let requests = self.requests();
        if requests == 0 {
            0.0
        } else {
            self.hits as f64 / requests as f64
        }
    }
}

/// Counter handle and its local twin, incremented together.
#[derive(Debug)]
struct Counted {
    handle: Counter,
    local: Striped,
}

impl Counted {
    fn new(handle: Counter) -> Self {
        Counted {
            handle,
            local: Striped::default(),
        }
    }

    #[inline]
    fn incr(&self) {
        self.handle.increment(1);
        self.local.incr();
    }

    fn get(&self) -> u64 {
        self.local.sum()
    }
}

/// Stripes of a [`Striped`] counter.
const STRIPES: usize = 8;

/// A counter split over cache-line-sized stripes, each thread incrementing its own: a single
/// shared atomic bounced between cores on every hit, and made the 8-task `l1_hit_parallel`
/// benchmark about 2× slower than raw moka. Reading sums the stripes.
#[derive(Debug, Default)]
struct Striped {
    stripes: [Stripe; STRIPES],
}

/// One stripe, alone on its (pair of) cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Striped {
    #[inline]
    fn incr(&self) {
        self.stripes[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// This thread's stripe: threads are dealt stripes round-robin on first use.
#[inline]
fn stripe() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|cell| {
        let current = cell.get();
        if current < STRIPES {
            return current;
        }
        let assigned = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        cell.set(assigned);
        assigned
    })
}

fn describe() {
    ::metrics::describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Cache lookups by layer and result"
    );
    ::metrics::describe_counter!(LOADS_TOTAL, Unit::Count, "Loader runs by outcome");
    ::metrics::describe_histogram!(LOAD_DURATION_SECONDS, Unit::Seconds, "Loader run time");
    ::metrics::describe_counter!(
        COALESCED_TOTAL,
        Unit::Count,
        "Callers that waited on another caller's load"
    );
    ::metrics::describe_counter!(LAYER_ERRORS_TOTAL, Unit::Count, "Failed layer operations");
    ::metrics::describe_histogram!(OP_DURATION_SECONDS, Unit::Seconds, "Layer operation time");
}

/// The `layercache_circuit_open{cache,layer}` gauge.
pub(crate) fn circuit_gauge(cache: &str, layer: &str) -> ::metrics::Gauge {
    ::metrics::describe_gauge!(CIRCUIT_OPEN, "1 while a layer's circuit breaker is open");
    ::metrics::gauge!(CIRCUIT_OPEN, "cache" => cache.to_owned(), "layer" => layer.to_owned())
}

/// Request counters of one layer of one cache.
#[derive(Debug)]
pub(crate) struct LayerMetrics {
    hit: Counted,
    miss: Counted,
    stale: Counted,
    cache: String,
    layer: &'static str,
}

impl LayerMetrics {
    pub(crate) fn new(cache: &str, layer: &'static str) -> Self {
        describe();
        let counter = |result: &'static str| {
            Counted::new(::metrics::counter!(
                REQUESTS_TOTAL,
                "cache" => cache.to_owned(),
                "layer" => layer,
                "result" => result
            ))
        };
        LayerMetrics {
            hit: counter("hit"),
            miss: counter("miss"),
            stale: counter("stale"),
            cache: cache.to_owned(),
            layer,
        }
    }

    #[inline]
    pub(crate) fn hit(&self) {
        self.hit.incr();
    }

    #[inline]
    pub(crate) fn miss(&self) {
        self.miss.incr();
    }

    #[inline]
    pub(crate) fn stale(&self) {
        self.stale.incr();
    }

    /// A counter for errors of operation `op` on this layer.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn error_counter(&self, op: &'static str) -> Counter {
        ::metrics::counter!(
            LAYER_ERRORS_TOTAL,
            vec![
                Label::new("cache", self.cache.clone()),
                Label::new("layer", self.layer),
                Label::new("op", op),
            ]
        )
    }

    /// A histogram of the duration of operation `op` on this layer.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn op_histogram(&self, op: &'static str) -> Histogram {
        ::metrics::histogram!(
            OP_DURATION_SECONDS,
            vec![
                Label::new("cache", self.cache.clone()),
                Label::new("layer", self.layer),
                Label::new("op", op),
            ]
        )
    }

    pub(crate) fn fill(&self, stats: &mut Stats) {
        stats.hits = self.hit.get();
        stats.misses = self.miss.get();
        stats.stale_hits = self.stale.get();
    }
}

/// Loader counters of one cache.
#[derive(Debug)]
pub(crate) struct LoadMetrics {
    ok: Counted,
    error: Counted,
    timeout: Counted,
    fail_safe: Counted,
    coalesced: Counted,
    duration: Histogram,
}

impl LoadMetrics {
    pub(crate) fn new(cache: &str) -> Self {
        describe();
        let outcome = |outcome: &'static str| {
            Counted::new(::metrics::counter!(
                LOADS_TOTAL,
                "cache" => cache.to_owned(),
                "outcome" => outcome
            ))
        };
        LoadMetrics {
            ok: outcome("ok"),
            error: outcome("error"),
            timeout: outcome("timeout"),
            fail_safe: outcome("fail_safe"),
            coalesced: Counted::new(
                ::metrics::counter!(COALESCED_TOTAL, "cache" => cache.to_owned()),
            ),
            duration: ::metrics::histogram!(LOAD_DURATION_SECONDS, "cache" => cache.to_owned()),
        }
    }

    pub(crate) fn load_ok(&self, took: std::time::Duration) {
        self.ok.incr();
        self.duration.record(took.as_secs_f64());
    }

    pub(crate) fn load_error(&self, took: std::time::Duration) {
        self.error.incr();
        self.duration.record(took.as_secs_f64());
    }

    /// A caller gave up waiting (soft or hard timeout).
    pub(crate) fn timeout(&self) {
        self.timeout.incr();
    }

    /// A caller got a stale value because the load failed or timed out.
    pub(crate) fn fail_safe(&self) {
        self.fail_safe.incr();
    }

    pub(crate) fn coalesced(&self) {
        self.coalesced.incr();
    }

    pub(crate) fn fill(&self, stats: &mut Stats) {
        stats.loads = self.ok.get() + self.error.get();
        stats.load_errors = self.error.get();
        stats.coalesced = self.coalesced.get();
        stats.timeouts = self.timeout.get();
        stats.fail_safe = self.fail_safe.get();
    }
}
