//! Metric names, the handles each cache registers, and the [`Stats`] snapshot.
//!
//! `layercache` records through the [`metrics`](https://docs.rs/metrics) facade and never installs
//! a recorder: the host application chooses the exporter (Prometheus, StatsD, …). Handles are
//! registered once, when a cache is built, with the recorder current at that moment; the hot path
//! only increments them. Build caches after installing your recorder.
//!
//! Every cache also keeps its own counters, readable with `stats()` whether or not a recorder is
//! installed.
//!
//! # Counting on many cores
//!
//! `stats()` counts each answer in a slot of the answering thread, so threads never share a
//! cache line for it. A recorder's counter is different: it is one atomic that every thread
//! increments, and on a cache hit — tens of nanoseconds — that shared write is the one part
//! that does not scale with cores. On the 2-core benchmark VM a Prometheus recorder cost the
//! quick_cache engine 12 % of its hits on one thread and 22 % on two (`l1_scaling`,
//! `memory_quick_cache_prometheus`); on more cores each added thread adds to the wait.
//!
//! For a cache that serves many hits per second on many cores, set
//! [`MemoryCacheBuilder::metrics_interval`](crate::MemoryCacheBuilder::metrics_interval) or
//! [`LayeredBuilder::metrics_interval`](crate::LayeredBuilder::metrics_interval): answers are
//! then counted only in the threads' slots, and what they gained is handed to the recorder once
//! per interval, one increment per series. What changes:
//!
//! * the recorder's `layercache_requests_total` lags the cache by up to one interval (two for
//!   an answer made in the instant the publishing task stops, plus the time a busy runtime
//!   takes to run that task). Nothing is lost or counted twice:
//!   each publication hands over the difference since the last, and dropping the cache hands
//!   over the rest. Keep the interval well under your scrape interval; 100 ms–1 s is typical;
//! * the publishing task runs on the tokio runtime that served the answer; an answer outside
//!   any runtime is handed over at once. On a runtime built without timers the task cannot
//!   sleep: the cache then hands counts over on the first answer an interval after the last
//!   publication instead;
//! * `stats()`, the loader metrics (`layercache_loads_total`, durations) and every other metric
//!   stay exact and immediate.

// `LayerMetrics` serves the Redis layer only.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use ::metrics::{Counter, Histogram, Label, Unit};

use self::local::Local;

pub(crate) mod batch;
pub(crate) mod local;

/// `layercache_requests_total{cache,layer,result}`: answers, each counted once.
///
/// For a cache with a loading front (`Layered`, `MemoryCache`, `LoadingCache`) every `get` and
/// `get_or_load` answer is one increment of one of these series:
///
/// | `layer` | `result` | meaning |
/// |---|---|---|
/// | `l1` / `l2` | `hit` | a fresh value from that layer |
/// | `l1` / `l2` | `stale` | a stale value from that layer (fail-safe, soft timeout, or a plain `get`) |
/// | `none` | `miss` | no usable value: the caller ran the loader (or, for a plain `get`, got nothing) |
/// | `none` | `joined` | the caller waited for a load another caller had started |
///
/// The layers inside a stack are read without counting, so a stack never counts one answer
/// twice. A `RedisCache` used on its own counts its own `get`s under `layer="redis"` (series
/// that appear on first use, so a Redis layer inside a stack adds none).
///
/// Hit ratio over 5 minutes: `sum(rate(layercache_requests_total{cache="chat",result="hit"}[5m]))
/// / sum(rate(layercache_requests_total{cache="chat"}[5m]))`; served without a load:
/// `1 - sum(rate(layercache_requests_total{cache="chat",result="miss"}[5m])) /
/// sum(rate(layercache_requests_total{cache="chat"}[5m]))`.
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
/// `layercache_value_bytes{cache,stage=encoded|stored}`: histogram of value sizes written to a
/// byte layer: `encoded` is the serialized value, `stored` the frame sent (after compression).
pub const VALUE_BYTES: &str = "layercache_value_bytes";
/// `layercache_circuit_open{cache,layer}`: gauge, 1 while a layer's circuit breaker is open.
pub const CIRCUIT_OPEN: &str = "layercache_circuit_open";

/// `layercache_backplane_messages_total{namespace,event=published|publish_failed|received|dropped|overflowed}`:
/// backplane messages: changes this replica published (and publish attempts that failed, which
/// are retried), changes received from other replicas, messages dropped (foreign, garbled, or
/// lost because the replica fell behind), and outbox overflows (Redis unreachable for
/// [`MAX_OUTBOX`](crate::fleet::MAX_OUTBOX) changed keys: they were replaced by one `resync`).
pub const BACKPLANE_MESSAGES_TOTAL: &str = "layercache_backplane_messages_total";
/// `layercache_backplane_subscribed{namespace}`: gauge, 1 while the replica hears the backplane
/// (its L1 is trusted), 0 while it does not.
pub const BACKPLANE_SUBSCRIBED: &str = "layercache_backplane_subscribed";
/// `layercache_leases_total{namespace,result=won|waited|timed_out|holder_lost|bypassed}`:
/// cross-process single-flight: leases won (this replica loaded for the fleet), loads saved by
/// waiting for another replica's value, waits that ended without it, holders that vanished, and
/// loads run without the lease (the replica could not hear the fleet or reach Redis).
pub const LEASES_TOTAL: &str = "layercache_leases_total";
/// `layercache_invalidations_total{cache,kind=tag|clear|prefix}`: group invalidations this
/// replica made (`invalidate_tag`, `clear`, `invalidate_prefix`).
pub const INVALIDATIONS_TOTAL: &str = "layercache_invalidations_total";

/// A point-in-time copy of a cache's counters. Each answer of a loading front is counted exactly
/// once, in `hits`, `stale_hits`, `misses` or `coalesced`.
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
    /// Answers with a fresh value from a layer (L1 or L2).
    pub hits: u64,
    /// Of `hits`, those answered by L2.
    pub l2_hits: u64,
    /// Answers that found nothing usable (and, in `get_or_load`, ran the loader).
    pub misses: u64,
    /// Answers with a stale (expired but still kept) value.
    pub stale_hits: u64,
    /// Loader invocations (each counts once however many callers waited on it).
    pub loads: u64,
    /// Loader invocations that failed (returned an error or panicked).
    pub load_errors: u64,
    /// Callers that waited on a load another caller had started, instead of loading themselves
    /// (answers of their own: not counted in `misses`).
    pub coalesced: u64,
    /// Failed layer operations (connection errors, timeouts, values that failed to decode).
    pub errors: u64,
    /// Callers that stopped waiting for a load (soft or hard timeout).
    pub timeouts: u64,
    /// Callers answered with a stale value because the load failed or timed out.
    pub fail_safe: u64,
}

impl Stats {
    /// All answers: hits, stale hits, misses and joined callers.
    pub fn requests(&self) -> u64 {
        self.hits + self.misses + self.stale_hits + self.coalesced
    }

    /// Fresh hits as a fraction of all answers; 0 when there were none.
    pub fn hit_ratio(&self) -> f64 {
        ratio(self.hits, self.requests())
    }

    /// Answers that cost no load of their own (hits, stale hits and joined callers) as a
    /// fraction of all answers; 0 when there were none. This is the share of upstream calls
    /// (and their cost) the cache saved.
    pub fn served_from_cache_ratio(&self) -> f64 {
        let requests = self.requests();
        ratio(requests - self.misses, requests)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
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
    ::metrics::describe_histogram!(
        VALUE_BYTES,
        Unit::Bytes,
        "Sizes of values written to a byte layer: serialized (encoded) and as stored (stored)"
    );
}

/// Describe the fleet series (once per backplane; the recorder keeps the last).
pub(crate) fn describe_fleet() {
    ::metrics::describe_counter!(
        BACKPLANE_MESSAGES_TOTAL,
        Unit::Count,
        "Backplane messages published, failed, received and dropped, and outbox overflows"
    );
    ::metrics::describe_gauge!(
        BACKPLANE_SUBSCRIBED,
        "1 while the replica hears the backplane (L1 trusted)"
    );
    ::metrics::describe_counter!(
        INVALIDATIONS_TOTAL,
        Unit::Count,
        "Tag, clear and prefix invalidations made by this replica"
    );
    ::metrics::describe_counter!(
        LEASES_TOTAL,
        Unit::Count,
        "Cross-process single-flight leases by result"
    );
}

/// Count a group invalidation (`kind`: `tag`, `clear` or `prefix`) of cache `cache`.
pub(crate) fn count_invalidation(cache: &str, kind: &'static str) {
    ::metrics::describe_counter!(
        INVALIDATIONS_TOTAL,
        Unit::Count,
        "Tag, clear and prefix invalidations made by this replica"
    );
    ::metrics::counter!(INVALIDATIONS_TOTAL, "cache" => cache.to_owned(), "kind" => kind)
        .increment(1);
}

/// Where an answer of a loading front came from, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    L1Hit,
    L2Hit,
    L1Stale,
    L2Stale,
    Miss,
    Joined,
}

/// Answer counters of one loading front (`Layered`, and the fronts of `MemoryCache` and
/// `LoadingCache`): one series per kind of answer, registered when the cache is built — only
/// those that can occur (no L2 series without an L2).
#[derive(Debug)]
pub(crate) struct FrontMetrics {
    /// Indexed by `Counted as usize`; `None` where the series cannot occur.
    requests: [Option<Counter>; 6],
    local: Local<6>,
    /// Set by `metrics_interval`: the recorder gets the counts once per interval (see
    /// [`batch`]), not on every answer.
    batch: Option<batch::Batch>,
}

impl FrontMetrics {
    /// Counters for the cache named `cache`; with `interval`, published once per interval.
    pub(crate) fn new(cache: &str, has_l2: bool, interval: Option<std::time::Duration>) -> Self {
        describe();
        let series = |layer: &'static str, result: &'static str| {
            Some(::metrics::counter!(
                REQUESTS_TOTAL,
                "cache" => cache.to_owned(),
                "layer" => layer,
                "result" => result
            ))
        };
        FrontMetrics {
            requests: [
                series("l1", "hit"),
                if has_l2 { series("l2", "hit") } else { None },
                series("l1", "stale"),
                if has_l2 { series("l2", "stale") } else { None },
                series("none", "miss"),
                series("none", "joined"),
            ],
            local: Local::default(),
            batch: interval
                .filter(|i| !i.is_zero())
                .map(|i| batch::Batch::new(i, 6)),
        }
    }

    #[inline]
    pub(crate) fn count(self: &std::sync::Arc<Self>, what: Counted) {
        let i = what as usize;
        self.local.incr(i);
        match &self.batch {
            None => {
                if let Some(counter) = &self.requests[i] {
                    counter.increment(1);
                }
            }
            Some(batch) => {
                if batch.needs_attention() {
                    batch::attend(self);
                }
            }
        }
    }

    pub(crate) fn fill(&self, stats: &mut Stats) {
        let get = |c: Counted| self.local.get(c as usize);
        stats.l2_hits = get(Counted::L2Hit);
        stats.hits = get(Counted::L1Hit).wrapping_add(stats.l2_hits);
        stats.stale_hits = get(Counted::L1Stale).wrapping_add(get(Counted::L2Stale));
        stats.misses = get(Counted::Miss);
    }
}

impl batch::Publish for FrontMetrics {
    fn batch(&self) -> Option<&batch::Batch> {
        self.batch.as_ref()
    }

    fn publish(&self) -> bool {
        self.batch
            .as_ref()
            .is_some_and(|batch| batch.publish(&self.local, &self.requests))
    }
}

impl Drop for FrontMetrics {
    /// Hand the recorder the counts made since the last publication.
    fn drop(&mut self) {
        let _ = batch::Publish::publish(self);
    }
}

/// The `layercache_circuit_open{cache,layer}` gauge, or a no-op one where the layer does not
/// exist (no series for it).
pub(crate) fn circuit_gauge(cache: &str, layer: &str, exists: bool) -> ::metrics::Gauge {
    if !exists {
        return ::metrics::Gauge::noop();
    }
    ::metrics::describe_gauge!(CIRCUIT_OPEN, "1 while a layer's circuit breaker is open");
    ::metrics::gauge!(CIRCUIT_OPEN, "cache" => cache.to_owned(), "layer" => layer.to_owned())
}

/// Request counters of one layer used on its own (a `RedisCache`'s direct `get`s). The series
/// are registered on first use — with the recorder current on that thread — so a layer that is
/// only read by a stack (uncounted) adds no always-zero series.
#[derive(Debug)]
pub(crate) struct LayerMetrics {
    /// `layercache_requests_total` handles, indexed by [`HIT`], [`MISS`], [`STALE`].
    requests: std::sync::OnceLock<[Counter; 3]>,
    /// Their local twins, read by `stats()`.
    local: Local<3>,
    cache: String,
    layer: &'static str,
}

const HIT: usize = 0;
const MISS: usize = 1;
const STALE: usize = 2;

impl LayerMetrics {
    pub(crate) fn new(cache: &str, layer: &'static str) -> Self {
        describe();
        LayerMetrics {
            requests: std::sync::OnceLock::new(),
            local: Local::default(),
            cache: cache.to_owned(),
            layer,
        }
    }

    #[inline]
    fn count(&self, which: usize) {
        let requests = self.requests.get_or_init(|| {
            ["hit", "miss", "stale"].map(|result| {
                ::metrics::counter!(
                    REQUESTS_TOTAL,
                    "cache" => self.cache.clone(),
                    "layer" => self.layer,
                    "result" => result
                )
            })
        });
        requests[which].increment(1);
        self.local.incr(which);
    }

    #[inline]
    pub(crate) fn hit(&self) {
        self.count(HIT);
    }

    #[inline]
    pub(crate) fn miss(&self) {
        self.count(MISS);
    }

    #[inline]
    pub(crate) fn stale(&self) {
        self.count(STALE);
    }

    /// The labels of a per-operation metric of this layer: `cache`, `layer`, `op`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn op_labels(&self, op: &'static str) -> Vec<Label> {
        vec![
            Label::new("cache", self.cache.clone()),
            Label::new("layer", self.layer),
            Label::new("op", op),
        ]
    }

    /// A counter for errors of operation `op` on this layer.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn error_counter(&self, op: &'static str) -> Counter {
        ::metrics::counter!(LAYER_ERRORS_TOTAL, self.op_labels(op))
    }

    /// A histogram of the duration of operation `op` on this layer.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn op_histogram(&self, op: &'static str) -> Histogram {
        ::metrics::histogram!(OP_DURATION_SECONDS, self.op_labels(op))
    }

    pub(crate) fn fill(&self, stats: &mut Stats) {
        stats.hits = self.local.get(HIT);
        stats.misses = self.local.get(MISS);
        stats.stale_hits = self.local.get(STALE);
    }
}

/// Loader counters of one cache.
#[derive(Debug)]
pub(crate) struct LoadMetrics {
    /// `layercache_loads_total` and `layercache_coalesced_total` handles, indexed by [`OK`],
    /// [`ERROR`], [`TIMEOUT`], [`FAIL_SAFE`], [`COALESCED`].
    counters: [Counter; 5],
    /// Their local twins, read by `stats()`.
    local: Local<5>,
    duration: Histogram,
    /// Loader run times, readable without a recorder.
    pub(crate) latency: crate::instrument::LatencyHistogram,
}

const OK: usize = 0;
const ERROR: usize = 1;
const TIMEOUT: usize = 2;
const FAIL_SAFE: usize = 3;
const COALESCED: usize = 4;

impl LoadMetrics {
    pub(crate) fn new(cache: &str) -> Self {
        describe();
        let outcome = |outcome: &'static str| ::metrics::counter!(LOADS_TOTAL, "cache" => cache.to_owned(), "outcome" => outcome);
        LoadMetrics {
            counters: [
                outcome("ok"),
                outcome("error"),
                outcome("timeout"),
                outcome("fail_safe"),
                ::metrics::counter!(COALESCED_TOTAL, "cache" => cache.to_owned()),
            ],
            local: Local::default(),
            duration: ::metrics::histogram!(LOAD_DURATION_SECONDS, "cache" => cache.to_owned()),
            latency: crate::instrument::LatencyHistogram::new(),
        }
    }

    fn count(&self, which: usize) {
        self.counters[which].increment(1);
        self.local.incr(which);
    }

    pub(crate) fn load_ok(&self, took: std::time::Duration) {
        self.count(OK);
        self.duration.record(took.as_secs_f64());
        self.latency.record(took);
    }

    pub(crate) fn load_error(&self, took: std::time::Duration) {
        self.count(ERROR);
        self.duration.record(took.as_secs_f64());
        self.latency.record(took);
    }

    /// A caller gave up waiting (soft or hard timeout).
    pub(crate) fn timeout(&self) {
        self.count(TIMEOUT);
    }

    /// A caller got a stale value because the load failed or timed out.
    pub(crate) fn fail_safe(&self) {
        self.count(FAIL_SAFE);
    }

    pub(crate) fn coalesced(&self) {
        self.count(COALESCED);
    }

    pub(crate) fn fill(&self, stats: &mut Stats) {
        let ok = self.local.get(OK);
        let error = self.local.get(ERROR);
        stats.loads = ok.wrapping_add(error);
        stats.load_errors = error;
        stats.coalesced = self.local.get(COALESCED);
        stats.timeouts = self.local.get(TIMEOUT);
        stats.fail_safe = self.local.get(FAIL_SAFE);
    }
}
