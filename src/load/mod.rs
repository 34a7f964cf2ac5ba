//! Cache-aside loading: `get_or_load` with single-flight, on any [`Cache`].
//!
//! [`MemoryCache`](crate::MemoryCache) has `get_or_load` built in. [`LoadingCache`] adds it to any
//! other [`Cache`] (a custom layer, an `Arc<dyn Cache<V>>`).
//!
//! # Loads are detached
//!
//! A loader (an LLM call that costs money) runs on its own tokio task, not inside the caller's
//! future. If the caller that started it is cancelled (a client hung up, a `select!` lost a race),
//! the load still finishes, is paid for once, is cached, and every other waiting caller gets it.
//! That is why the loader's future must be `Send + 'static`: it cannot borrow from the caller.
//!
//! Move owned data into the loader — clone the `Arc` around your client and move (or clone) the
//! request:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use layercache::{KeyBuilder, LoadOptions, MemoryCache};
//!
//! # #[derive(Debug)] struct LlmError;
//! # impl std::fmt::Display for LlmError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("llm") } }
//! # impl std::error::Error for LlmError {}
//! struct LlmClient;
//! impl LlmClient {
//!     async fn complete(&self, prompt: &str) -> Result<String, LlmError> {
//!         Ok(format!("answer to {prompt}"))
//!     }
//! }
//!
//! async fn answer(
//!     cache: &MemoryCache<String>,
//!     client: &Arc<LlmClient>,
//!     prompt: &str,
//! ) -> layercache::Result<String> {
//!     let key = KeyBuilder::new("chat").version(1).part(prompt).build();
//!     let client = Arc::clone(client);        // shared client: clone the Arc
//!     let prompt = prompt.to_owned();         // borrowed request: make it owned
//!     cache
//!         .get_or_load(&key, move || async move { client.complete(&prompt).await },
//!                      LoadOptions::ttl(Duration::from_secs(3600)))
//!         .await
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> layercache::Result<()> {
//! # let cache = MemoryCache::builder().build()?;
//! # let client = Arc::new(LlmClient);
//! # assert_eq!(answer(&cache, &client, "hi").await?, "answer to hi");
//! # Ok(())
//! # }
//! ```

pub mod breaker;
mod flight;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub(crate) use self::flight::{CacheTarget, Flights, Joined, LoadSpec, LoadTarget, Waiter};
use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::{BoxError, Result};
use crate::metrics::Stats;

/// Lifetime given to loaded values when neither the call nor the cache sets one: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Per-call settings for `get_or_load`. Anything left unset falls back to the cache's defaults
/// (set with the builder's `default_options`), and then to the built-in default.
///
/// [`MemoryCache`](crate::MemoryCache) and [`LoadingCache`] use only the lifetime; the resilience
/// settings (fail-safe, timeouts, early refresh) apply to [`Layered`](crate::Layered).
///
/// ```
/// use std::time::Duration;
/// use layercache::LoadOptions;
///
/// let opts = LoadOptions::ttl(Duration::from_secs(600))
///     .with_jitter(Duration::from_secs(30))            // spread expiries by up to 30 s
///     .with_fail_safe(Duration::from_secs(3600))       // serve stale up to 1 h if the loader fails
///     .with_fail_safe_throttle(Duration::from_secs(30))
///     .with_soft_timeout(Duration::from_millis(200))   // with a stale value, answer after 200 ms
///     .with_hard_timeout(Duration::from_secs(10))      // never wait longer than 10 s
///     .with_early_refresh(0.8);                        // refresh in the background at 80 % of ttl
/// assert_eq!(opts.time_to_live(), Some(Duration::from_secs(600)));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct LoadOptions {
    // Compact optionals (8 bytes each, not 16): every `get_or_load` future carries these options,
    // and at 128 bytes they were half of a hit's future.
    pub(crate) ttl: OptDuration,
    pub(crate) jitter: OptDuration,
    pub(crate) max_stale: OptDuration,
    pub(crate) fail_safe_throttle: OptDuration,
    pub(crate) soft_timeout: OptDuration,
    pub(crate) hard_timeout: OptDuration,
    pub(crate) early_refresh: OptF64,
    pub(crate) xfetch_beta: OptF64,
}

/// An optional [`Duration`] in 8 bytes: whole nanoseconds, `u64::MAX` for none. Durations of
/// 584 years or more are stored as just under that, which is the same for every use here.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptDuration(u64);

impl OptDuration {
    const NONE: OptDuration = OptDuration(u64::MAX);

    pub(crate) fn some(d: Duration) -> Self {
        OptDuration(u64::try_from(d.as_nanos()).map_or(u64::MAX - 1, |n| n.min(u64::MAX - 1)))
    }

    #[inline]
    pub(crate) fn get(self) -> Option<Duration> {
        (self != Self::NONE).then(|| Duration::from_nanos(self.0))
    }

    #[inline]
    pub(crate) fn is_some(self) -> bool {
        self != Self::NONE
    }

    fn or(self, other: Self) -> Self {
        if self.is_some() {
            self
        } else {
            other
        }
    }
}

impl Default for OptDuration {
    fn default() -> Self {
        Self::NONE
    }
}

impl fmt::Debug for OptDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

/// An optional `f64` in 8 bytes: NaN for none (a NaN setting is off, like none).
#[derive(Clone, Copy)]
pub(crate) struct OptF64(f64);

impl OptF64 {
    fn some(x: f64) -> Self {
        OptF64(x)
    }

    #[inline]
    pub(crate) fn get(self) -> Option<f64> {
        (!self.0.is_nan()).then_some(self.0)
    }

    #[inline]
    pub(crate) fn is_some(self) -> bool {
        !self.0.is_nan()
    }

    fn or(self, other: Self) -> Self {
        if self.is_some() {
            self
        } else {
            other
        }
    }
}

impl Default for OptF64 {
    fn default() -> Self {
        OptF64(f64::NAN)
    }
}

impl PartialEq for OptF64 {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for OptF64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

/// How long a fail-safe value is served before the loader is tried again, unless set: 30 s.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(30);

impl LoadOptions {
    /// Options that use the cache's defaults for everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Options whose loaded value stays fresh for `ttl`.
    pub fn ttl(ttl: Duration) -> Self {
        LoadOptions {
            ttl: OptDuration::some(ttl),
            ..Self::default()
        }
    }

    /// Set how long a loaded value stays fresh.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = OptDuration::some(ttl);
        self
    }

    /// Add a random extra lifetime between zero and `jitter` to each loaded value, so that keys
    /// written together do not all expire together.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = OptDuration::some(jitter);
        self
    }

    /// Turn on fail-safe: keep values usable for `max_stale` after they stop being fresh, and when
    /// the loader fails or times out, return the stale value instead of the error (counted as
    /// `outcome="fail_safe"`).
    pub fn with_fail_safe(mut self, max_stale: Duration) -> Self {
        self.max_stale = OptDuration::some(max_stale);
        self
    }

    /// After a fail-safe answer, serve the stale value for this long before calling the loader
    /// again (default [`DEFAULT_FAIL_SAFE_THROTTLE`]), so a failing provider is not hammered.
    pub fn with_fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = OptDuration::some(throttle);
        self
    }

    /// When a stale value exists (fail-safe on), return it if the load takes longer than this;
    /// the load goes on in the background and updates the cache.
    pub fn with_soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = OptDuration::some(timeout);
        self
    }

    /// Never wait longer than this for a load: return the stale value if there is one (fail-safe
    /// on), else [`Error::Timeout`](crate::Error::Timeout). The load goes on and may still be
    /// cached.
    pub fn with_hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = OptDuration::some(timeout);
        self
    }

    /// Refresh in the background once a hit finds the value past this fraction of its lifetime
    /// (for example 0.8), returning the current value at once. Values outside (0, 1) turn it off.
    pub fn with_early_refresh(mut self, fraction: f64) -> Self {
        self.early_refresh = OptF64::some(fraction);
        self
    }

    /// Probabilistic early refresh (XFetch): a hit refreshes early with probability
    /// `exp(-(expiry - now) / (beta × Δ))`, where Δ is how long the value took to load. `beta`
    /// 1.0 is the usual choice; larger refreshes earlier.
    pub fn with_xfetch(mut self, beta: f64) -> Self {
        self.xfetch_beta = OptF64::some(beta);
        self
    }

    /// The lifetime set on these options, if any.
    pub fn time_to_live(&self) -> Option<Duration> {
        self.ttl.get()
    }

    pub(crate) fn resolve_ttl(&self, default: Duration) -> Duration {
        self.ttl.get().unwrap_or(default)
    }

    /// Whether these options ask for early refresh (by fraction or XFetch).
    #[inline]
    pub(crate) fn refreshes(&self) -> bool {
        self.early_refresh.is_some() || self.xfetch_beta.is_some()
    }

    /// These options, with unset fields taken from `defaults`.
    pub(crate) fn or(&self, defaults: &LoadOptions) -> LoadOptions {
        LoadOptions {
            ttl: self.ttl.or(defaults.ttl),
            jitter: self.jitter.or(defaults.jitter),
            max_stale: self.max_stale.or(defaults.max_stale),
            fail_safe_throttle: self.fail_safe_throttle.or(defaults.fail_safe_throttle),
            soft_timeout: self.soft_timeout.or(defaults.soft_timeout),
            hard_timeout: self.hard_timeout.or(defaults.hard_timeout),
            early_refresh: self.early_refresh.or(defaults.early_refresh),
            xfetch_beta: self.xfetch_beta.or(defaults.xfetch_beta),
        }
    }
}

/// A uniformly distributed number in (0, 1], from the standard library's randomly seeded hasher
/// (good enough for jitter and early-refresh coin flips; not for anything secret).
pub(crate) fn random_unit() -> f64 {
    use std::hash::BuildHasher;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STATE: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new();
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = STATE.with(|s| s.hash_one(n)) >> 11;
    (bits as f64 + 1.0) / (1u64 << 53) as f64
}

/// The shared miss path of `get_or_load` for single-layer caches: join or start the load and
/// wait for it.
///
/// Boxed on purpose: the load's state machine is large, and keeping it out of the caller's future
/// keeps the hit path (which never reaches here) small and cheap to move. `generation` is
/// [`Flights::generation`] read before the lookup that missed.
pub(crate) fn load_missing<'a, V, S, F, Fut, E>(
    flights: &'a Arc<Flights<V>>,
    store: S,
    generation: u64,
    key: &'a str,
    loader: F,
    ttl: Duration,
) -> std::pin::Pin<Box<dyn Future<Output = Result<V>> + Send + 'a>>
where
    V: Clone + Send + Sync + 'static,
    S: Cache<V> + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    Box::pin(async move {
        let spec = LoadSpec {
            make_entry: Box::new(move |value: &V, took| {
                Some(Entry::new(value.clone(), ttl).with_load_duration(took))
            }),
            fresher_than_ms: 0,
            limit: None,
        };
        let (waiter, joined) =
            flights.start_or_join(Arc::new(CacheTarget(store)), key, generation, loader, spec)?;
        if joined == Joined::Joined {
            flights.metrics.coalesced();
        }
        waiter.wait().await
    })
}

/// Adds `get_or_load` (single-flight, detached loads, metrics) to any [`Cache`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use layercache::{Cache, LoadOptions, LoadingCache, MemoryCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// let layer: Arc<dyn Cache<u64>> = Arc::new(MemoryCache::builder().build()?);
/// let cache = LoadingCache::new(layer);
/// let v = cache
///     .get_or_load("answer", || async { Ok::<_, std::io::Error>(42) }, LoadOptions::default())
///     .await?;
/// assert_eq!(v, 42);
/// assert_eq!(cache.stats().loads, 1);
/// # Ok(())
/// # }
/// ```
pub struct LoadingCache<C, V> {
    inner: Arc<C>,
    flights: Arc<Flights<V>>,
    default_ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<C, V> fmt::Debug for LoadingCache<C, V>
where
    C: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadingCache")
            .field("inner", &self.inner)
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

impl<C, V> LoadingCache<C, V>
where
    C: Cache<V> + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Wrap `cache`. Metrics are labelled with `cache.name()`; values loaded without an explicit
    /// lifetime live for [`DEFAULT_TTL`].
    pub fn new(cache: C) -> Self {
        let flights = Arc::new(Flights::new(cache.name()));
        LoadingCache {
            inner: Arc::new(cache),
            flights,
            default_ttl: DEFAULT_TTL,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Lifetime of loaded values when the call does not set one.
    #[must_use]
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// The wrapped cache.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The value under `key` if it is fresh; otherwise run `loader` once — however many callers
    /// ask at the same time — store its value and return it to all of them.
    ///
    /// See the [module docs](crate::load) for how the loader may capture data.
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
        let generation = self.flights.generation();
        // A failing layer is treated as a miss: the loader can still answer.
        if let Ok(Some(entry)) = self.inner.get(key).await {
            if entry.is_fresh() {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(entry.into_value());
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let ttl = options.resolve_ttl(self.default_ttl);
        let store = Arc::clone(&self.inner);
        load_missing(&self.flights, store, generation, key, loader, ttl).await
    }

    /// Loads running right now.
    pub fn pending_loads(&self) -> usize {
        self.flights.len()
    }

    /// Counters since creation: lookups made by `get_or_load`, loads and coalesced callers.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            ..Stats::default()
        };
        self.flights.fill(&mut stats);
        stats
    }
}

#[async_trait]
impl<C, V> Cache<V> for LoadingCache<C, V>
where
    C: Cache<V> + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn get<'a>(&'a self, key: &'a str) -> crate::cache::CacheGet<'a, V> {
        self.inner.get(key)
    }
    async fn peek(&self, key: &str) -> Result<Option<Entry<V>>> {
        self.inner.peek(key).await
    }
    async fn set(&self, key: &str, entry: Entry<V>) -> Result<()> {
        self.inner.set(key, entry).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry<V>>>> {
        self.inner.get_many(keys).await
    }
    async fn set_many(&self, entries: Vec<(&str, Entry<V>)>) -> Result<()> {
        self.inner.set_many(entries).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_optionals_keep_what_was_set() {
        assert_eq!(OptDuration::default().get(), None);
        let d = Duration::new(3, 250);
        assert_eq!(OptDuration::some(d).get(), Some(d));
        assert_eq!(
            OptDuration::some(Duration::ZERO).get(),
            Some(Duration::ZERO)
        );
        // Far-future durations saturate just below "none" instead of wrapping or vanishing.
        let huge = OptDuration::some(Duration::MAX);
        assert!(huge.is_some());
        assert!(huge
            .get()
            .is_some_and(|h| h > Duration::from_secs(500 * 365 * 86_400)));

        assert_eq!(OptF64::default().get(), None);
        assert_eq!(OptF64::some(0.8).get(), Some(0.8));
        assert_eq!(OptF64::some(f64::NAN).get(), None);
        assert_eq!(OptF64::some(f64::NAN), OptF64::default());
    }

    #[test]
    fn unset_options_fall_back_to_defaults_and_set_ones_win() {
        let defaults = LoadOptions::new()
            .with_ttl(Duration::from_secs(60))
            .with_fail_safe(Duration::from_secs(600))
            .with_early_refresh(0.8);
        let mine = LoadOptions::new()
            .with_ttl(Duration::from_secs(5))
            .with_xfetch(1.0);
        let merged = mine.or(&defaults);
        assert_eq!(merged.time_to_live(), Some(Duration::from_secs(5)));
        assert_eq!(merged.max_stale.get(), Some(Duration::from_secs(600)));
        assert_eq!(merged.early_refresh.get(), Some(0.8));
        assert_eq!(merged.xfetch_beta.get(), Some(1.0));
        assert_eq!(merged.hard_timeout.get(), None);
        assert!(merged.refreshes());
        assert!(!LoadOptions::new().refreshes());
        // Every get_or_load future carries a copy: keep it to one cache line.
        assert!(std::mem::size_of::<LoadOptions>() <= 64);
        assert_eq!(format!("{:?}", LoadOptions::new().hard_timeout), "None");
    }
}
