//! [`LayeredBuilder`]: the settings of a [`Layered`] cache, checked when it is built.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

#[cfg(feature = "redis")]
use super::fleet;
use super::{Inner, Layered, Predicate};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::load::breaker::{Breaker, BreakerConfig};
use crate::load::{Flights, LoadOptions, DEFAULT_TTL};
use crate::memory::MemoryCache;
use crate::metrics::{circuit_gauge, FrontMetrics};

/// Builds a [`Layered`] cache; see [`Layered::builder`] and [`Layered::single`].
#[must_use]
pub struct LayeredBuilder<V> {
    l1: Arc<dyn Cache<V>>,
    l1_memory: Option<MemoryCache<V>>,
    l2: Option<Arc<dyn Cache<V>>>,
    name: String,
    l1_ttl: Option<Duration>,
    defaults: LoadOptions,
    /// Set by [`breaker`](LayeredBuilder::breaker) (else the default).
    breaker: Option<BreakerConfig>,
    max_concurrent_loads: Option<usize>,
    admit: Option<Predicate<V>>,
    negative: Option<(Predicate<V>, Duration)>,
    fresh_for: Option<super::FreshFor<V>>,
    /// Counters shared with a `MemoryCache` whose front this is.
    metrics: Option<Arc<FrontMetrics>>,
    metrics_interval: Option<Duration>,
    tag_retention: Duration,
    #[cfg(feature = "redis")]
    backplane: Option<crate::fleet::Backplane>,
    #[cfg(feature = "redis")]
    lease_ttl: Option<Duration>,
}

impl<V: Send + Sync + 'static> fmt::Debug for LayeredBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayeredBuilder")
            .field("name", &self.name)
            .field("l1", &self.l1.name())
            .field("l2", &self.l2.as_ref().map(|l2| l2.name().to_owned()))
            .field("l1_ttl", &self.l1_ttl)
            .field("defaults", &self.defaults)
            .field("breaker", &self.breaker)
            .field("max_concurrent_loads", &self.max_concurrent_loads)
            .field("metrics_interval", &self.metrics_interval)
            .field("tag_retention", &self.tag_retention)
            .finish_non_exhaustive()
    }
}

impl<V> LayeredBuilder<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Defaults around `l1` (`l1_memory`: the same cache when it is a `MemoryCache`).
    pub(super) fn new(l1: Arc<dyn Cache<V>>, l1_memory: Option<MemoryCache<V>>) -> Self {
        LayeredBuilder {
            l1,
            l1_memory,
            l2: None,
            name: "layered".into(),
            l1_ttl: None,
            defaults: LoadOptions::default(),
            breaker: None,
            max_concurrent_loads: None,
            admit: None,
            negative: None,
            fresh_for: None,
            metrics: None,
            metrics_interval: None,
            tag_retention: crate::tags::DEFAULT_TAG_RETENTION,
            #[cfg(feature = "redis")]
            backplane: None,
            #[cfg(feature = "redis")]
            lease_ttl: None,
        }
    }

    /// Put `l2` behind L1 (replacing an L2 set before).
    pub fn l2(mut self, l2: impl Cache<V> + 'static) -> Self {
        self.l2 = Some(Arc::new(l2));
        self
    }

    /// The cache's name in metric labels (`cache="…"`). Default `"layered"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Keep values in L1 at most this long before checking L2 again (default: as long as the
    /// value is fresh). Short L1 lifetimes bound how long a process serves a value another
    /// process has replaced.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// Defaults for every `get_or_load` call (each call's options override them field by
    /// field). Without a lifetime here or in the call, loaded values live for
    /// [`DEFAULT_TTL`].
    pub fn default_options(mut self, options: LoadOptions) -> Self {
        self.defaults = options;
        self
    }

    /// The L2 circuit breaker (default: open after 5 failures in 10 s, probe after 500 ms).
    /// It guards L2: a stack without one refuses it at [`build`](Self::build).
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// Run at most this many loads at once (across all keys), to protect a rate-limited API.
    /// Waiting for a turn is part of the load (the callers' timeouts apply to it).
    ///
    /// A loader may call `get_or_load` on the same cache (an answer that needs a cached
    /// embedding): such an inner load runs under its outer load's turn instead of waiting for
    /// one of its own, which could never come once every turn is taken by an outer load waiting
    /// for its inner one. So the limit bounds the loads callers start; the loads their loaders
    /// start inside them (on the loader's own task) come on top. A load started from a task the
    /// loader spawns is a caller's load again.
    ///
    /// Zero is refused by [`build`](Self::build); a limit too large to ever be reached (up to
    /// `usize::MAX`) is accepted and means no limit in practice.
    pub fn max_concurrent_loads(mut self, loads: usize) -> Self {
        self.max_concurrent_loads = Some(loads);
        self
    }

    /// Cap each loaded value's fresh lifetime by what `fresh_for` reads from it (the HTTP layer:
    /// the response's own `max-age`).
    #[cfg(feature = "tower")]
    pub(crate) fn fresh_for(
        mut self,
        fresh_for: impl Fn(&V) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.fresh_for = Some(Arc::new(fresh_for));
        self
    }

    /// Store a loaded value only if `admit` says so (it is still returned to the callers): for
    /// example, not an AI reply cut off by a length limit, or a refusal.
    pub fn admit(mut self, admit: impl Fn(&V) -> bool + Send + Sync + 'static) -> Self {
        self.admit = Some(Arc::new(admit));
        self
    }

    /// Negative caching: values for which `is_negative` holds (a `None`, a not-found) are stored
    /// with their own, usually shorter, lifetime `ttl`, and without a stale period.
    pub fn negative(
        mut self,
        is_negative: impl Fn(&V) -> bool + Send + Sync + 'static,
        ttl: Duration,
    ) -> Self {
        self.negative = Some((Arc::new(is_negative), ttl));
        self
    }

    /// Keep this replica's L1 in step with the fleet's: changes made here are announced on
    /// `backplane`, and changes announced by other replicas evict the key from this L1 (see
    /// [`crate::fleet`] for the guarantees and the bound on lost messages). A change (`set`,
    /// `delete`, `invalidate_tag`…) returns once its announcement is published, at most
    /// [`ANNOUNCE_WAIT`](crate::fleet::ANNOUNCE_WAIT) later. L1 must be a [`MemoryCache`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn backplane(mut self, backplane: crate::fleet::Backplane) -> Self {
        self.backplane = Some(backplane);
        self
    }

    /// How long a fleet lease lasts unless its holder extends it (default
    /// [`DEFAULT_LEASE_TTL`](crate::fleet::DEFAULT_LEASE_TTL), 5 s; the holder extends it every
    /// third of this while its load runs). It bounds how long the fleet waits for a replica
    /// that died mid-load. Needs a [`backplane`](Self::backplane).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// How long a tagged entry may live, and so how long a tag's invalidation time is kept
    /// (default [`DEFAULT_TAG_RETENTION`](crate::tags::DEFAULT_TAG_RETENTION), 30 days). An
    /// entry that carries tags lives (fresh and stale) at most this long after it was created,
    /// in every layer; a tag's invalidation time is kept in Redis this long (plus an hour for
    /// clock differences, or plus the retention itself when shorter) and then deleted by a
    /// later invalidation, because no entry it could invalidate is left. Without a bound, every
    /// `invalidate_tag` of a new tag (one per user, per document) would leave a key in Redis
    /// for good. Untagged entries and [`clear`](Layered::clear) are not concerned, and neither
    /// is a `MemoryCache`'s own `get_or_load` (its tag times never leave the process).
    /// `Duration::MAX` keeps tagged entries for their whole lifetimes and invalidation times
    /// for good. Give every replica of a namespace the same retention: one with a shorter one
    /// deletes the times sooner than the others' entries need them.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::{Layered, MemoryCache};
    ///
    /// # fn main() -> layercache::Result<()> {
    /// let cache = Layered::single(MemoryCache::<String>::builder().build()?)
    ///     .tag_retention(Duration::from_secs(7 * 24 * 3600))
    ///     .build()?;
    /// # let _ = cache;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tag_retention(mut self, retention: Duration) -> Self {
        self.tag_retention = retention;
        self
    }

    /// Hand answer counts to the metrics recorder once per `interval` instead of on every
    /// answer (default: on every answer), so that threads serving hits do not all write one
    /// shared counter. See [`crate::metrics`] ("Counting on many cores") for when to set it and
    /// what it changes; [`stats`](Layered::stats) stays exact either way. `Duration::ZERO` keeps
    /// the default.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::{Layered, MemoryCache};
    ///
    /// let l1 = MemoryCache::<String>::builder().build()?;
    /// let cache: Layered<String> = Layered::single(l1)
    ///     .name("chat")
    ///     .metrics_interval(Duration::from_millis(100))
    ///     .build()?;
    /// # Ok::<(), layercache::Error>(())
    /// ```
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = Some(interval);
        self
    }

    /// Count answers into `metrics` (a `MemoryCache`'s own counters).
    pub(crate) fn shared_metrics(mut self, metrics: Arc<FrontMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Build the cache.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty name, a zero `l1_ttl`, a concurrency limit of zero,
    /// default options that [`LoadOptions::validate`] rejects, a breaker without an L2 or with
    /// settings [`BreakerConfig`] refuses, or a backplane over an L1 that is
    /// not a [`MemoryCache`], a lease lifetime without a backplane or under 30 ms, a metrics
    /// interval over a minute, a tag retention under a second;
    /// [`Error::NoRuntime`] for a backplane outside a tokio runtime.
    pub fn build(self) -> Result<Layered<V>> {
        if self.name.is_empty() {
            return Err(Error::config("the cache name must not be empty"));
        }
        if self.l1_ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("l1_ttl must be greater than zero"));
        }
        if self.max_concurrent_loads == Some(0) {
            return Err(Error::config("max_concurrent_loads must be at least 1"));
        }
        if self.tag_retention < Duration::from_secs(1) {
            return Err(Error::config(format!(
                "tag_retention must be at least 1 s, not {:?}",
                self.tag_retention
            )));
        }
        self.defaults.validate()?;
        crate::metrics::batch::check_interval(self.metrics_interval)?;
        if let Some(breaker) = &self.breaker {
            if self.l2.is_none() {
                return Err(Error::config(
                    "a circuit breaker guards L2, and this stack has none: add one with l2(..)",
                ));
            }
            breaker.check()?;
        }
        #[cfg(feature = "redis")]
        if let Some(ttl) = self.lease_ttl {
            if self.backplane.is_none() {
                return Err(Error::config(
                    "lease_ttl needs a backplane: the fleet lease works through it",
                ));
            }
            if ttl < Duration::from_millis(30) {
                return Err(Error::config(format!(
                    "lease_ttl must be at least 30 ms, not {ttl:?}"
                )));
            }
        }
        #[cfg(feature = "redis")]
        if self.backplane.is_some() {
            if self.l1_memory.is_none() {
                return Err(Error::config(
                    "a backplane needs a MemoryCache as L1 (it drops all of L1 after a gap in the subscription)",
                ));
            }
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|e| Error::NoRuntime(Box::new(e)))?;
            let cache = self.assemble();
            runtime.spawn(fleet::apply_events(Arc::downgrade(&cache.inner)));
            return Ok(cache);
        }
        Ok(self.assemble())
    }

    /// Build without checking the settings (the caller knows they are valid).
    pub(crate) fn assemble(self) -> Layered<V> {
        let mut defaults = self.defaults;
        if defaults.time_to_live().is_none() {
            defaults = defaults.with_ttl(DEFAULT_TTL);
        }
        let has_l2 = self.l2.is_some();
        #[cfg(feature = "redis")]
        let has_backplane = self.backplane.is_some();
        #[cfg(not(feature = "redis"))]
        let has_backplane = false;
        let gauge = circuit_gauge(&self.name, "l2", has_l2);
        let metrics = self.metrics.unwrap_or_else(|| {
            Arc::new(FrontMetrics::new(&self.name, has_l2, self.metrics_interval))
        });
        Layered {
            inner: Arc::new(Inner {
                metrics,
                flights: Arc::new(Flights::new(&self.name)),
                breaker: Breaker::new(self.breaker.unwrap_or_default(), gauge),
                limit: self
                    .max_concurrent_loads
                    .map(|n| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))),
                name: Arc::from(self.name),
                l1: self.l1,
                l1_memory: self.l1_memory,
                l2: self.l2,
                l1_ttl: self.l1_ttl,
                defaults,
                admit: self.admit,
                negative: self.negative,
                fresh_for: self.fresh_for,
                pending: Mutex::new(HashMap::new()),
                flushing: AtomicBool::new(false),
                catching_up: AtomicBool::new(false),
                unsettled: Default::default(),
                #[cfg(feature = "redis")]
                recent_loads: Default::default(),
                #[cfg(feature = "redis")]
                pending_tags: Mutex::new(HashMap::new()),
                #[cfg(feature = "redis")]
                retrying_tags: AtomicBool::new(false),
                tag_retention_ms: (self.tag_retention != Duration::MAX)
                    .then(|| u64::try_from(self.tag_retention.as_millis()).unwrap_or(u64::MAX)),
                flush_not_before_ms: std::sync::atomic::AtomicU64::new(0),
                refusal_reported: AtomicBool::new(false),
                reply_reported: AtomicBool::new(false),
                layer_errors: std::sync::atomic::AtomicU64::new(0),
                changes_running: Arc::default(),
                #[cfg(feature = "redis")]
                backplane: self.backplane,
                #[cfg(feature = "redis")]
                lease_ttl: self.lease_ttl.unwrap_or(crate::fleet::DEFAULT_LEASE_TTL),
                epochs: super::epoch::Epochs::new(),
                tag_times: crate::tags::TagTimes::new(!has_backplane),
            }),
        }
    }
}
