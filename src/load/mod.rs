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

mod flight;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub(crate) use self::flight::Flights;
use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::{BoxError, Result};
use crate::metrics::Stats;

/// Lifetime given to loaded values when neither the call nor the cache sets one: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Per-call settings for `get_or_load`. Anything left unset falls back to the cache's defaults.
///
/// ```
/// use std::time::Duration;
/// use layercache::LoadOptions;
///
/// let opts = LoadOptions::ttl(Duration::from_secs(600));
/// assert_eq!(opts.time_to_live(), Some(Duration::from_secs(600)));
/// assert_eq!(LoadOptions::default().time_to_live(), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct LoadOptions {
    ttl: Option<Duration>,
}

impl LoadOptions {
    /// Options that use the cache's defaults for everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Options whose loaded value stays fresh for `ttl`.
    pub fn ttl(ttl: Duration) -> Self {
        LoadOptions { ttl: Some(ttl) }
    }

    /// Set how long a loaded value stays fresh.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The lifetime set on these options, if any.
    pub fn time_to_live(&self) -> Option<Duration> {
        self.ttl
    }

    pub(crate) fn resolve_ttl(&self, default: Duration) -> Duration {
        self.ttl.unwrap_or(default)
    }
}

/// The shared miss path of `get_or_load`: join or start the single-flight load.
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
    Box::pin(
        flights.load(store, key, generation, loader, move |value, took| {
            Entry::new(value, ttl).with_load_duration(took)
        }),
    )
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
    async fn get(&self, key: &str) -> Result<Option<Entry<V>>> {
        self.inner.get(key).await
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
