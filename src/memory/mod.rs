//! [`MemoryCache`]: the in-process layer, over moka or (feature `quick-cache`) quick_cache.
//!
//! Values are kept as they are (typed, not encoded), so a hit costs a hash lookup and a clone of
//! the value. Store values that are cheap to clone — wrap large ones in [`Arc`].
//!
//! The default engine is `moka::sync::Cache`, not `moka::future::Cache`: none of its operations wait on
//! I/O, so an async wrapper around it only added a large future to allocate and copy on every call.
//! Measured with callgrind, a hit through `Arc<dyn Cache>` took about 2,930 instructions over the
//! future cache and about 1,900 over the sync one (raw `moka::future::Cache::get`: about 1,870).
//!
//! Entries carry their own deadlines, and both engines enforce them the same way: a lookup never
//! returns an entry past its stale deadline and removes it; entries nobody reads again are
//! reclaimed by a background sweep (at most every 5 s after an insert, on tokio's blocking pool)
//! or by [`MemoryCache::run_pending_tasks`], unless capacity evicts them first. moka's own
//! per-entry expiry would cost every hit ~40 ns of timer bookkeeping.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

#[cfg(feature = "quick-cache")]
mod quick;
mod store;

pub use self::store::Engine;
pub(crate) use self::store::Lookup;
use self::store::{weight, Backend, Store, Weigher};
use crate::cache::{Cache, CacheGet};
use crate::clock::Now;
use crate::entry::{now_ms, Entry};
use crate::error::{BoxError, Error, Result};
use crate::layered::Layered;
use crate::load::{Answer, LoadOptions, DEFAULT_TTL};
use crate::metrics::{Counted, FrontMetrics, Stats};
use crate::tags::Tags;

/// Entry capacity used when the builder sets neither `max_entries` nor `max_bytes`.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// An in-memory cache layer with per-entry lifetimes, capacity by entries or by bytes, and a
/// built-in single-flight [`get_or_load`](MemoryCache::get_or_load).
///
/// Cloning is cheap and gives another handle to the same cache.
///
/// ```
/// use std::time::Duration;
/// use layercache::{LoadOptions, MemoryCache};
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Reply { text: String }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// let cache = MemoryCache::<Reply>::builder()
///     .name("chat")
///     .max_bytes(64 << 20)
///     .weigher(|reply| reply.text.len())
///     .time_to_live(Duration::from_secs(300))
///     .build()?;
///
/// let reply = cache
///     .get_or_load("prompt-1", || async {
///         // the expensive call
///         Ok::<_, std::io::Error>(Reply { text: "hi".into() })
///     }, LoadOptions::default())
///     .await?;
/// assert_eq!(reply.text, "hi");
/// assert_eq!(cache.stats().loads, 1);
/// # Ok(())
/// # }
/// ```
pub struct MemoryCache<V> {
    inner: Arc<Inner<V>>,
    /// The `get_or_load` front over this cache (the same engine as [`Layered`]'s). `None` only
    /// in the handle that front itself holds, so the two never keep each other alive.
    front: Option<Layered<V>>,
}

struct Inner<V> {
    store: Store<V>,
    name: Arc<str>,
    default_ttl: Duration,
    /// Shared with the front: each answer, of `get` or `get_or_load`, counted once.
    metrics: Arc<FrontMetrics>,
}

impl<V> Clone for MemoryCache<V> {
    fn clone(&self) -> Self {
        MemoryCache {
            inner: Arc::clone(&self.inner),
            front: self.front.clone(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> fmt::Debug for MemoryCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("name", &self.inner.name)
            .field("entries", &self.inner.store.entry_count())
            .field("weighted_size", &self.inner.store.weighted_size())
            .finish_non_exhaustive()
    }
}

impl<V> MemoryCache<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// A builder with the defaults: name `"memory"`, [`DEFAULT_MAX_ENTRIES`] entries, no cache-wide
    /// time-to-live or time-to-idle (entries live until their own deadline).
    pub fn builder() -> MemoryCacheBuilder<V> {
        MemoryCacheBuilder::default()
    }

    /// The counted lookup of `key` at `now` (ms since the epoch): stacks read the clock once per
    /// request and hand it down.
    #[inline]
    pub(crate) fn lookup_at(&self, key: &str, now: &Now) -> Option<Entry<V>> {
        let inner = &*self.inner;
        // The store returns only entries still usable at `now` (exact to the millisecond, whatever
        // the engine's own expiry did); what is left is fresh or stale.
        let found = inner.store.get(key, now);
        inner.metrics.count(match &found {
            Some(entry) if entry.is_fresh_by(now) => Counted::L1Hit,
            Some(_) => Counted::L1Stale,
            None => Counted::Miss,
        });
        found
    }

    /// [`lookup_at`](Self::lookup_at) without counting, at `now` (ms since the epoch).
    #[inline]
    pub(crate) fn peek_at(&self, key: &str, now: u64) -> Option<Entry<V>> {
        self.inner.store.get(key, &Now::at(now))
    }

    /// [`peek_at`](Self::peek_at) by a lookup's clock (read only if an entry is found).
    #[inline]
    pub(crate) fn peek_by(&self, key: &str, now: &Now) -> Option<Entry<V>> {
        self.inner.store.get(key, now)
    }

    /// [`peek_at`](Self::peek_at) for the value alone, fresh and accepted by `allow` (asked
    /// with a tagged entry's tags and creation time): no entry is copied out.
    #[inline]
    pub(crate) fn peek_value_at(
        &self,
        key: &str,
        now: &Now,
        allow: impl FnOnce(&Tags, u64) -> bool,
    ) -> Lookup<V> {
        self.inner.store.get_value(key, now, allow)
    }

    /// The front that runs `get_or_load` (a temporary one for the front's own handle, which
    /// never calls it).
    fn front(&self) -> std::borrow::Cow<'_, Layered<V>> {
        match &self.front {
            Some(front) => std::borrow::Cow::Borrowed(front),
            None => std::borrow::Cow::Owned(self.make_front()),
        }
    }

    fn make_front(&self) -> Layered<V> {
        let bare = MemoryCache {
            inner: Arc::clone(&self.inner),
            front: None,
        };
        Layered::single(bare)
            .name(&*self.inner.name)
            .default_options(LoadOptions::ttl(self.inner.default_ttl))
            .shared_metrics(Arc::clone(&self.inner.metrics))
            // No tag times leave this process: nothing to bound entries' lifetimes for.
            .tag_retention(Duration::MAX)
            .assemble()
    }

    /// The value under `key` if it is fresh; otherwise run `loader` once — however many callers
    /// ask at the same time — store its value and return it to all of them.
    ///
    /// The same engine as [`Layered::get_or_load`], so every [`LoadOptions`] setting applies:
    /// fail-safe, soft and hard timeouts, early refresh, jitter.
    ///
    /// * The loader runs detached: if the caller that started it is dropped, the others still get
    ///   the value, and it is cached.
    /// * A loader error reaches every waiting caller as [`Error::Loader`]; a panic as
    ///   [`Error::LoaderPanicked`]. Nothing is cached and the next call loads again.
    /// * The value lives for `options`' ttl, else the builder's `time_to_live`, else
    ///   [`DEFAULT_TTL`].
    ///
    /// See the [`load`](crate::load#loads-are-detached) module docs for passing borrowed request data to the loader.
    ///
    /// # Errors
    ///
    /// As [`Layered::get_or_load`].
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
        self.front().get_or_load(key, loader, options).await
    }

    /// [`get_or_load`](Self::get_or_load) with the answer's [`Source`](crate::Source) and
    /// lifetimes.
    ///
    /// # Errors
    ///
    /// As [`Layered::get_or_load`].
    pub async fn get_or_load_answer<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
    ) -> Result<Answer<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.front().get_or_load_answer(key, loader, options).await
    }

    /// The value under `key` if it is there and **fresh**, answered at once: no `.await`, no
    /// [`Result`] — a memory lookup never waits and cannot fail.
    ///
    /// The same answer as [`CacheExt::get_value`](crate::CacheExt::get_value), for synchronous
    /// code and for the hottest reads: a stale entry (kept only as a fail-safe fallback) and an
    /// entry whose tag was invalidated count as absent, and the lookup is counted in
    /// [`stats`](Self::stats) as a `get` is (hit, stale or miss).
    ///
    /// It is also the cheapest read: it hands back the value alone, where
    /// [`Cache::get`] builds an [`Entry`] with its lifetimes inside a future. On the quick_cache
    /// engine a hit costs 1.3–1.6× a raw `quick_cache::sync::Cache::get` on the AMD benchmark VM
    /// (BENCHMARKS.md: `ratios` `l1_engine_quick_cache_sync`), against 2.1–2.5× through
    /// [`Cache::get`]; on an Intel VM, where the clock reading that judges the entry's lifetime
    /// costs more, ~2.6×.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::{CacheExt, MemoryCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// let cache = MemoryCache::<String>::builder().build()?;
    /// cache.set_value("greeting", "hello".to_string(), Duration::from_secs(60)).await?;
    ///
    /// assert_eq!(cache.get_value_sync("greeting").as_deref(), Some("hello"));
    /// assert_eq!(cache.get_value_sync("absent"), None);
    /// assert_eq!(cache.stats().hits, 1);
    /// assert_eq!(cache.stats().misses, 1);
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn get_value_sync(&self, key: &str) -> Option<V> {
        // A tagged entry is checked against the tag times first (see `invalidate_tag`).
        let allow = |tags: &Tags, created_us: u64| {
            self.front
                .as_ref()
                .is_none_or(|front| front.inner.tags_valid(tags, created_us))
        };
        match self.peek_value_at(key, &Now::lazy(), allow) {
            Lookup::Fresh(value) => {
                self.inner.metrics.count(Counted::L1Hit);
                Some(value)
            }
            Lookup::Stale => self.count_and_drop(Counted::L1Stale),
            Lookup::Miss => self.count_and_drop(Counted::Miss),
        }
    }

    #[cold]
    fn count_and_drop(&self, counted: Counted) -> Option<V> {
        self.inner.metrics.count(counted);
        None
    }

    /// Counters since the cache was built: every answer of `get` and `get_or_load` once, loads,
    /// joined callers, timeouts and fail-safe answers.
    pub fn stats(&self) -> Stats {
        match &self.front {
            Some(front) => front.stats(),
            None => {
                let mut stats = Stats::default();
                self.inner.metrics.fill(&mut stats);
                stats
            }
        }
    }

    /// Loader run times since the cache was built (see [`Layered::load_latency`]).
    pub fn load_latency(&self) -> crate::instrument::LatencySnapshot {
        self.front().load_latency()
    }

    /// Loads running right now (0 when idle).
    pub fn pending_loads(&self) -> usize {
        self.front.as_ref().map_or(0, Layered::pending_loads)
    }

    /// Number of entries (approximate until [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn entry_count(&self) -> u64 {
        self.inner.store.entry_count()
    }

    /// Total weight held: bytes for a byte-bounded cache, entries otherwise (approximate until
    /// [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn weighted_size(&self) -> u64 {
        self.inner.store.weighted_size()
    }

    /// Remove every expired entry and apply pending evictions now. Both also happen on their own:
    /// an expired entry is removed when it is read, and after an insert a sweep runs in the
    /// background at most every 5 s.
    pub async fn run_pending_tasks(&self) {
        self.inner.store.run_pending_tasks();
    }

    /// Expire every entry tagged `tag` (see [`Layered::invalidate_tag`]): O(1), checked lazily
    /// when an entry is read.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty or over-long tag.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        self.front().invalidate_tag(tag).await
    }

    /// Remove every entry whose key starts with `prefix` (walking every entry); how many.
    pub fn remove_prefix(&self, prefix: &str) -> u64 {
        self.supersede_prefix(prefix);
        self.inner.store.remove_prefix(prefix)
    }

    /// Remove `key`'s entry unless `keep` accepts it, in one step with the engine's lock for the
    /// key (see `Store::remove_unless`).
    pub(crate) fn remove_unless(&self, key: &str, keep: impl FnOnce(&Entry<V>) -> bool) {
        self.supersede(key);
        self.inner.store.remove_unless(key, keep);
    }

    /// Store `entry` unless `key` holds a usable entry created after it, in one step; whether
    /// it was stored. An unusable `entry` is not stored (and what the key holds stays).
    pub(crate) fn insert_unless_newer(&self, key: &str, entry: Entry<V>) -> bool {
        if !entry.is_usable_at(now_ms()) {
            return false;
        }
        let stored = self.inner.store.insert_unless_newer(key, entry);
        if stored {
            self.supersede(key);
        }
        stored
    }

    /// End `key`'s entry's freshness at `now` (ms) unless `keep` accepts it, in one step.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn expire_unless(&self, key: &str, now: u64, keep: impl FnOnce(&Entry<V>) -> bool) {
        self.inner.store.expire_unless(key, now, keep);
    }

    /// Remove every entry except those `keep` accepts (each judged in one step with its removal).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn retain(&self, keep: impl Fn(&str, &Entry<V>) -> bool) {
        self.supersede_prefix("");
        self.inner.store.retain(keep);
    }

    /// Remove every entry.
    pub fn invalidate_all(&self) {
        self.supersede_prefix("");
        self.inner.store.clear();
    }

    /// A change of `key` wins over a `get_or_load` of it that is running: see
    /// `Flights::supersede`.
    fn supersede(&self, key: &str) {
        if let Some(front) = &self.front {
            front.inner.flights.supersede(key);
        }
    }

    fn supersede_prefix(&self, prefix: &str) {
        if let Some(front) = &self.front {
            front.inner.flights.supersede_prefix(prefix);
        }
    }
}

#[async_trait]
impl<V> Cache<V> for MemoryCache<V>
where
    V: Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.inner.name
    }

    #[inline]
    fn get<'a>(&'a self, key: &'a str) -> CacheGet<'a, V> {
        let now = Now::lazy();
        match &self.front {
            // A tagged entry is checked against the tag times first (see `invalidate_tag`).
            Some(front) => {
                let found = self.peek_by(key, &now).map(|e| {
                    if e.tag_set().is_empty() {
                        e
                    } else {
                        front.inner.checked_now(e)
                    }
                });
                self.inner.metrics.count(match &found {
                    Some(entry) if entry.is_fresh_by(&now) => Counted::L1Hit,
                    Some(_) => Counted::L1Stale,
                    None => Counted::Miss,
                });
                CacheGet::ready(Ok(found))
            }
            None => CacheGet::ready(Ok(self.lookup_at(key, &now))),
        }
    }

    /// Always answers: [`get_value_sync`](MemoryCache::get_value_sync).
    #[inline]
    fn get_value_now(&self, key: &str) -> Option<Result<Option<V>>> {
        Some(Ok(self.get_value_sync(key)))
    }

    async fn peek(&self, key: &str) -> Result<Option<Entry<V>>> {
        Ok(self.peek_at(key, now_ms()))
    }

    async fn set(&self, key: &str, entry: Entry<V>) -> Result<()> {
        self.supersede(key);
        if entry.is_usable_at(now_ms()) {
            self.inner.store.insert(Arc::from(key), entry);
        } else {
            self.inner.store.remove(key);
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.supersede(key);
        self.inner.store.remove(key);
        Ok(())
    }

    /// Walks every entry (an L1 holds few enough).
    async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        Ok(self.remove_prefix(prefix))
    }
}

/// Builds a [`MemoryCache`]. Every setting is optional; see each method for its default.
#[must_use]
pub struct MemoryCacheBuilder<V> {
    name: Option<String>,
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    weigher: Option<Weigher<V>>,
    time_to_live: Option<Duration>,
    time_to_idle: Option<Duration>,
    engine: Engine,
    metrics_interval: Option<Duration>,
}

impl<V> Default for MemoryCacheBuilder<V> {
    fn default() -> Self {
        MemoryCacheBuilder {
            name: None,
            max_entries: None,
            max_bytes: None,
            weigher: None,
            time_to_live: None,
            time_to_idle: None,
            engine: Engine::default(),
            metrics_interval: None,
        }
    }
}

impl<V> fmt::Debug for MemoryCacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCacheBuilder")
            .field("name", &self.name)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("weigher", &self.weigher.as_ref().map(|_| "fn"))
            .field("time_to_live", &self.time_to_live)
            .field("time_to_idle", &self.time_to_idle)
            .field("engine", &self.engine)
            .field("metrics_interval", &self.metrics_interval)
            .finish()
    }
}

/// The longest lifetime handed to moka: its limit is 1,000 years, and it panics above it.
const MOKA_MAX_LIFETIME: Duration = Duration::from_secs(900 * 365 * 24 * 3600);

impl<V> MemoryCacheBuilder<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// The cache's name in metric labels (`cache="…"`). Default `"memory"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Bound the cache by number of entries. Default [`DEFAULT_MAX_ENTRIES`] when neither this nor
    /// [`max_bytes`](Self::max_bytes) is set.
    ///
    /// The bound holds at every moment to within an eighth of it (and one entry): the moka engine
    /// evicts in batches, and the cache runs a batch early whenever the writes since the last one
    /// would take it further over. [`entry_count`](MemoryCache::entry_count) is exact after
    /// [`run_pending_tasks`](MemoryCache::run_pending_tasks).
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = Some(entries);
        self
    }

    /// Bound the cache by bytes. Needs a [`weigher`](Self::weigher) that reports the bytes a value
    /// owns; each entry is charged that plus its key length and a fixed overhead.
    ///
    /// A value heavier than the budget is not kept, not even until the next eviction (setting it
    /// removes what the key held). On the quick_cache engine the limit is 12 % of the budget,
    /// which that engine splits over up to 8 shards (see [`Engine`]). As with
    /// [`max_entries`](Self::max_entries), the budget holds at every moment to within an eighth
    /// of it (and one value).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// How many bytes a value owns (heap data included: a `String`'s length, a `Vec`'s contents).
    /// Used with [`max_bytes`](Self::max_bytes). Weights above `u32::MAX` are clamped.
    pub fn weigher(mut self, weigher: impl Fn(&V) -> usize + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// Cache-wide upper bound on an entry's life, and the lifetime of values loaded by
    /// `get_or_load` without one of their own. Default: none — entries live until their own
    /// deadlines, and loaded values get [`DEFAULT_TTL`].
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// The storage engine (default [`Engine::Moka`]). [`Engine::QuickCache`] (feature
    /// `quick-cache`) makes hits several times cheaper and scales with cores; see
    /// [`Engine`] for the trade-offs.
    pub fn engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    /// Evict entries not read for this long. Default: none. On the quick_cache engine a read
    /// pushes the idle time back at most once per eighth of it (so a hot key is not written on
    /// every hit): an entry read only now and then may go up to an eighth early.
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.time_to_idle = Some(tti);
        self
    }

    /// Hand answer counts to the metrics recorder once per `interval` instead of on every
    /// answer (default: on every answer). See [`crate::metrics`] ("Counting on many cores") for
    /// when to set it and what it changes; [`stats`](MemoryCache::stats) stays exact either way.
    /// `Duration::ZERO` keeps the default. It applies to this cache's own answers: a
    /// [`Layered`] stack with this cache as L1 counts its answers itself, so set it on
    /// [`LayeredBuilder::metrics_interval`](crate::LayeredBuilder::metrics_interval) there.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::MemoryCache;
    ///
    /// let cache: MemoryCache<String> = MemoryCache::builder()
    ///     .metrics_interval(Duration::from_millis(100))
    ///     .build()?;
    /// # Ok::<(), layercache::Error>(())
    /// ```
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = Some(interval);
        self
    }

    /// Build the cache.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the name is empty, when both `max_entries` and `max_bytes` are
    /// set, when a capacity or duration is zero, when `max_bytes` has no weigher, when a
    /// weigher is given without `max_bytes`, or when the metrics interval is over a minute. Any
    /// lifetime up to `Duration::MAX` ("forever") is accepted.
    pub fn build(self) -> Result<MemoryCache<V>> {
        let name: Arc<str> = Arc::from(self.name.as_deref().unwrap_or("memory"));
        if name.is_empty() {
            return Err(Error::config("the cache name must not be empty"));
        }
        crate::metrics::batch::check_interval(self.metrics_interval)?;
        // (capacity in weight units, byte weigher if bounded by bytes)
        let (capacity, weigher): (u64, Option<Weigher<V>>) =
            match (self.max_entries, self.max_bytes, self.weigher) {
                (Some(_), Some(_), _) => {
                    return Err(Error::config(
                        "set either max_entries or max_bytes, not both",
                    ))
                }
                (_, Some(0), _) | (Some(0), None, _) => {
                    return Err(Error::config(
                        "the cache capacity must be greater than zero",
                    ))
                }
                (_, Some(_), None) => {
                    return Err(Error::config(
                        "max_bytes needs a weigher: call .weigher(|value| bytes_owned_by(value))",
                    ))
                }
                (_, None, Some(_)) => {
                    return Err(Error::config(
                        "a weigher only applies to a byte-bounded cache: also call .max_bytes(..)",
                    ))
                }
                (_, Some(bytes), Some(weigher)) => (bytes, Some(weigher)),
                (entries, None, None) => (entries.unwrap_or(DEFAULT_MAX_ENTRIES), None),
            };
        if self.time_to_live.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("time_to_live must be greater than zero"));
        }
        if self.time_to_idle.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("time_to_idle must be greater than zero"));
        }
        let store = match self.engine {
            Engine::Moka => {
                let mut builder = moka::sync::Cache::builder()
                    .name(&name)
                    .max_capacity(capacity);
                let bound = store::Bound::new(capacity, weigher.clone());
                if let Some(weigher) = weigher {
                    builder = builder.weigher(move |key: &Arc<str>, entry: &Entry<V>| {
                        u32::try_from(weight(Some(&weigher), key, entry.value()))
                            .unwrap_or(u32::MAX)
                    });
                }
                // moka refuses (panics on) lifetimes over 1,000 years; longer ones mean "never"
                // just as well.
                if let Some(ttl) = self.time_to_live {
                    builder = builder.time_to_live(ttl.min(MOKA_MAX_LIFETIME));
                }
                if let Some(tti) = self.time_to_idle {
                    builder = builder.time_to_idle(tti.min(MOKA_MAX_LIFETIME));
                }
                Store::new(Backend::Moka(builder.build()), Some(bound))
            }
            #[cfg(feature = "quick-cache")]
            Engine::QuickCache => {
                // quick_cache sizes its tables from an item estimate; for a byte budget, assume
                // entries of about 1 KiB.
                let items = if weigher.is_some() {
                    capacity / 1024
                } else {
                    capacity
                };
                let items = usize::try_from(items.clamp(16, 1 << 24)).unwrap_or(1 << 24);
                // quick_cache splits the budget evenly over its shards (by default 4 per core),
                // and a value heavier than one shard's part is never kept. A byte budget is
                // therefore split at most `QUICK_BYTE_SHARDS` ways: any value up to 12 % of it is
                // kept, on any number of cores.
                let shards = std::thread::available_parallelism().map_or(4, |n| n.get() * 4);
                let shards = if weigher.is_some() {
                    shards.min(quick::QUICK_BYTE_SHARDS)
                } else {
                    shards
                };
                let options = quick_cache::OptionsBuilder::new()
                    .estimated_items_capacity(items)
                    .weight_capacity(capacity)
                    .shards(shards)
                    .build()
                    .map_err(|e| Error::config(format!("quick_cache options: {e}")))?;
                Store::new(
                    Backend::Quick(Arc::new(quick::QuickStore {
                        weigher: weigher.clone(),
                        cache: quick_cache::sync::Cache::with_options(
                            options,
                            quick::QuickWeighter(weigher),
                            Default::default(),
                            Default::default(),
                        ),
                        warned_too_large: std::sync::atomic::AtomicBool::new(false),
                        time_to_live: self.time_to_live,
                        time_to_idle_ms: self
                            .time_to_idle
                            .map(|tti| u64::try_from(tti.as_millis()).unwrap_or(u64::MAX).max(1)),
                    })),
                    // quick_cache applies its capacity on every insert itself.
                    None,
                )
            }
        };
        let bare = MemoryCache {
            inner: Arc::new(Inner {
                store,
                metrics: Arc::new(FrontMetrics::new(&name, false, self.metrics_interval)),
                default_ttl: self.time_to_live.unwrap_or(DEFAULT_TTL),
                name,
            }),
            front: None,
        };
        let front = bare.make_front();
        Ok(MemoryCache {
            inner: bare.inner,
            front: Some(front),
        })
    }
}
