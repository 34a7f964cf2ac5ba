//! [`Layered`]: two caches as one — a fast local L1 (memory) in front of a shared L2 (Redis) —
//! with a resilient `get_or_load` in front of both.
//!
//! * **Read**: L1, then L2. An L2 hit is copied into L1 with the lifetime it has *left* (never a
//!   fresh full one), capped by the builder's `l1_ttl`.
//! * **Write**: L2, then L1. `delete` removes from L2 first, then L1, so a concurrent read cannot
//!   copy the old value back into L1.
//! * **Resilience** (per call through [`LoadOptions`], with cache-wide defaults): fail-safe stale
//!   values with a throttle, soft and hard loader timeouts, early refresh (fixed fraction or
//!   XFetch), negative caching and admission, a limit on concurrent loads.
//! * **Circuit breaker** on L2: after repeated failures L2 is skipped (L1 and the loader still
//!   serve) until a probe succeeds. [`Layered::health`] reports each layer's state.
//!
//! L2 failures never reach the caller of `get` or `get_or_load`: a failing L2 is a miss. Loaded
//! values are written to L1 before the waiting callers are answered and to L2 just after, so a
//! hung L2 costs a caller at most one L2 timeout (its read), never two. Writes that could not
//! reach L2 (open circuit, errors) are remembered (up to 10,000 keys) and copied from L1 to L2 as
//! soon as L2 answers again.
//!
//! Both layers are `Arc<dyn Cache<V>>`, so any cache composes — a `Layered` is itself a
//! [`Cache`], and three-level stacks nest.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::cache::{Cache, CacheGet};
use crate::entry::{now_ms, Entry};
use crate::error::{BoxError, Error, Result};
use crate::load::breaker::{Allow, Breaker, BreakerConfig, CircuitState};
use crate::load::{
    random_unit, Flights, Joined, LoadOptions, LoadSpec, LoadTarget, DEFAULT_FAIL_SAFE_THROTTLE,
    DEFAULT_TTL,
};
use crate::memory::MemoryCache;
use crate::metrics::{circuit_gauge, LayerMetrics, Stats};

type Predicate<V> = Arc<dyn Fn(&V) -> bool + Send + Sync>;

/// The state of one layer, as reported by [`Layered::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerHealth {
    /// The layer's name ([`Cache::name`]).
    pub name: String,
    /// `"l1"` or `"l2"`.
    pub position: &'static str,
    /// The circuit breaker's state (always closed for L1, which has none).
    pub circuit: CircuitState,
}

impl LayerHealth {
    /// Whether the layer is being used (its circuit is closed).
    pub fn is_up(&self) -> bool {
        self.circuit == CircuitState::Closed
    }
}

/// What [`Layered::warm`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// Keys that were loaded.
    pub loaded: usize,
    /// Keys skipped because they were already fresh in the cache.
    pub skipped: usize,
    /// Keys whose load failed.
    pub failed: usize,
}

/// An L1 + L2 cache with a resilient, single-flight `get_or_load`. Cloning is cheap.
///
/// ```
/// use std::time::Duration;
/// use layercache::{Layered, LoadOptions, MemoryCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// // Any two caches: here two memory layers (in production, memory + Redis).
/// let l1 = MemoryCache::<String>::builder().name("l1").build()?;
/// let l2 = MemoryCache::<String>::builder().name("l2").build()?;
/// let cache = Layered::builder(l1, l2)
///     .name("chat")
///     .l1_ttl(Duration::from_secs(60))
///     .default_options(LoadOptions::ttl(Duration::from_secs(3600)).with_fail_safe(Duration::from_secs(86_400)))
///     .max_concurrent_loads(8)
///     .build()?;
///
/// let answer = cache
///     .get_or_load("q:1", || async { Ok::<_, std::io::Error>("42".to_string()) }, LoadOptions::default())
///     .await?;
/// assert_eq!(answer, "42");
/// # Ok(())
/// # }
/// ```
pub struct Layered<V> {
    inner: Arc<Inner<V>>,
}

struct Inner<V> {
    l1: Arc<dyn Cache<V>>,
    /// L1 again when it is a [`MemoryCache`]: looked up directly, without a dynamic call or a
    /// future, sharing the request's clock reading.
    l1_memory: Option<MemoryCache<V>>,
    l2: Arc<dyn Cache<V>>,
    name: Arc<str>,
    l1_ttl: Option<Duration>,
    defaults: LoadOptions,
    breaker: Breaker,
    flights: Arc<Flights<V>>,
    limit: Option<Arc<Semaphore>>,
    admit: Option<Predicate<V>>,
    negative: Option<(Predicate<V>, Duration)>,
    metrics: LayerMetrics,
    /// Keys whose L2 write was skipped (open circuit) or failed; written from L1 to L2 once L2
    /// answers again. Bounded by `MAX_PENDING`.
    pending: Mutex<HashSet<Arc<str>>>,
    flushing: AtomicBool,
}

/// Most keys remembered for writing to L2 after an outage; beyond it, later keys are dropped
/// (they reach L2 on their next load).
const MAX_PENDING: usize = 10_000;
/// Keys written to L2 per batch when catching up after an outage.
const FLUSH_BATCH: usize = 100;

impl<V> Clone for Layered<V> {
    fn clone(&self) -> Self {
        Layered {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V: Send + Sync + 'static> fmt::Debug for Layered<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layered")
            .field("name", &self.inner.name)
            .field("l1", &self.inner.l1.name())
            .field("l2", &self.inner.l2.name())
            .field("l2_circuit", &self.inner.breaker.state())
            .finish_non_exhaustive()
    }
}

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// The entry as L1 keeps it: fresh no longer than `l1_ttl` from now.
    fn for_l1(&self, entry: Entry<V>) -> Entry<V> {
        match self.l1_ttl {
            Some(ttl) => entry.cap_fresh_ms(now_ms().saturating_add(ttl.as_millis() as u64)),
            None => entry,
        }
    }

    /// Run `op` against L2 if the breaker allows, reporting the outcome to it.
    async fn via_l2<T, Fut>(
        self: &Arc<Self>,
        op: impl FnOnce(Arc<dyn Cache<V>>) -> Fut,
    ) -> Option<Result<T>>
    where
        Fut: Future<Output = Result<T>>,
    {
        let allowed = self.breaker.allow();
        if allowed == Allow::No {
            return None;
        }
        let result = op(Arc::clone(&self.l2)).await;
        self.breaker.record(allowed, result.is_ok());
        if result.is_ok() {
            self.flush_pending_soon();
        }
        Some(result)
    }

    /// Write `entry` to L2, or remember the key for later if L2 is unavailable.
    async fn write_l2(self: &Arc<Self>, key: &str, entry: Entry<V>) {
        let written = self
            .via_l2(|l2| async move { l2.set(key, entry).await })
            .await;
        if !matches!(written, Some(Ok(()))) {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.len() < MAX_PENDING {
                pending.insert(Arc::from(key));
            }
        }
    }

    /// After a successful L2 call: if writes are pending, start one task to catch them up.
    fn flush_pending_soon(self: &Arc<Self>) {
        let has_pending = !self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if !has_pending || self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.flushing.store(false, Ordering::Release);
            return;
        };
        let inner = Arc::clone(self);
        runtime.spawn(async move {
            inner.flush_pending().await;
            inner.flushing.store(false, Ordering::Release);
        });
    }

    /// Copy pending keys' current L1 entries to L2, a batch at a time; stop at the first failure
    /// (the keys stay pending).
    async fn flush_pending(self: &Arc<Self>) {
        loop {
            let batch: Vec<Arc<str>> = {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let batch: Vec<Arc<str>> = pending.iter().take(FLUSH_BATCH).cloned().collect();
                for key in &batch {
                    pending.remove(key);
                }
                batch
            };
            if batch.is_empty() {
                return;
            }
            let mut entries = Vec::with_capacity(batch.len());
            for key in &batch {
                if let Ok(Some(entry)) = self.l1.peek(key).await {
                    entries.push((&**key, entry));
                }
            }
            let allowed = self.breaker.allow();
            let ok = if allowed == Allow::No {
                false
            } else {
                let result = self.l2.set_many(entries).await;
                self.breaker.record(allowed, result.is_ok());
                result.is_ok()
            };
            if !ok {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                pending.extend(batch);
                return;
            }
        }
    }

    /// L1, then L2 (unless L1 is fresh); an L2 entry fresher than L1's is copied into L1.
    async fn lookup(self: &Arc<Self>, key: &str, counted: bool) -> Option<Entry<V>> {
        self.lookup_at(key, counted, now_ms()).await
    }

    /// [`lookup`](Self::lookup) with the current time already read (`now`, ms since the epoch).
    async fn lookup_at(self: &Arc<Self>, key: &str, counted: bool, now: u64) -> Option<Entry<V>> {
        let l1 = match &self.l1_memory {
            // A memory L1 answers in place: no future, no second clock read.
            Some(memory) if counted => memory.lookup_at(key, now),
            Some(memory) => memory.peek_at(key, now),
            None if counted => self.l1.get(key).await.ok().flatten(),
            None => self.l1.peek(key).await.ok().flatten(),
        };
        if l1.as_ref().is_some_and(|e| e.is_fresh_at(now)) {
            return l1;
        }
        self.after_l1(key, counted, l1).await
    }

    /// The rest of a lookup once L1 answered `l1` (missing or not fresh): L2, and an L2 entry
    /// fresher than L1's is copied into L1.
    async fn after_l1(
        self: &Arc<Self>,
        key: &str,
        counted: bool,
        l1: Option<Entry<V>>,
    ) -> Option<Entry<V>> {
        let l2 = self
            .via_l2(|l2| async move {
                if counted {
                    l2.get(key).await
                } else {
                    l2.peek(key).await
                }
            })
            .await
            .and_then(|r| r.ok())
            .flatten()
            .filter(Entry::is_usable);
        match (l1, l2) {
            (Some(l1), Some(l2)) if l1.fresh_until_ms() >= l2.fresh_until_ms() => Some(l1),
            (_, Some(l2)) => {
                let _ = self.l1.set(key, self.for_l1(l2.clone())).await;
                Some(l2)
            }
            (l1, None) => l1,
        }
    }

    fn count_at(&self, entry: &Option<Entry<V>>, now: u64) {
        match entry {
            Some(e) if e.is_fresh_at(now) => self.metrics.hit(),
            Some(_) => self.metrics.stale(),
            None => self.metrics.miss(),
        }
    }

    /// Whether a fresh hit should start a background refresh.
    fn due_for_refresh(&self, entry: &Entry<V>, options: &LoadOptions, now: u64) -> bool {
        let fresh_until = entry.fresh_until_ms();
        if let Some(fraction) = options.early_refresh.get().filter(|f| *f > 0.0 && *f < 1.0) {
            let ttl = options.resolve_ttl(DEFAULT_TTL).as_millis() as f64;
            let refresh_at = fresh_until as f64 - (1.0 - fraction) * ttl;
            if now as f64 >= refresh_at {
                return true;
            }
        }
        if let (Some(beta), Some(delta)) = (options.xfetch_beta.get(), entry.load_duration()) {
            // XFetch: refresh when now − Δ·β·ln(u) ≥ expiry, u uniform in (0, 1].
            let delta_ms = delta.as_secs_f64() * 1000.0;
            if now as f64 - delta_ms * beta * random_unit().ln() >= fresh_until as f64 {
                return true;
            }
        }
        false
    }

    fn spec(&self, options: &LoadOptions, fresher_than_ms: u64) -> LoadSpec<V> {
        let ttl = options.resolve_ttl(DEFAULT_TTL);
        let jitter = options
            .jitter
            .get()
            .map_or(Duration::ZERO, |j| j.mul_f64(random_unit()));
        let max_stale = options.max_stale.get();
        let admit = self.admit.clone();
        let negative = self.negative.clone();
        LoadSpec {
            make_entry: Box::new(move |value: &V, took| {
                let entry = match &negative {
                    Some((is_negative, negative_ttl)) if is_negative(value) => {
                        Entry::new(value.clone(), *negative_ttl)
                    }
                    _ => {
                        if admit.as_ref().is_some_and(|admit| !admit(value)) {
                            return None;
                        }
                        let entry = Entry::new(value.clone(), ttl + jitter);
                        match max_stale {
                            Some(max_stale) => entry.with_max_stale(max_stale),
                            None => entry,
                        }
                    }
                };
                Some(entry.with_load_duration(took))
            }),
            fresher_than_ms,
            limit: self.limit.clone(),
        }
    }
}

/// Where a `Layered` flight stores: L1 before answering, L2 after.
struct Target<V>(Arc<Inner<V>>);

#[async_trait]
impl<V> LoadTarget<V> for Target<V>
where
    V: Clone + Send + Sync + 'static,
{
    async fn recheck(&self, key: &str) -> Option<Entry<V>> {
        // Only L1: every flight writes L1 before it answers, and a hung L2 must not delay this.
        self.0.l1.peek(key).await.ok().flatten()
    }
    async fn store_before_answer(&self, key: &str, entry: Entry<V>) {
        let _ = self.0.l1.set(key, self.0.for_l1(entry)).await;
    }
    async fn store_after_answer(&self, key: &str, entry: Entry<V>) {
        self.0.write_l2(key, entry).await;
    }
}

impl<V> Layered<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// A builder for `l1` in front of `l2` (any caches; `Arc<dyn Cache<V>>` works too).
    pub fn builder(l1: impl Cache<V> + 'static, l2: impl Cache<V> + 'static) -> LayeredBuilder<V> {
        let l1_memory = (&l1 as &dyn std::any::Any)
            .downcast_ref::<MemoryCache<V>>()
            .cloned();
        LayeredBuilder {
            l1: Arc::new(l1),
            l1_memory,
            l2: Arc::new(l2),
            name: "layered".into(),
            l1_ttl: None,
            defaults: LoadOptions::default(),
            breaker: BreakerConfig::default(),
            max_concurrent_loads: None,
            admit: None,
            negative: None,
        }
    }

    /// The value under `key` if it is fresh in L1 or L2; otherwise run `loader` once — however
    /// many callers ask at the same time — store its value in both layers and return it.
    ///
    /// With the options (per call, over the builder's defaults): a stale value is returned when
    /// the loader fails or times out (fail-safe), or when the soft timeout passes; a hard timeout
    /// bounds the wait; a hit past the early-refresh point starts one background refresh.
    ///
    /// # Errors
    ///
    /// [`Error::Loader`] / [`Error::LoaderPanicked`] when the load fails and no stale value can be
    /// served; [`Error::Timeout`] when the hard timeout passes first. L2 failures are never
    /// returned: a failing L2 is a miss.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
    ) -> Result<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &self.inner;
        let generation = inner.flights.generation();
        let now = now_ms();
        // The hit path stays small and allocation-free: a memory L1 is read in place, and all
        // the rest (L2, loads, fail-safe) lives in a boxed future that only misses pay for.
        let l1 = inner
            .l1_memory
            .as_ref()
            .map(|memory| memory.lookup_at(key, now));
        if let Some(Some(entry)) = l1 {
            if entry.is_fresh_at(now) {
                if !options.refreshes() && !inner.defaults.refreshes() {
                    inner.metrics.hit();
                    return Ok(entry.into_value());
                }
                let options = options.or(&inner.defaults);
                return Ok(self.fresh_hit(key, entry, loader, &options, now, generation));
            }
            let l1 = Some(Some(entry));
            return Box::pin(self.resolve(key, l1, loader, options, now, generation)).await;
        }
        Box::pin(self.resolve(key, l1, loader, options, now, generation)).await
    }

    /// Count a fresh hit and start a background refresh if it is due; the caller gets `entry`.
    fn fresh_hit<F, Fut, E>(
        &self,
        key: &str,
        entry: Entry<V>,
        loader: F,
        options: &LoadOptions,
        now: u64,
        generation: u64,
    ) -> V
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &self.inner;
        inner.metrics.hit();
        if inner.due_for_refresh(&entry, options, now) && !inner.flights.is_loading(key) {
            let spec = inner.spec(options, entry.fresh_until_ms());
            let target = Arc::new(Target(Arc::clone(inner)));
            // Started and left running; this caller does not wait for it.
            let _ = inner
                .flights
                .start_or_join(target, key, generation, loader, spec);
        }
        entry.into_value()
    }

    /// `get_or_load` past a fresh memory-L1 hit. `l1` is the memory L1's answer when it was read
    /// already (`None`: L1 is not a memory layer, read it here).
    async fn resolve<F, Fut, E>(
        &self,
        key: &str,
        l1: Option<Option<Entry<V>>>,
        loader: F,
        options: LoadOptions,
        now: u64,
        generation: u64,
    ) -> Result<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &self.inner;
        let found = match l1 {
            Some(l1) => inner.after_l1(key, true, l1).await,
            None => inner.lookup_at(key, true, now).await,
        };
        let options = options.or(&inner.defaults);
        match found {
            Some(entry) if entry.is_fresh_at(now) => {
                Ok(self.fresh_hit(key, entry, loader, &options, now, generation))
            }
            // Already inside `get_or_load`'s one boxed future: no second box.
            Some(stale) if options.max_stale.is_some() => {
                self.load_with_fallback(key, stale, loader, options, generation)
                    .await
            }
            _ => {
                inner.metrics.miss();
                self.load_and_wait(key, loader, options, generation).await
            }
        }
    }

    /// Join the load of `key`, or start it; a caller who joins is counted as coalesced.
    fn join<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: &LoadOptions,
        generation: u64,
    ) -> Result<crate::load::Waiter<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &self.inner;
        let target = Arc::new(Target(Arc::clone(inner)));
        let spec = inner.spec(options, 0);
        let (waiter, joined) = inner
            .flights
            .start_or_join(target, key, generation, loader, spec)?;
        if joined == Joined::Joined {
            inner.flights.metrics.coalesced();
        }
        Ok(waiter)
    }

    /// No usable value: wait for the load, up to the hard timeout.
    async fn load_and_wait<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
        generation: u64,
    ) -> Result<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &self.inner;
        let waiter = self.join(key, loader, &options, generation)?;
        match options.hard_timeout.get() {
            Some(limit) => match tokio::time::timeout(limit, waiter.wait()).await {
                Ok(result) => result,
                Err(_) => {
                    inner.flights.metrics.timeout();
                    Err(Error::Timeout { after: limit })
                }
            },
            None => waiter.wait().await,
        }
    }

    /// A stale value exists and fail-safe is on: load, but fall back to the stale value when the
    /// load fails, or takes longer than the soft (or hard) timeout.
    async fn load_with_fallback<F, Fut, E>(
        &self,
        key: &str,
        stale: Entry<V>,
        loader: F,
        options: LoadOptions,
        generation: u64,
    ) -> Result<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &self.inner;
        let waiter = self.join(key, loader, &options, generation)?;
        let limit = match (options.soft_timeout.get(), options.hard_timeout.get()) {
            (Some(soft), Some(hard)) => Some(soft.min(hard)),
            (soft, hard) => soft.or(hard),
        };
        let result = match limit {
            Some(limit) => tokio::time::timeout(limit, waiter.wait())
                .await
                .map_err(|_| limit),
            None => Ok(waiter.wait().await),
        };
        match result {
            Ok(Ok(value)) => {
                inner.metrics.miss();
                Ok(value)
            }
            Ok(Err(_)) => {
                // The loader failed: serve the stale value, and keep serving it for the throttle
                // period before the loader is tried again.
                inner.flights.metrics.fail_safe();
                inner.metrics.stale();
                let throttle = options
                    .fail_safe_throttle
                    .get()
                    .unwrap_or(DEFAULT_FAIL_SAFE_THROTTLE);
                let until = now_ms()
                    .saturating_add(throttle.as_millis() as u64)
                    .min(stale.stale_until_ms());
                let _ = inner
                    .l1
                    .set(key, stale.clone().refreshed_until_ms(until))
                    .await;
                Ok(stale.into_value())
            }
            Err(_) => {
                // Timed out: the load goes on in the background and will update both layers.
                inner.flights.metrics.timeout();
                if !options.soft_timeout.is_some()
                    || options.hard_timeout.get().is_some_and(|h| Some(h) == limit)
                {
                    inner.flights.metrics.fail_safe();
                }
                inner.metrics.stale();
                Ok(stale.into_value())
            }
        }
    }

    /// The state of each layer: L1, then L2 with its circuit breaker.
    pub fn health(&self) -> Vec<LayerHealth> {
        vec![
            LayerHealth {
                name: self.inner.l1.name().to_owned(),
                position: "l1",
                circuit: CircuitState::Closed,
            },
            LayerHealth {
                name: self.inner.l2.name().to_owned(),
                position: "l2",
                circuit: self.inner.breaker.state(),
            },
        ]
    }

    /// Counters of this front: `hits`, `stale_hits` and `misses` count the answers it gave (each
    /// lookup exactly once), plus loads, coalesced callers, timeouts and fail-safe answers.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        self.inner.metrics.fill(&mut stats);
        self.inner.flights.fill(&mut stats);
        stats
    }

    /// Loads running right now (0 when idle).
    pub fn pending_loads(&self) -> usize {
        self.inner.flights.len()
    }

    /// Keys written to L1 but not yet to L2 (because L2 was unavailable); they are written to L2
    /// automatically once it answers again.
    pub fn pending_l2_writes(&self) -> usize {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Load every key in `keys` that is not already fresh, at most `concurrency` at a time, with
    /// `loader(key)`. Fails only if it cannot start (no runtime); failed loads are counted.
    pub async fn warm<I, K, F, Fut, E>(
        &self,
        keys: I,
        loader: F,
        concurrency: usize,
        options: LoadOptions,
    ) -> Result<WarmReport>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        tokio::runtime::Handle::try_current().map_err(|e| Error::NoRuntime(Box::new(e)))?;
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut report = WarmReport::default();
        for key in keys {
            let key = key.as_ref().to_owned();
            if self
                .inner
                .lookup(&key, false)
                .await
                .is_some_and(|e| e.is_fresh())
            {
                report.skipped += 1;
                continue;
            }
            let permit = Arc::clone(&permits).acquire_owned().await;
            let (cache, loader, options) = (self.clone(), loader.clone(), options.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let k = key.clone();
                cache
                    .get_or_load(&key, move || loader(k), options)
                    .await
                    .is_ok()
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(true) => report.loaded += 1,
                _ => report.failed += 1,
            }
        }
        Ok(report)
    }
}

#[async_trait]
impl<V> Cache<V> for Layered<V>
where
    V: Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// L1, then L2 when L1 has no fresh entry. With a [`MemoryCache`] as L1 a
    /// fresh L1 hit is answered in place (no allocation, one clock read).
    fn get<'a>(&'a self, key: &'a str) -> CacheGet<'a, V> {
        let inner = &self.inner;
        let now = now_ms();
        let l1 = match &inner.l1_memory {
            Some(memory) => memory.lookup_at(key, now),
            None => match inner.l1.get(key).into_ready() {
                Ok(answer) => answer.ok().flatten(),
                Err(pending) => {
                    return CacheGet::new(async move {
                        let l1 = pending.await.ok().flatten();
                        let entry = if l1.as_ref().is_some_and(|e| e.is_fresh_at(now)) {
                            l1
                        } else {
                            inner.after_l1(key, true, l1).await
                        };
                        inner.count_at(&entry, now);
                        Ok(entry)
                    })
                }
            },
        };
        if l1.as_ref().is_some_and(|e| e.is_fresh_at(now)) {
            inner.metrics.hit();
            return CacheGet::ready(Ok(l1));
        }
        CacheGet::new(async move {
            let entry = inner.after_l1(key, true, l1).await;
            inner.count_at(&entry, now);
            Ok(entry)
        })
    }

    async fn peek(&self, key: &str) -> Result<Option<Entry<V>>> {
        Ok(self.inner.lookup(key, false).await)
    }

    /// L2, then L1. An L2 failure (or an open circuit) is not returned: the value is in L1, the
    /// failure is counted by L2's metrics, and the key is written to L2 when L2 is back.
    async fn set(&self, key: &str, entry: Entry<V>) -> Result<()> {
        let inner = &self.inner;
        inner.write_l2(key, entry.clone()).await;
        inner.l1.set(key, inner.for_l1(entry)).await
    }

    /// L2, then L1. Fails with [`Error::CircuitOpen`] or the L2 error when L2 could not be
    /// reached: the value may then survive in L2 (and other processes' L1s).
    async fn delete(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        let l2 = inner.via_l2(|l2| async move { l2.delete(key).await }).await;
        inner.l1.delete(key).await?;
        match l2 {
            Some(result) => result,
            None => Err(Error::CircuitOpen {
                layer: inner.l2.name().to_owned(),
            }),
        }
    }
}

/// Builds a [`Layered`] cache; see [`Layered::builder`].
#[must_use]
pub struct LayeredBuilder<V> {
    l1: Arc<dyn Cache<V>>,
    l1_memory: Option<MemoryCache<V>>,
    l2: Arc<dyn Cache<V>>,
    name: String,
    l1_ttl: Option<Duration>,
    defaults: LoadOptions,
    breaker: BreakerConfig,
    max_concurrent_loads: Option<usize>,
    admit: Option<Predicate<V>>,
    negative: Option<(Predicate<V>, Duration)>,
}

impl<V: Send + Sync + 'static> fmt::Debug for LayeredBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayeredBuilder")
            .field("name", &self.name)
            .field("l1", &self.l1.name())
            .field("l2", &self.l2.name())
            .field("l1_ttl", &self.l1_ttl)
            .field("defaults", &self.defaults)
            .field("breaker", &self.breaker)
            .field("max_concurrent_loads", &self.max_concurrent_loads)
            .finish_non_exhaustive()
    }
}

impl<V> LayeredBuilder<V>
where
    V: Clone + Send + Sync + 'static,
{
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

    /// Defaults for every `get_or_load` call (each call's options override them).
    pub fn default_options(mut self, options: LoadOptions) -> Self {
        self.defaults = options;
        self
    }

    /// The L2 circuit breaker (default: open after 5 failures in 10 s, probe after 1 s).
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Run at most this many loads at once (across all keys), to protect a rate-limited API.
    pub fn max_concurrent_loads(mut self, loads: usize) -> Self {
        self.max_concurrent_loads = Some(loads);
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

    /// Build the cache.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty name, a zero `l1_ttl`, or a concurrency limit of zero.
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
        let gauge = circuit_gauge(&self.name, "l2");
        Ok(Layered {
            inner: Arc::new(Inner {
                metrics: LayerMetrics::new(&self.name, "layered"),
                flights: Arc::new(Flights::new(&self.name)),
                breaker: Breaker::new(self.breaker, gauge),
                limit: self
                    .max_concurrent_loads
                    .map(|n| Arc::new(Semaphore::new(n))),
                name: Arc::from(self.name),
                l1: self.l1,
                l1_memory: self.l1_memory,
                l2: self.l2,
                l1_ttl: self.l1_ttl,
                defaults: self.defaults,
                admit: self.admit,
                negative: self.negative,
                pending: Mutex::new(HashSet::new()),
                flushing: AtomicBool::new(false),
            }),
        })
    }
}
