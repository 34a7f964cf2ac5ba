//! [`Layered`]: the cache users hold — a fast local L1 (memory), optionally in front of a shared
//! L2 (Redis), with the one resilient `get_or_load` in front of both.
//!
//! * **Memory-only or memory + Redis is one builder line**: [`Layered::single`] builds a cache
//!   with L1 alone, [`Layered::builder`] (or `single(..).l2(..)`) one with L2 too. Both have the
//!   same type, the same `get_or_load`, the same options and metrics.
//! * **Read**: L1, then L2. An L2 hit is copied into L1 with the lifetime it has *left* (never a
//!   fresh full one), capped by the builder's `l1_ttl`.
//! * **Write**: L2, then L1. `delete` removes from L2 first, then L1, so a concurrent read cannot
//!   copy the old value back into L1.
//! * **Batches**: [`Cache::get_many`] answers from L1 what it can and reads the rest from L2 in
//!   one batch (Redis: one `MGET`), copying it into L1; [`Cache::set_many`] writes L2 in one
//!   batch (a pipeline), then L1, and with a backplane announces its keys 1,000 at a time (so
//!   a bulk write of any size never overflows the outbox into a fleet-wide L1 drop).
//! * **Resilience** (per call through [`LoadOptions`], with cache-wide defaults): fail-safe stale
//!   values with a throttle, soft and hard loader timeouts, early refresh (fixed fraction or
//!   XFetch), negative caching and admission, a limit on concurrent loads. See [`crate::load`].
//! * **Circuit breaker** on L2: after repeated failures L2 is skipped (L1 and the loader still
//!   serve) until a probe succeeds. [`Layered::health`] reports each layer's state. Values L2's
//!   codec refuses (too large, not encodable) are not failures: see [`Error::is_refusal`]; nor
//!   are errors the server answers with (`OOM` from a full Redis, `READONLY`): a full Redis
//!   still serves all it holds, and the writes it refused wait for the catch-up.
//!
//! L2 failures never reach the caller of `get` or `get_or_load`: a failing L2 is a miss. Loaded
//! values are written to L1 and then to L2 before the waiting callers are answered, so a read
//! made after `get_or_load` returns — here, or with `get` on another replica — finds the value
//! in Redis. The wait for L2 is bounded: at most 50 ms, and none when L2 did not answer the
//! load's own read; past that the callers are answered and the write finishes meanwhile. So a
//! hung L2 costs a caller at most one L2 timeout (its read) and 50 ms, never two timeouts.
//! Writes that could not reach L2 (open circuit, errors) are remembered (up to 10,000 keys) and
//! copied from L1 to L2 as soon as L2 answers again.
//!
//! Both layers are `Arc<dyn Cache<V>>`, so any cache composes — a `Layered` is itself a
//! [`Cache`], and three-level stacks nest.

mod announce;
mod batch;
mod builder;
mod change;
mod epoch;
#[cfg(feature = "redis")]
mod fleet;
mod flush;
mod l2;
#[cfg(feature = "redis")]
mod recent;
mod tags;
mod unsettled;

pub(crate) use self::announce::{Announced, Change};
pub use self::builder::LayeredBuilder;
pub(crate) use self::l2::Written;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::cache::{Cache, CacheGet};
use crate::clock::Now;
use crate::entry::{now_ms, Entry};
use crate::error::{BoxError, Error, Result};
use crate::load::breaker::{Breaker, CircuitState};
use crate::load::{Flights, LoadOptions};
use crate::memory::MemoryCache;
use crate::metrics::{Counted, FrontMetrics, Stats};

pub(crate) type Predicate<V> = Arc<dyn Fn(&V) -> bool + Send + Sync>;
/// The longest a loaded value may be fresh, read from the value itself (an HTTP response's
/// `Cache-Control: max-age`), `None` for no limit of its own.
pub(crate) type FreshFor<V> = Arc<dyn Fn(&V) -> Option<Duration> + Send + Sync>;

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

impl WarmReport {
    /// Count one finished load task.
    fn count(&mut self, done: std::result::Result<bool, tokio::task::JoinError>) {
        match done {
            Ok(true) => self.loaded += 1,
            _ => self.failed += 1,
        }
    }
}

/// An L1 cache, optionally in front of an L2, with a resilient, single-flight `get_or_load`.
/// Cloning is cheap.
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
///
/// // Memory only: the same type, the same get_or_load.
/// let local = Layered::single(MemoryCache::<String>::builder().build()?).name("chat").build()?;
/// # let _ = local;
/// # Ok(())
/// # }
/// ```
pub struct Layered<V> {
    pub(crate) inner: Arc<Inner<V>>,
}

pub(crate) struct Inner<V> {
    pub(crate) l1: Arc<dyn Cache<V>>,
    /// L1 again when it is a [`MemoryCache`]: looked up directly, without a dynamic call or a
    /// future, sharing the request's clock reading.
    pub(crate) l1_memory: Option<MemoryCache<V>>,
    pub(crate) l2: Option<Arc<dyn Cache<V>>>,
    pub(crate) name: Arc<str>,
    pub(crate) l1_ttl: Option<Duration>,
    /// The builder's default options, with the lifetime always set.
    pub(crate) defaults: LoadOptions,
    pub(crate) breaker: Breaker,
    pub(crate) flights: Arc<Flights<V>>,
    pub(crate) limit: Option<Arc<Semaphore>>,
    pub(crate) admit: Option<Predicate<V>>,
    pub(crate) negative: Option<(Predicate<V>, Duration)>,
    /// Caps a loaded value's fresh lifetime by what the value says of itself.
    pub(crate) fresh_for: Option<FreshFor<V>>,
    pub(crate) metrics: Arc<FrontMetrics>,
    /// Keys whose L2 write was skipped (open circuit) or failed, each with the creation time (µs)
    /// of the write waiting; written from L1 to L2 once L2 answers again. Bounded by
    /// `l2::MAX_PENDING`. The time is kept here, not read back from L1: an older change
    /// announced by another replica can arrive between this write's failure and its L1 store,
    /// and must not make this replica forget the newer write (see `l2::pending_newer_than`).
    /// The backplane's events read it while holding L1's lock for a key: never call L1 while
    /// holding this one.
    pending: Mutex<HashMap<Arc<str>, u64>>,
    flushing: AtomicBool,
    /// Whether a task retries the catch-up while keys are pending (see `l2::catch_up_later`).
    catching_up: AtomicBool,
    /// Tag (and clear) invalidations whose time could not be stored in Redis, each with its
    /// latest time (µs): tried again until Redis takes them, then applied and announced (see
    /// `tags::retry_tags_later`). The failed write may still have reached Redis (a timeout on a
    /// slow link), where the replicas that read tag times afresh would find it: every replica
    /// must learn it.
    #[cfg(feature = "redis")]
    pub(crate) pending_tags: Mutex<HashMap<String, u64>>,
    /// Whether a task retries `pending_tags`.
    #[cfg(feature = "redis")]
    pub(crate) retrying_tags: AtomicBool,
    /// How long a tagged entry may live (ms), `None` for its whole lifetime: see
    /// [`LayeredBuilder::tag_retention`].
    pub(crate) tag_retention_ms: Option<u64>,
    /// No catch-up before this time (ms since the epoch): set when L2 answered a catch-up
    /// write with an error of its own (full, read-only), so that it is not retried after every
    /// successful call.
    flush_not_before_ms: std::sync::atomic::AtomicU64,
    /// Whether a refusal of L2 has been reported (once per cache).
    refusal_reported: AtomicBool,
    /// Whether an error answered by the L2 server (`OOM`, `READONLY`) has been reported (once per
    /// cache).
    reply_reported: AtomicBool,
    /// Layer operations that failed (errors, timeouts, refusals), for `stats().errors`.
    pub(crate) layer_errors: std::sync::atomic::AtomicU64,
    /// Changes running on tasks of their own (see `change.rs`), for `flush`.
    pub(crate) changes_running: Arc<std::sync::atomic::AtomicUsize>,
    /// Cross-replica invalidation, when set.
    #[cfg(feature = "redis")]
    pub(crate) backplane: Option<crate::fleet::Backplane>,
    /// How long a fleet lease lasts unless extended.
    #[cfg(feature = "redis")]
    pub(crate) lease_ttl: Duration,
    /// Invalidation times of tags (and of `clear`).
    pub(crate) tag_times: crate::tags::TagTimes,
    /// Bumped before each invalidation from the backplane is applied to L1, and before this
    /// replica's own `delete`, `expire` or superseded `set` takes a key out of L1 (after its
    /// L2 part). A copy from L2 into L1 that raced with one is undone, so a value read just
    /// before an invalidation cannot outlive it in L1 (see `epoch`).
    epochs: epoch::Epochs,
    /// Keys whose change failed in L2 without an answer, to re-read (see `unsettled`).
    unsettled: unsettled::Unsettled,
    /// Loads written to L2 lately, for another replica's late `invalidate_prefix` (see
    /// `recent`).
    #[cfg(feature = "redis")]
    recent_loads: recent::RecentLoads,
}

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
            .field("l2", &self.inner.l2.as_ref().map(|l2| l2.name().to_owned()))
            .field("l2_circuit", &self.inner.breaker.state())
            .finish_non_exhaustive()
    }
}

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// The entry as L1 keeps it: fresh no longer than `l1_ttl` from now.
    pub(crate) fn for_l1(&self, entry: Entry<V>) -> Entry<V> {
        let entry = self.retained(entry);
        match self.l1_ttl {
            Some(ttl) => entry.cap_fresh_ms(now_ms().saturating_add(ttl.as_millis() as u64)),
            None => entry,
        }
    }

    /// `entry` within the tag retention: a tagged entry lives at most that long after it was
    /// created (so the invalidation times of its tags, kept that long, outlive it).
    #[inline]
    pub(crate) fn retained(&self, entry: Entry<V>) -> Entry<V> {
        match self.tag_retention_ms {
            Some(retention) if !entry.tag_set().is_empty() => {
                let created_ms = entry.created_us() / 1_000;
                entry.cap_life_ms(created_ms.saturating_add(retention))
            }
            _ => entry,
        }
    }

    /// `key`'s invalidation counter, read before an L2 read whose result may be copied into L1.
    #[inline]
    pub(crate) fn epoch(&self, key: &str) -> u64 {
        self.epochs.of(key)
    }

    /// A change of `key` (its L2 part done) is about to take it out of L1, or expire it there:
    /// see `epochs`.
    #[inline]
    pub(crate) fn changing_here(&self, key: &str) {
        self.epochs.bump(key);
    }

    /// [`changing_here`](Self::changing_here) for a change of any number of keys.
    #[inline]
    pub(crate) fn changing_all_here(&self) {
        self.epochs.bump_all();
    }

    /// Copy `entry` (read from L2 after [`epoch`](Self::epoch) returned `epoch`) into L1, and
    /// take it out again if an invalidation came in meanwhile. An entry of L1 created after it
    /// stays: this replica's own write that L2 did not have yet (waiting for the catch-up, or
    /// made while the read was on its way), which the older value must not replace. Nor is
    /// such a write taken out with the copy when it replaced the copy in the meantime.
    pub(crate) async fn backfill(&self, key: &str, entry: Entry<V>, epoch: u64) {
        let entry = self.for_l1(entry);
        let created = entry.created_us();
        let stored = match &self.l1_memory {
            Some(memory) => memory.insert_unless_newer(key, entry),
            None => self
                .l1_done(self.l1.set_if_newer(key, entry).await)
                .unwrap_or(false),
        };
        if stored && self.epoch(key) != epoch {
            self.take_back(key, created).await;
        }
    }

    /// Store this replica's own write of `key` in L1, its L2 part done (`epoch` read before
    /// that). Not over a newer entry: another write of this replica's, made meanwhile, that
    /// stands in L2 too. And taken out again when a change of the key came in meanwhile — a
    /// `delete` or `expire`, here or announced by another replica, that may have reached L2
    /// after this write — unless the write waits for the catch-up (L1 holds its only copy; the
    /// catch-up compares it with L2).
    pub(crate) async fn store_written(&self, key: &str, entry: Entry<V>, epoch: u64) -> Result<()> {
        let entry = self.for_l1(entry);
        let created = entry.created_us();
        if !entry.is_usable_at(now_ms()) {
            // Past its stale deadline: it takes out the older entry, as it did in L2.
            return match &self.l1_memory {
                Some(memory) => {
                    memory.remove_unless(key, |e| e.created_us() > created);
                    Ok(())
                }
                None => self.l1.set(key, entry).await,
            };
        }
        let stored = match &self.l1_memory {
            Some(memory) => memory.insert_unless_newer(key, entry),
            None => self.l1.set_if_newer(key, entry).await?,
        };
        if stored && self.epoch(key) != epoch && !self.is_pending(key) {
            self.take_back(key, created).await;
        }
        Ok(())
    }

    /// Remove `key`'s entry created at `created` from L1 (not a newer one written since).
    async fn take_back(&self, key: &str, created: u64) {
        match &self.l1_memory {
            Some(memory) => memory.remove_unless(key, |e| e.created_us() != created),
            None => {
                let after = std::time::SystemTime::UNIX_EPOCH
                    + Duration::from_micros(created.saturating_add(1));
                self.l1_done(self.l1.delete_if_older(key, after).await);
            }
        }
    }

    /// `result` of an L1 operation, its failure counted (L1 may be any `Cache`: a
    /// `LoadingCache` over Redis, for one).
    pub(crate) fn l1_done<T>(&self, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(_) => {
                self.layer_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
        }
    }

    /// [`l1_trusted_at`](Self::l1_trusted_at) by a lookup's clock: read precisely when a
    /// backplane decides (its trust window is short and guards against stalls), not at all
    /// otherwise.
    #[inline]
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn l1_trusted(&self, now: &Now) -> bool {
        #[cfg(feature = "redis")]
        if let Some(backplane) = &self.backplane {
            return backplane.trusted_at(now.ms());
        }
        true
    }

    /// Whether L1 can be trusted on its own at `now` (ms): always, unless a backplane has lost
    /// the fleet or has heard nothing for [`TRUST_WINDOW`](crate::fleet::TRUST_WINDOW).
    #[inline]
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn l1_trusted_at(&self, now: u64) -> bool {
        #[cfg(feature = "redis")]
        if let Some(backplane) = &self.backplane {
            return backplane.trusted_at(now);
        }
        true
    }

    /// L1's entry for `key` at `now`, uncounted (the front counts its answers itself).
    pub(crate) async fn read_l1(&self, key: &str, now: u64) -> Option<Entry<V>> {
        let (entry, with_clear) = match &self.l1_memory {
            // `clear` empties a memory L1 at once: only tags are checked.
            Some(memory) => (memory.peek_at(key, now)?, false),
            None => (self.l1_done(self.l1.peek(key).await).flatten()?, true),
        };
        Some(self.checked(entry, with_clear).await)
    }

    /// L1, then L2 (unless L1 is fresh); an L2 entry fresher than L1's is copied into L1. The
    /// layer that answered comes along. Not counted.
    pub(crate) async fn lookup_at(
        self: &Arc<Self>,
        key: &str,
        now: u64,
    ) -> Option<(Entry<V>, crate::load::answer::Origin)> {
        let l1 = self.read_l1(key, now).await;
        let trusted = self.l1_trusted_at(now);
        if trusted && l1.as_ref().is_some_and(|e| e.is_fresh_at(now)) {
            return l1.map(|e| (e, crate::load::answer::Origin::L1));
        }
        let epoch = self.epoch(key);
        let l2 = self.read_l2_state(key).await;
        self.merge(key, l1, l2, trusted, now, epoch).await
    }

    /// Count a plain `get`'s answer.
    fn count_get(&self, found: &Option<(Entry<V>, crate::load::answer::Origin)>, now: u64) {
        use crate::load::answer::Origin;
        self.metrics.count(match found {
            Some((e, Origin::L1)) if e.is_fresh_at(now) => Counted::L1Hit,
            Some((e, Origin::L2)) if e.is_fresh_at(now) => Counted::L2Hit,
            Some((_, Origin::L1)) => Counted::L1Stale,
            Some((_, Origin::L2)) => Counted::L2Stale,
            None => Counted::Miss,
        });
    }
}

impl<V> Layered<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// A builder for `l1` in front of `l2` (any caches; `Arc<dyn Cache<V>>` works too). The same
    /// as `Layered::single(l1).l2(l2)`.
    pub fn builder(l1: impl Cache<V> + 'static, l2: impl Cache<V> + 'static) -> LayeredBuilder<V> {
        Self::single(l1).l2(l2)
    }

    /// A builder for a cache with `l1` alone (memory-only): the same `get_or_load`, options and
    /// metrics as a two-layer stack. Add an L2 with [`LayeredBuilder::l2`].
    ///
    /// ```
    /// use layercache::{Layered, MemoryCache};
    ///
    /// # async fn demo(redis_url: Option<String>) -> layercache::Result<()> {
    /// let l1 = MemoryCache::<String>::builder().max_entries(100_000).build()?;
    /// let mut builder = Layered::single(l1).name("chat");
    /// # #[cfg(all(feature = "redis", feature = "msgpack"))]
    /// if let Some(url) = redis_url {
    ///     builder = builder.l2(layercache::RedisCache::builder().url(url).build().await?);
    /// }
    /// let cache: Layered<String> = builder.build()?;
    /// # let _ = cache;
    /// # Ok(())
    /// # }
    /// ```
    pub fn single(l1: impl Cache<V> + 'static) -> LayeredBuilder<V> {
        let l1_memory = (&l1 as &dyn std::any::Any)
            .downcast_ref::<MemoryCache<V>>()
            .cloned();
        LayeredBuilder::new(Arc::new(l1), l1_memory)
    }

    /// The state of each layer: L1, then L2 (if any) with its circuit breaker.
    pub fn health(&self) -> Vec<LayerHealth> {
        let mut health = vec![LayerHealth {
            name: self.inner.l1.name().to_owned(),
            position: "l1",
            circuit: CircuitState::Closed,
        }];
        if let Some(l2) = &self.inner.l2 {
            health.push(LayerHealth {
                name: l2.name().to_owned(),
                position: "l2",
                circuit: self.inner.breaker.state(),
            });
        }
        #[cfg(feature = "redis")]
        if let Some(backplane) = &self.inner.backplane {
            health.push(LayerHealth {
                name: backplane.channel().to_owned(),
                position: "backplane",
                circuit: if backplane.is_subscribed() {
                    CircuitState::Closed
                } else {
                    CircuitState::Open
                },
            });
        }
        health
    }

    /// The backplane this replica shares changes on, if any: its state and counters (messages,
    /// leases) are there.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn backplane(&self) -> Option<&crate::fleet::Backplane> {
        self.inner.backplane.as_ref()
    }

    /// Mark `key` expired: it stops being fresh in L1 and L2 but stays usable as a fail-safe
    /// fallback until its stale deadline; with a backplane, every replica marks its L1 copy the
    /// same way. The next `get_or_load` loads it again. It expires the entry it finds in L2: a
    /// value another replica writes meanwhile stays fresh, even if this call's write reaches
    /// Redis late (the expired copy is written only if L2 holds nothing newer). The copy counts
    /// as written at the expire (its `created_at` stays the value's own), and where L2 held
    /// nothing the key is left as [`delete`](Self::delete) leaves it (in Redis a tombstone,
    /// `redis::TOMBSTONE_TTL`): a value read before the expire — a load
    /// on another replica that has not heard of it yet — is not stored fresh after it.
    ///
    /// # Errors
    ///
    /// The L2 error when L2 could not be read or written, and [`Error::CircuitOpen`] when its
    /// circuit is open (L2 still holds the entry fresh); the entry is expired in L1 and the
    /// change announced all the same.
    pub async fn expire(&self, key: &str) -> Result<()> {
        let (this, key) = (self.clone(), key.to_owned());
        self.to_completion(async move { this.expire_now(&key).await })
            .await
    }

    /// Counters of this cache: each answer counted once (`hits`, `stale_hits`, `misses`,
    /// `coalesced`), plus loads, timeouts and fail-safe answers, and in `errors` the layer
    /// operations that failed (L2: connection errors, timeouts, values it refused to store; L1
    /// too when it is a layer that can fail) — calls the cache answered anyway, from L1 or the
    /// loader, unless the call's own write failed. Calls skipped while L2's circuit is open are
    /// not counted, nor values L2 could not decode: those are misses, counted by the layer
    /// itself (`RedisCache::stats`, `layercache_layer_errors_total{op="decode"}`).
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        self.inner.metrics.fill(&mut stats);
        self.inner.flights.fill(&mut stats);
        stats.errors = self
            .inner
            .layer_errors
            .load(std::sync::atomic::Ordering::Relaxed);
        stats
    }

    /// Loader run times (successful and failed) since the cache was built, without any
    /// recorder: count, mean, max and percentiles. [`LatencySnapshot`](crate::instrument::LatencySnapshot)
    /// values from several caches or replicas merge.
    pub fn load_latency(&self) -> crate::instrument::LatencySnapshot {
        self.inner.flights.metrics.latency.snapshot()
    }

    /// Flights (L2 reads and loads of missing keys) running right now (0 when idle).
    pub fn pending_loads(&self) -> usize {
        self.inner.flights.len()
    }

    /// Keys written to L1 but not yet to L2 (because L2 was unavailable or failed the write);
    /// they are written to L2 automatically once it answers again — tried every 250 ms while
    /// the circuit is not open, whether or not this replica calls L2 meanwhile (each only if L2
    /// holds nothing newer, and announced again to the fleet).
    pub fn pending_l2_writes(&self) -> usize {
        let pending = self
            .inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.len()
    }

    /// Load every key in `keys` that is not already fresh, at most `concurrency` at a time (a
    /// `concurrency` of 0 counts as 1, one of `usize::MAX` as all at once), with `loader(key)`. Fails only if it cannot start (no
    /// runtime); failed loads are counted.
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
        let permits = Arc::new(Semaphore::new(concurrency.clamp(1, Semaphore::MAX_PERMITS)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut report = WarmReport::default();
        for key in keys {
            let key = key.as_ref().to_owned();
            if self
                .inner
                .lookup_at(&key, now_ms())
                .await
                .is_some_and(|(e, _)| e.is_fresh())
            {
                report.skipped += 1;
                continue;
            }
            let permit = Arc::clone(&permits).acquire_owned().await;
            // Reap what finished meanwhile: a finished task is kept until it is joined, and a
            // long key list would hold one per key.
            while let Some(done) = tasks.try_join_next() {
                report.count(done);
            }
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
            report.count(done);
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

    /// The connections of both layers together.
    fn connections(&self) -> u64 {
        let l2 = self.inner.l2.as_ref().map_or(0, |l2| l2.connections());
        self.inner.l1.connections().wrapping_add(l2)
    }

    /// L1, then L2 when L1 has no fresh entry. With a [`MemoryCache`] as L1 a fresh L1 hit is
    /// answered in place (no allocation, one clock read). Counted once, by this cache.
    fn get<'a>(&'a self, key: &'a str) -> CacheGet<'a, V> {
        let inner = &self.inner;
        let clock = Now::lazy();
        if let Some(memory) = inner
            .l1_memory
            .as_ref()
            .filter(|_| inner.l1_trusted(&clock))
        {
            let l1 = memory.peek_by(key, &clock);
            if l1
                .as_ref()
                .is_some_and(|e| e.is_fresh_by(&clock) && inner.tags_allow(e))
            {
                inner.metrics.count(Counted::L1Hit);
                return CacheGet::ready(Ok(l1));
            }
            if inner.l2.is_none() && l1.as_ref().is_none_or(|e| e.tag_set().is_empty()) {
                let found = l1.map(|e| (e, crate::load::answer::Origin::L1));
                inner.count_get(&found, clock.ms());
                return CacheGet::ready(Ok(found.map(|(e, _)| e)));
            }
        }
        let now = clock.ms();
        CacheGet::new(async move {
            let found = inner.lookup_at(key, now).await;
            inner.count_get(&found, now);
            Ok(found.map(|(e, _)| e))
        })
    }

    /// A fresh L1 hit (a [`MemoryCache`] L1 that no other replica's write can have outdated
    /// unseen), counted as [`get`](Cache::get) counts it; anything else is left to `get`.
    #[inline]
    fn get_value_now(&self, key: &str) -> Option<Result<Option<V>>> {
        let inner = &self.inner;
        let now = Now::lazy();
        let memory = inner
            .l1_memory
            .as_ref()
            .filter(|_| inner.l1_trusted(&now))?;
        match memory.peek_value_at(key, &now, |tags, created_us| {
            inner.tags_valid(tags, created_us)
        }) {
            crate::memory::Lookup::Fresh(value) => {
                inner.metrics.count(Counted::L1Hit);
                Some(Ok(Some(value)))
            }
            crate::memory::Lookup::Stale | crate::memory::Lookup::Miss => None,
        }
    }

    async fn peek(&self, key: &str) -> Result<Option<Entry<V>>> {
        Ok(self.inner.lookup_at(key, now_ms()).await.map(|(e, _)| e))
    }

    /// L1 for every key, then **one** L2 batch (Redis: `MGET`) for the keys L1 has no fresh
    /// entry for; each key is answered, copied into L1 and counted as [`get`](Cache::get) would
    /// do it. An L2 failure is not returned: those keys are answered from L1 (or missed).
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry<V>>>> {
        Ok(self.inner.lookup_many(keys).await)
    }

    /// L2, then L1. An L2 failure (or an open circuit) is not returned: the value is in L1, the
    /// failure is counted by L2's metrics, and the key is written to L2 when L2 is back. A value
    /// L2 refuses to store is not an outage: a value too large for L2 is kept in L1 only (counted
    /// and reported once); a value L2 cannot encode, or that would not read back
    /// ([`Error::Encode`], [`Error::RoundTrip`]), is an error and is stored nowhere.
    ///
    /// L2 is written with [`Cache::set_if_newer`]: if it holds an entry of `key` created later
    /// than `entry` (another replica's newer write), that one stays, and this one is not kept in
    /// L1 either — the next read returns the newer value. A write that reaches Redis late (after
    /// a timeout here) therefore never replaces a newer one.
    async fn set(&self, key: &str, entry: Entry<V>) -> Result<()> {
        let (this, key) = (self.clone(), key.to_owned());
        self.to_completion(async move { this.set_now(&key, entry).await })
            .await
    }

    /// One L2 batch (Redis: pipelined `SET`s), then L1, each key announced; otherwise as
    /// [`set`](Cache::set) for each entry. When L2 refuses a value of the batch (too large, not
    /// encodable), the entries are written one by one instead, so that each value meets the fate
    /// `set` gives it.
    async fn set_many(&self, entries: Vec<(&str, Entry<V>)>) -> Result<()> {
        let this = self.clone();
        let (keys, entries): (Vec<String>, Vec<Entry<V>>) = entries
            .into_iter()
            .map(|(key, entry)| (key.to_owned(), entry))
            .unzip();
        self.to_completion(async move {
            let entries = keys.iter().map(String::as_str).zip(entries).collect();
            this.set_many_now(entries).await
        })
        .await
    }

    async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        Layered::invalidate_prefix(self, prefix).await
    }

    /// L2, then L1. Fails with [`Error::CircuitOpen`] or the L2 error when L2 could not be
    /// reached: the value may then survive in L2 (and other processes' L1s). L2 is asked with
    /// [`Cache::delete_if_older`]: an entry written after this call (by another replica) stays,
    /// even if the delete reaches Redis late; on Redis, a tombstone then keeps out for
    /// [`TOMBSTONE_TTL`](crate::redis::TOMBSTONE_TTL) the writes of values read before it.
    async fn delete(&self, key: &str) -> Result<()> {
        let (this, key) = (self.clone(), key.to_owned());
        self.to_completion(async move { this.delete_now(&key).await })
            .await
    }
}
